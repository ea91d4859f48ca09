"""``fastml ray serve TARGET...``: a fastml deployment as a Ray Serve application; ``fastml ray status``."""

from __future__ import annotations

import argparse
import json
import signal
import threading


def add_parser(subparsers) -> None:
    """Register ``fastml ray``."""
    p = subparsers.add_parser(
        "ray",
        help="run fastml on Ray: Ray Serve applications with Ray's autoscaling",
        description="Serve models as a Ray Serve application (each replica runs fastml's engine and batcher; "
        "Ray scales replicas on requests in flight). Batch scoring on Ray Data: fastml predict --engine ray.",
    )
    sub = p.add_subparsers(dest="ray_command", metavar="COMMAND")

    s = sub.add_parser(
        "serve",
        help="deploy models as a Ray Serve application answering KServe v2 HTTP (tritonclient works)",
        description="Deploy the targets (as for fastml serve: repository or model directories, model files of any "
        "supported framework, registry references) as a Ray Serve application. Without --address a local Ray "
        "cluster is started and stopped with the command; with --address the application joins that cluster, "
        "and --detach leaves it running there.",
    )
    s.add_argument("targets", nargs="+", metavar="TARGET", help="model repository, model directory/file or reference")
    s.add_argument("--address", default=None, help="Ray cluster to join (e.g. auto, ray://host:10001); default local")
    s.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: every core)")
    s.add_argument("--host", default="127.0.0.1", help="Ray Serve HTTP proxy address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="Ray Serve HTTP proxy port (default 8000)")
    s.add_argument("--app-name", default="fastml", help="Ray Serve application name (default fastml)")
    s.add_argument("--min-replicas", type=int, default=1, help="autoscaling lower bound (default 1)")
    s.add_argument("--max-replicas", type=int, default=4, help="autoscaling upper bound (default 4)")
    s.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=2.0,
        help="requests in flight per replica that Ray's autoscaler aims at (default 2)",
    )
    s.add_argument("--max-ongoing-requests", type=int, default=None, help="requests one replica takes at once")
    s.add_argument("--upscale-delay-s", type=float, default=30.0, help="demand above target this long adds a replica")
    s.add_argument(
        "--downscale-delay-s", type=float, default=600.0, help="demand below target this long removes a replica"
    )
    s.add_argument("--replica-cpus", type=float, default=1.0, help="Ray CPUs reserved per replica (default 1)")
    s.add_argument("--max-batch-size", type=int, default=None, help="override every model's max_batch_size")
    s.add_argument("--max-queue-delay-us", type=int, default=None, help="override every model's max_queue_delay_us")
    s.add_argument("--instances", type=int, default=None, help="override every model's runner instances")
    s.add_argument("--detach", action="store_true", help="deploy and exit (needs --address: the cluster keeps it)")
    s.set_defaults(handler=_serve)

    st = sub.add_parser("status", help="replicas of a fastml Ray Serve application")
    st.add_argument("--address", default="auto", help="Ray cluster (default auto: the one on this machine)")
    st.add_argument("--app-name", default="fastml", help="Ray Serve application name (default fastml)")
    st.add_argument("--json", action="store_true", help="print as JSON")
    st.set_defaults(handler=_status)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _serve(args: argparse.Namespace) -> int:
    from fastml.errors import InvalidInput
    from fastml.ray.serve_app import RayServeOptions, absolute_targets, deploy, replica_count

    if args.detach and args.address is None:
        raise InvalidInput("--detach needs --address: a local Ray cluster ends with this command")
    options = RayServeOptions(
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        max_ongoing_requests=args.max_ongoing_requests,
        upscale_delay_s=args.upscale_delay_s,
        downscale_delay_s=args.downscale_delay_s,
        replica_cpus=args.replica_cpus,
        engine={
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_us": args.max_queue_delay_us,
            "instances": args.instances,
        },
    )
    targets = absolute_targets(args.targets)  # a bad target is refused before a cluster starts
    _check_reachable(args.address)
    ray = _import_ray()
    stop = threading.Event()
    from fastml.serving.ray_predict import init_ray

    init_ray(args.address, num_cpus=args.num_cpus)
    if not args.detach:
        # Ctrl-C or a SIGTERM from a supervisor: take the application and the local cluster down cleanly.
        # Installed after ray.init, which sets its own SIGTERM handler (an immediate sys.exit).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        url = deploy(targets, options, host=args.host, port=args.port, app_name=args.app_name)
        print(
            f"fastml on Ray Serve: {url} (application {args.app_name!r}, {replica_count(args.app_name)} replica(s) "
            f"running, autoscaling {options.min_replicas}..{options.max_replicas} at "
            f"{options.target_ongoing_requests:g} requests in flight per replica)",
            flush=True,
        )
        if args.detach:
            return 0
        stop.wait()
        from ray import serve

        serve.shutdown()
        return 0
    finally:
        ray.shutdown()


# How long a named cluster address gets to accept a TCP connection before it counts as absent.
CONNECT_TIMEOUT_S = 5.0


def _check_reachable(address: str | None) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) cluster address that accepts no connection: ray.init keeps
    retrying one for minutes, so a mistyped address looked like a hung command. ``auto`` is Ray's to find.

    Raises:
        NotFound: nothing listens there.
    """
    import socket

    from fastml.errors import NotFound

    if not address or address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # not host:port: Ray reports what it makes of it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise NotFound(f"no Ray cluster at {address!r}: cannot connect: {exc.strerror or exc}") from None


def _status(args: argparse.Namespace) -> int:
    from fastml.errors import NotFound

    _check_reachable(args.address)
    ray = _import_ray()
    from ray import serve

    try:
        ray.init(address=args.address, log_to_driver=False)
    except ConnectionError as exc:
        raise NotFound(f"no Ray cluster at {args.address!r}: {exc}") from None
    try:
        app = serve.status().applications.get(args.app_name)
        if app is None:
            raise NotFound(f"no Ray Serve application {args.app_name!r} on this cluster")
        info = {
            "application": args.app_name,
            "status": str(app.status),
            "deployments": {name: dict(d.replica_states) for name, d in app.deployments.items()},
        }
    finally:
        ray.shutdown()
    if args.json:
        print(json.dumps(info))
    else:
        for name, states in info["deployments"].items():
            shown = ", ".join(f"{n} {s}" for s, n in states.items()) or "no replicas"
            print(f"{args.app_name}/{name}: {info['status']}, {shown}")
    return 0


def _import_ray():
    from fastml.errors import InvalidInput

    try:
        import ray
    except ImportError:
        raise InvalidInput("Ray is not installed (pip install 'fastml[ray]')") from None
    return ray
