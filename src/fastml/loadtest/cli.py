"""``fastml loadtest`` (also ``python -m fastml.loadtest``): drive a server with infer requests and report.

The URL picks the protocol: ``http://host:port`` is KServe v2 HTTP (binary tensor extension);
``tcp://host:port`` or ``unix:/path`` is the fastml binary protocol (docs/protocol.md), pipelined. ``https://``
and ``tls://`` are the same over TLS (``--tls-ca``, and ``--tls-cert``/``--tls-key`` for mutual TLS).

Examples:
    fastml loadtest http://127.0.0.1:8000 -m mlp -c 32 --duration-s 10
    fastml loadtest http://127.0.0.1:8000 -m mlp --mode open --rate 20000 --duration-s 5 --json
    fastml loadtest tcp://127.0.0.1:8001 -m mlp -c 64 --connections 2 --metadata-url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import urlsplit


def parse_url(url: str) -> tuple[str, int]:
    """``http://host:port`` (or ``https://``) -> (host, port); the port defaults to 8000 (Triton's HTTP port).

    Raises:
        InvalidInput: not an ``http://`` or ``https://`` URL with a host.
    """
    from fastml.errors import InvalidInput

    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"expected an http://HOST[:PORT] URL, got {url!r}")
    try:
        port = parts.port or 8000
    except ValueError:
        raise InvalidInput(f"bad port in {url!r}") from None
    return parts.hostname, port


def fetch_model_metadata(
    host: str, port: int, model: str, version: str | None = None, timeout_s: float = 10.0, ssl_context=None
) -> dict:
    """``GET /v2/models/<model>[/versions/<v>]`` and return the decoded JSON (over TLS with ``ssl_context``).

    Raises:
        NotFound: the server answers 404.
        Unavailable: the server cannot be reached, answers another error, or answers something other than JSON.
    """
    import http.client
    from urllib.parse import quote

    from fastml.errors import NotFound, Unavailable

    path = f"/v2/models/{quote(model, safe='')}" + (f"/versions/{quote(version, safe='')}" if version else "")
    if ssl_context is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=ssl_context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise Unavailable(f"cannot reach http://{host}:{port}{path}: {exc}") from None
    finally:
        conn.close()
    if resp.status == 404:
        raise NotFound(f"model {model!r} not found at http://{host}:{port} ({body[:200]!r})")
    if resp.status != 200:
        raise Unavailable(f"GET {path} answered {resp.status}: {body[:200]!r}")
    try:
        return json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError: not a KServe v2 server
        raise Unavailable(f"GET {path} answered 200 with a body that is not JSON: {body[:200]!r}") from None


_DESCRIPTION = (
    "Load-test a server: KServe v2 / Triton HTTP (http://HOST:PORT) or the fastml binary protocol "
    "(tcp://HOST:PORT or unix:/PATH)."
)


def is_binary_url(url: str) -> bool:
    """Whether ``url`` names a fastml binary-protocol endpoint (``tcp://``, ``tls://`` or ``unix:``)."""
    return url.startswith(("tcp://", "tls://", "unix:"))


def tls_context(args: argparse.Namespace, url: str, what: str):
    """The client ``ssl.SSLContext`` for ``url`` (``https://`` or ``tls://``) from --tls-ca/--tls-cert/--tls-key;
    None for a plain URL.

    Raises:
        InvalidInput: TLS options given with a plain URL (they would be silently ignored).
    """
    from fastml.client.tls import client_context
    from fastml.errors import InvalidInput

    secure = url.startswith(("https://", "tls://"))
    if not secure:
        if what == "url" and (args.tls_ca or args.tls_cert or args.tls_key):
            raise InvalidInput(f"--tls-ca/--tls-cert/--tls-key need an https:// or tls:// URL, got {url!r}")
        return None
    return client_context(args.tls_ca, args.tls_cert, args.tls_key)


def add_parser(subparsers) -> None:
    """Register ``fastml loadtest``."""
    p = subparsers.add_parser(
        "loadtest", help="load-test a server (HTTP or the fastml binary protocol)", description=_DESCRIPTION
    )
    _add_arguments(p)
    p.set_defaults(handler=_run)


def build_parser(prog: str = "python -m fastml.loadtest") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION)
    _add_arguments(p)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="server: http://127.0.0.1:8000, tcp://127.0.0.1:8001 or unix:/path/to/socket")
    p.add_argument("-m", "--model", required=True, help="model name")
    p.add_argument("--model-version", default=None, help="model version: digits or a registry version like 1.0.0")
    p.add_argument(
        "--mode",
        choices=("closed", "open"),
        default="closed",
        help="closed: fixed concurrency; open: fixed arrival rate (default closed)",
    )
    p.add_argument("-c", "--concurrency", type=int, default=1, help="closed loop: requests in flight (default 1)")
    p.add_argument("--rate", type=float, default=None, help="open loop: requests per second")
    p.add_argument("--max-connections", type=int, default=512, help="open loop: connection cap (default 512)")
    p.add_argument("-n", "--requests", type=int, default=None, help="stop after this many requests")
    p.add_argument("--duration-s", type=float, default=None, help="stop after this many seconds (default 10 if no -n)")
    p.add_argument("--warmup-s", type=float, default=0.0, help="uncounted warm-up period (default 0)")
    p.add_argument("--timeout-s", type=float, default=10.0, help="per-request timeout (default 10)")
    p.add_argument("-b", "--batch-size", type=int, default=1, help="rows per request for generated inputs (default 1)")
    p.add_argument(
        "--input-npy",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="send this .npy as input NAME instead of random data from the model metadata (repeatable)",
    )
    p.add_argument(
        "--output",
        action="append",
        default=None,
        metavar="NAME",
        help="request only this output (repeatable; default all outputs)",
    )
    p.add_argument("--json-outputs", action="store_true", help="ask for JSON outputs instead of binary")
    p.add_argument("--validate", action="store_true", help="decode every 2xx body; failures count as bad_response")
    p.add_argument("--seed", type=int, default=0, help="seed of generated inputs (default 0)")
    p.add_argument(
        "--save-body",
        metavar="PATH",
        help="also write the request body to PATH (for wrk); prints its JSON header length",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--connections",
        type=int,
        default=1,
        help="binary protocol: connections the --concurrency requests are pipelined over (default 1)",
    )
    p.add_argument(
        "--tls-ca",
        default=None,
        metavar="FILE",
        help="https:// or tls:// (binary protocol over TLS): PEM CA bundle the server's certificate must chain "
        "to (default: the system store)",
    )
    p.add_argument("--tls-cert", default=None, metavar="FILE", help="client certificate for mutual TLS (PEM)")
    p.add_argument("--tls-key", default=None, metavar="FILE", help="private key of --tls-cert (PEM)")
    p.add_argument(
        "--metadata-url",
        default=None,
        metavar="URL",
        help="binary protocol: the server's HTTP endpoint to read model metadata from for generated inputs "
        "(else give --input-npy)",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 on bad input, 1 when the server cannot be used)."""
    args = build_parser().parse_args(argv)
    from fastml.errors import FastMLError, InvalidInput, NotFound

    try:
        return _run(args)
    except FastMLError as exc:
        print(f"loadtest: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (InvalidInput, NotFound)) else 1
    except KeyboardInterrupt:  # Ctrl-C under `python -m fastml.loadtest`: as `fastml` ends any command (130)
        print("loadtest: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from fastml.errors import InvalidInput
    from fastml.loadtest.protocol import build_infer_request, random_inputs
    from fastml.loadtest.runner import check_load_shape, run, run_closed_loop, run_open_loop

    # The load shape is checked before anything is read or written: a --rate that silently ran a closed
    # loop would report what a server sustains as if it were latency at that arrival rate.
    if args.mode == "open" and args.rate is None:
        raise InvalidInput("--mode open needs --rate")
    if args.mode != "open" and args.rate is not None:
        raise InvalidInput("--rate sets an open loop's arrival rate: add --mode open (the default is closed loop)")
    # So are the numbers, before the server is asked for metadata: a bad -n or -b is the caller's to fix
    # whether or not the server answers.
    if args.batch_size < 1:
        raise InvalidInput(f"-b/--batch-size must be >= 1, got {args.batch_size}")
    check_load_shape(
        concurrency=args.concurrency,
        rate_per_s=args.rate,
        max_connections=args.max_connections,
        max_requests=args.requests,
        duration_s=_duration_s(args),
        timeout_s=args.timeout_s,
        warmup_s=args.warmup_s,
    )
    binary = is_binary_url(args.url)
    if binary:
        if args.metadata_url is None and not args.input_npy:
            raise InvalidInput(
                "the binary protocol has no metadata call: give --input-npy NAME=PATH or --metadata-url http://..."
            )
        host, port = parse_url(args.metadata_url) if args.metadata_url else (None, None)
        meta_tls = tls_context(args, args.metadata_url or "", "metadata")
    else:
        host, port = parse_url(args.url)
        meta_tls = tls_context(args, args.url, "url")
    if args.input_npy:
        inputs = {}
        for item in args.input_npy:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise InvalidInput(f"--input-npy wants NAME=PATH, got {item!r}")
            try:
                inputs[name] = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise InvalidInput(f"cannot read {path!r}: {exc}") from None
    else:
        meta = fetch_model_metadata(host, port, args.model, args.model_version, args.timeout_s, meta_tls)
        inputs = random_inputs(meta, batch_size=args.batch_size, seed=args.seed)
    if binary:
        return _run_binary(args, inputs)
    request = build_infer_request(
        args.model,
        inputs,
        outputs=args.output,
        version=args.model_version,
        host=f"{host}:{port}",
        binary_output=not args.json_outputs,
    )
    if args.save_body:
        try:
            with open(args.save_body, "wb") as fh:
                fh.write(request.body)
        except OSError as exc:
            raise InvalidInput(f"cannot write --save-body {args.save_body!r}: {exc}") from None
        print(
            f"wrote {len(request.body)} bytes to {args.save_body}; "
            f"Inference-Header-Content-Length: {request.header_length}",
            file=sys.stderr,
        )
    duration_s = _duration_s(args)
    common = dict(
        max_requests=args.requests,
        duration_s=duration_s,
        timeout_s=args.timeout_s,
        warmup_s=args.warmup_s,
        validate=args.validate,
    )
    if args.mode == "closed":
        coro = run_closed_loop(host, port, request, concurrency=args.concurrency, ssl=meta_tls, **common)
    else:
        coro = run_open_loop(
            host, port, request, rate_per_s=args.rate, max_connections=args.max_connections, ssl=meta_tls, **common
        )
    return _report(args, run(coro))


def _duration_s(args: argparse.Namespace) -> float | None:
    """--duration-s, or 10 s when neither it nor -n bounds the run."""
    return args.duration_s if args.duration_s is not None or args.requests is not None else 10.0


def _report(args: argparse.Namespace, result) -> int:
    """Print the result; exit status 1 when not one counted request reached the server."""
    from fastml.loadtest.result import CONNECT_ERROR

    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.format_text())
    if result.sent and result.count(CONNECT_ERROR) == result.sent:
        print(f"loadtest: error: cannot reach {args.url}: every request was a connect error", file=sys.stderr)
        return 1
    return 0


def _run_binary(args: argparse.Namespace, inputs: dict) -> int:
    from fastml.errors import InvalidInput
    from fastml.loadtest.binary import run_binary_closed_loop
    from fastml.loadtest.runner import run

    if args.mode != "closed":
        raise InvalidInput("the binary protocol driver runs closed loop only (--mode closed)")
    address = args.url[len("tcp://") :] if args.url.startswith(("tcp://", "tls://")) else args.url
    duration_s = _duration_s(args)
    result = run(
        run_binary_closed_loop(
            address,
            args.model,
            inputs,
            concurrency=args.concurrency,
            connections=args.connections,
            version=args.model_version,
            outputs=args.output,
            max_requests=args.requests,
            duration_s=duration_s,
            timeout_s=args.timeout_s,
            warmup_s=args.warmup_s,
            validate=args.validate,
            ssl=tls_context(args, args.url, "url"),
        )
    )
    return _report(args, result)
