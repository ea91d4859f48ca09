"""``fastml serve``: the KServe v2 / Triton HTTP server (see docs/server.md)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve models over the KServe v2 / Triton HTTP protocol",
        description="Serve a model repository (<repo>/<model>/<version>/model.onnx), an .onnx file or a registry "
        "reference (name for its latest version, name@stage, name:version) over KServe v2 / Triton HTTP; Prometheus metrics on --metrics-port.",
    )
    p.add_argument(
        "targets",
        nargs="+",
        metavar="REPO_OR_REF",
        help="model repository directory, .onnx file or registry reference (churn, churn@production, churn:1.2.0)",
    )
    p.add_argument(
        "--http-port", type=int, default=None, help="HTTP port (default: settings http_port, 8000; 0 = any free port)"
    )
    p.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve KServe v2 gRPC (Triton's GRPCInferenceService) on this port (default off; 0 = any free port)",
    )
    p.add_argument(
        "--binary-port",
        type=int,
        default=None,
        help="also serve the fastml binary protocol (docs/protocol.md) on this TCP port (default off; 0 = any free port)",
    )
    p.add_argument(
        "--binary-socket",
        default=None,
        metavar="PATH",
        help="also serve the fastml binary protocol on this Unix socket (default off; one process only)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Prometheus port (default: settings metrics_port, 8002; 0 = any free port)",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument(
        "--workers",
        default="1",
        metavar="N|auto",
        help="server processes sharing the HTTP port via SO_REUSEPORT (default 1); 'auto' adds and removes them "
        "between --min-workers and --max-workers from their CPU use and queue time (docs/scaling.md)",
    )
    _add_autoscale_arguments(p)
    p.add_argument("--max-batch-size", type=int, default=None, help="override every model's max_batch_size")
    p.add_argument("--max-queue-delay-us", type=int, default=None, help="override every model's max_queue_delay_us")
    p.add_argument(
        "--instances",
        type=int,
        default=None,
        help="override every model's instance count (runner threads; implies --runner threads unless --runner is given)",
    )
    p.add_argument(
        "--log-sample-rate",
        type=float,
        default=None,
        help="write this fraction of requests (0-1) to the prediction log under $FASTML_HOME/logs (default 0: off)",
    )
    p.add_argument(
        "--runner",
        choices=("auto", "threads", "loop"),
        default=None,
        help="override every model's runner: 'loop' runs batches inline on the event loop (no runner "
        "threads; cheapest for small models), 'threads' on --instances runner threads (heavy models), "
        "'auto' (default) picks 'loop' when a full batch runs within 100 us",
    )
    p.add_argument(
        "--max-queue-size", type=int, default=None, help="override every model's queue capacity (503 beyond)"
    )
    p.add_argument(
        "--grace-period-s",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight requests may take (default 30)",
    )
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024, help="largest request body (413 beyond)")
    p.add_argument("--idle-timeout-s", type=float, default=60.0, help="close keep-alive connections idle this long")
    p.add_argument(
        "--request-timeout-s",
        type=float,
        default=30.0,
        help="a started request must arrive completely within this (408)",
    )
    p.add_argument(
        "--admin-token-file",
        default=None,
        metavar="PATH",
        help="file holding the bearer token that repository load/unload and shared-memory register/unregister "
        "require (mode 600; or set FASTML_ADMIN_TOKEN). Without a token those endpoints are disabled",
    )
    p.add_argument(
        "--allow-unauthenticated-admin",
        action="store_true",
        help="with no admin token, leave the admin endpoints open instead of disabled (needed to bind a "
        "non-loopback --host without a token; warns)",
    )
    p.add_argument(
        "--require-token-for-inference",
        action="store_true",
        help="require the admin token on inference and metadata endpoints too (health and metrics stay open)",
    )
    p.add_argument(
        "--require-token-for-metrics",
        action="store_true",
        help="require the admin token on the metrics listener's /metrics too (Prometheus: authorization "
        "credentials_file in the scrape config)",
    )
    p.add_argument(
        "--max-buffered-bytes",
        type=int,
        default=None,
        help="request body bytes buffered across all connections at once; a request whose Content-Length would "
        "exceed it is answered 503 before its body is read (default: settings max_buffered_bytes, 256 MiB; "
        "raised to --max-body-bytes if smaller)",
    )
    p.add_argument(
        "--tls-cert",
        default=None,
        metavar="FILE",
        help="PEM certificate chain: serve HTTP (https), gRPC and the binary protocol over TLS; needs --tls-key "
        "(default: settings tls_cert / FASTML_TLS_CERT)",
    )
    p.add_argument(
        "--tls-key",
        default=None,
        metavar="FILE",
        help="PEM private key of --tls-cert (settings tls_key / FASTML_TLS_KEY)",
    )
    p.add_argument(
        "--tls-client-ca",
        default=None,
        metavar="FILE",
        help="PEM CA bundle: mutual TLS, clients must present a certificate this CA signed "
        "(settings tls_client_ca / FASTML_TLS_CLIENT_CA)",
    )
    p.add_argument(
        "--exit-on-error",
        action="store_true",
        help="exit non-zero when any model fails to load (Triton's default); without it the other models "
        "are served and a failed one is UNAVAILABLE with its reason in the repository index (with no model "
        "loaded at all, serve always exits non-zero)",
    )
    p.add_argument(
        "--monitor",
        action="store_true",
        help="live monitoring: drift per feature and on the prediction, and a health score, per window of served "
        "traffic, on /metrics and in $FASTML_HOME/monitoring.db (docs/monitoring.md, Live monitoring); off by default",
    )
    p.add_argument(
        "--monitor-window-rows", type=int, default=5000, help="a live window closes at this many rows (default 5000)"
    )
    p.add_argument(
        "--monitor-window-s",
        type=float,
        default=60.0,
        help="... or this many seconds after its first row (default 60)",
    )
    p.add_argument(
        "--monitor-max-rows-per-s",
        type=float,
        default=2000.0,
        help="live monitoring samples at most this many rows per second per model (bursts of one second's worth "
        "whole; default 2000; 0 = every row)",
    )
    p.add_argument(
        "--reference",
        action="append",
        default=None,
        metavar="MODEL=PATH",
        help="reference for a monitored model: a saved profile, .parquet or .csv of reference rows (repeatable; "
        "default: the reference registered with the model version)",
    )
    p.add_argument(
        "--alert-rules",
        metavar="FILE",
        help="TOML file of alert rules evaluated as each live window closes (default: the built-in rules; "
        "docs/monitoring.md, Alerts); needs --monitor",
    )
    p.set_defaults(handler=_serve)


def _hook_name(fn) -> str | None:
    """``"module:function"`` of a module-level callable (None stays None)."""
    return None if fn is None else f"{fn.__module__}:{fn.__qualname__}"


def _serve(args) -> int:
    from fastml.config import get_settings
    from fastml.errors import InvalidInput
    from fastml.server.tls import TlsConfig
    from fastml.server.workers import ServeOptions, serve

    settings = get_settings()
    _admin_env(args)
    # Flags win over settings (config file, FASTML_TLS_*); checked here so a bad file is one line, not a traceback.
    tls = TlsConfig.from_options(
        args.tls_cert or settings.tls_cert,
        args.tls_key or settings.tls_key,
        args.tls_client_ca or settings.tls_client_ca,
    )
    max_buffered = settings.max_buffered_bytes if args.max_buffered_bytes is None else args.max_buffered_bytes
    if max_buffered < 1:
        raise InvalidInput(f"--max-buffered-bytes must be >= 1, got {max_buffered}")
    http_port = settings.http_port if args.http_port is None else args.http_port
    metrics_port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    _check_ports(
        {
            # A port from the settings (FASTML_HTTP_PORT, the config file) is named as such: no flag was given.
            "--http-port" if args.http_port is not None else "settings http_port": http_port,
            "--metrics-port" if args.metrics_port is not None else "settings metrics_port": metrics_port,
            "--grpc-port": args.grpc_port,
            "--binary-port": args.binary_port,
        }
    )
    args.workers, autoscale = _workers(args)  # an int, and the autoscaler's settings with --workers auto
    if args.grpc_port == 0 and args.workers > 1:
        raise InvalidInput("--grpc-port 0 picks a different port in every worker; give a fixed port with --workers > 1")
    if args.binary_port == 0 and args.workers > 1:
        raise InvalidInput(
            "--binary-port 0 picks a different port in every worker; give a fixed port with --workers > 1"
        )
    if args.binary_socket is not None and args.workers > 1:
        raise InvalidInput("--binary-socket serves from one process; use --binary-port with --workers > 1")
    monitor = None
    if args.monitor:
        from fastml.serving.live_monitoring import parse_references

        if args.monitor_window_rows < 1 or not args.monitor_window_s > 0 or args.monitor_max_rows_per_s < 0:
            raise InvalidInput(
                "--monitor-window-rows must be >= 1, --monitor-window-s > 0 and --monitor-max-rows-per-s >= 0"
            )
        if args.alert_rules is not None:
            from fastml.serving.live_monitoring import check_alert_rules

            check_alert_rules(args.alert_rules)  # a bad rules file stops serve here, not in a worker
        monitor = {
            "window_rows": args.monitor_window_rows,
            "window_s": args.monitor_window_s,
            "max_rows_per_s": args.monitor_max_rows_per_s or None,
            "references": parse_references(args.reference),
            "alert_rules": args.alert_rules,
            # The audit hook the top-level command registered, by name: serve options travel to workers as JSON.
            "audit_append": _hook_name(getattr(args, "audit_append", None)),
        }
    elif args.reference:
        raise InvalidInput("--reference needs --monitor")
    elif args.alert_rules:
        raise InvalidInput("--alert-rules needs --monitor")
    opts = ServeOptions(
        targets=list(args.targets),
        host=args.host,
        http_port=http_port,
        metrics_port=metrics_port,
        workers=args.workers,
        autoscale=autoscale,
        grpc_port=args.grpc_port,
        binary_port=args.binary_port,
        binary_socket=args.binary_socket,
        overrides={
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_us": args.max_queue_delay_us,
            "instances": args.instances,
            "max_queue_size": args.max_queue_size,
            "log_sample_rate": args.log_sample_rate,
            "runner": args.runner,
        },
        grace_period_s=args.grace_period_s,
        max_body_bytes=args.max_body_bytes,
        idle_timeout_s=args.idle_timeout_s,
        request_timeout_s=args.request_timeout_s,
        exit_on_error=args.exit_on_error,
        max_buffered_bytes=max_buffered,
        tls_cert=tls.cert_file if tls else None,
        tls_key=tls.key_file if tls else None,
        tls_client_ca=tls.client_ca_file if tls else None,
        monitor=monitor,
    )
    return serve(opts)


def _check_ports(ports: dict[str, int | None]) -> None:
    """Refuse, before any model loads, a port outside 0-65535 or one fixed port given to two listeners.

    gRPC's listener takes a port modulo 65536 (``--grpc-port 70000`` would serve on 4464 without a word), the
    others fail with a traceback. Two listeners on one port either fail after every model has loaded or, with
    ``--workers`` > 1 (SO_REUSEPORT on every listener), both bind and the kernel hands each connection to one of
    them at random: HTTP clients reaching the gRPC server. 0 (any free port) may repeat.

    Args:
        ports: flag -> port (None: that listener is off).

    Raises:
        InvalidInput: naming the flag(s).
    """
    from fastml.errors import InvalidInput

    taken: dict[int, str] = {}
    for flag, port in ports.items():
        if port is None:
            continue
        if not 0 <= port <= 65535:
            raise InvalidInput(f"{flag} must be a port between 0 and 65535 (0 = any free port), got {port}")
        if port and port in taken:
            raise InvalidInput(f"{taken[port]} and {flag} are both {port}: each listener needs its own port")
        taken.setdefault(port, flag)


def _admin_env(args) -> None:
    """Hand the admin-plane flags to the server (and its worker processes) through the environment, and refuse
    an unprotected non-loopback bind before anything starts (fastml.server.auth)."""
    import os

    from fastml.server import auth

    if args.admin_token_file:
        os.environ[auth.ENV_TOKEN_FILE] = os.path.abspath(args.admin_token_file)
    if args.allow_unauthenticated_admin:
        os.environ[auth.ENV_ALLOW_UNAUTHENTICATED] = "1"
    if args.require_token_for_inference:
        os.environ[auth.ENV_REQUIRE_FOR_INFERENCE] = "1"
    if args.require_token_for_metrics:
        os.environ[auth.ENV_REQUIRE_FOR_METRICS] = "1"
    policy = auth.AdminAuth.from_env()
    for flag, on in (
        ("--require-token-for-inference", policy.require_for_inference),
        ("--require-token-for-metrics", policy.require_for_metrics),
    ):
        if on and policy.token is None:
            from fastml.errors import InvalidInput

            raise InvalidInput(f"{flag} needs a token: give --admin-token-file PATH or FASTML_ADMIN_TOKEN")
    auth.check_bind(args.host, policy)  # raises before any port is taken; the server itself prints the warning


def _add_autoscale_arguments(p) -> None:
    """The ``--workers auto`` flags (fastml.server.autoscale.AutoscaleConfig; defaults there)."""
    p.add_argument(
        "--min-workers", type=int, default=None, metavar="N", help="with --workers auto: fewest workers (default 1)"
    )
    p.add_argument(
        "--max-workers",
        type=int,
        default=None,
        metavar="N",
        help="with --workers auto: most workers (default: the CPU count)",
    )
    p.add_argument(
        "--target-utilization",
        type=float,
        default=None,
        metavar="FRACTION",
        help="with --workers auto: CPU busy fraction per worker to aim at (default 0.6)",
    )
    p.add_argument(
        "--target-queue-us",
        type=float,
        default=None,
        metavar="US",
        help="with --workers auto: mean batcher queue wait per request to aim at (default 5000)",
    )
    p.add_argument(
        "--autoscale-interval-s",
        type=float,
        default=None,
        metavar="S",
        help="with --workers auto: measure this often (default 1)",
    )
    p.add_argument(
        "--scale-up-cooldown-s",
        type=float,
        default=None,
        metavar="S",
        help="with --workers auto: at least this long between two scale-ups (default 3)",
    )
    p.add_argument(
        "--scale-down-delay-s",
        type=float,
        default=None,
        metavar="S",
        help="with --workers auto: remove workers only after the load allowed it this long (default 30)",
    )


_AUTOSCALE_FLAGS = {
    "min_workers": "--min-workers",
    "max_workers": "--max-workers",
    "target_utilization": "--target-utilization",
    "target_queue_us": "--target-queue-us",
    "interval_s": "--autoscale-interval-s",
    "scale_up_cooldown_s": "--scale-up-cooldown-s",
    "scale_down_delay_s": "--scale-down-delay-s",
}


def _workers(args):
    """``--workers N|auto`` and the autoscale flags: ``(workers, AutoscaleConfig or None)``; with auto, workers is
    --max-workers (what the per-process checks that follow must assume).

    Raises:
        InvalidInput: a count that is neither a number nor 'auto', an autoscale flag without auto, conflicting
            bounds, or auto with a listener that only one process can hold.
    """
    import os

    from fastml.errors import InvalidInput
    from fastml.server.autoscale import AutoscaleConfig

    given = {field: getattr(args, field.replace("interval_s", "autoscale_interval_s")) for field in _AUTOSCALE_FLAGS}
    given = {k: v for k, v in given.items() if v is not None}
    text = str(args.workers).strip().lower()
    if text != "auto":
        try:
            workers = int(text)
        except ValueError:
            raise InvalidInput(f"--workers must be a number >= 1 or 'auto', got {args.workers!r}") from None
        if workers < 1:
            raise InvalidInput(f"--workers must be >= 1, got {workers}")
        if given:
            flags = ", ".join(_AUTOSCALE_FLAGS[k] for k in given)
            raise InvalidInput(f"{flags} only apply with --workers auto (got --workers {workers})")
        return workers, None
    if args.binary_socket is not None:
        raise InvalidInput("--binary-socket serves from one process; it cannot be combined with --workers auto")
    if args.grpc_port == 0 or args.binary_port == 0:
        raise InvalidInput("--workers auto needs fixed --grpc-port/--binary-port numbers (0 differs in every worker)")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    given.setdefault("max_workers", max(cpus, given.get("min_workers", 1)))
    config = AutoscaleConfig(**given).validate()
    return config.max_workers, config
