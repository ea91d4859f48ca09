"""Who may change a running server: the admin token, checked the same way by every transport.

State-changing endpoints (repository load/unload, system shared-memory register/unregister) need the admin
bearer token (``--admin-token-file PATH`` or ``FASTML_ADMIN_TOKEN``) when one is configured. With no token
they are disabled (403 naming how to enable them) unless the operator explicitly allows unauthenticated
admin (``--allow-unauthenticated-admin``, for a loopback-only development server). Inference and metrics
are open by default, as in Triton; ``--require-token-for-inference`` makes every endpoint of the inference
listeners except the health probes need the same token, and ``--require-token-for-metrics`` the metrics
listener's ``/metrics``.

The configuration travels through the environment (the ``ENV_*`` names below) so the worker processes of
``fastml serve --workers N`` read exactly what the parent was given; a token file path is passed, never the
token itself on a command line.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import os
import stat
from pathlib import Path

from fastml.errors import FastMLError, InvalidInput, PermissionDenied, Unauthenticated

ENV_TOKEN = "FASTML_ADMIN_TOKEN"
ENV_TOKEN_FILE = "FASTML_ADMIN_TOKEN_FILE"
ENV_ALLOW_UNAUTHENTICATED = "FASTML_ALLOW_UNAUTHENTICATED_ADMIN"
ENV_REQUIRE_FOR_INFERENCE = "FASTML_REQUIRE_TOKEN_FOR_INFERENCE"
ENV_REQUIRE_FOR_METRICS = "FASTML_REQUIRE_TOKEN_FOR_METRICS"

MIN_TOKEN_CHARS = 16  # a guessable token is no better than none
WWW_AUTHENTICATE = b'WWW-Authenticate: Bearer realm="fastml"\r\n'
_HOW_TO_ENABLE = (
    "start the server with --admin-token-file PATH (or FASTML_ADMIN_TOKEN) and send 'Authorization: Bearer <token>', "
    "or with --allow-unauthenticated-admin on a trusted loopback-only server"
)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def read_token_file(path: str | os.PathLike) -> bytes:
    """The token in ``path`` (surrounding whitespace stripped).

    Raises:
        InvalidInput: the file cannot be read, is readable by other users, or holds a token that is too short.
    """
    p = Path(path)
    try:
        st = p.stat()
        data = p.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read the admin token file {str(p)!r}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Like ssh with a private key: a token others can read is not a secret.
        raise InvalidInput(f"the admin token file {str(p)!r} is accessible by other users; chmod 600 it")
    return _valid_token(data.strip(), f"the admin token in {str(p)!r}")


def _valid_token(token: bytes, what: str) -> bytes:
    if len(token) < MIN_TOKEN_CHARS:
        raise InvalidInput(f"{what} must be at least {MIN_TOKEN_CHARS} characters")
    if any(c < 0x21 or c > 0x7E for c in token):
        raise InvalidInput(f"{what} must be printable ASCII without spaces (it travels in an HTTP header)")
    return token


@dataclasses.dataclass(frozen=True)
class AdminAuth:
    """The admin-plane policy of one server process.

    Attributes:
        token: the bearer token, or None when none is configured.
        allow_unauthenticated: with no token, admin endpoints are open instead of disabled.
        require_for_inference: the token is needed on every inference-listener endpoint except health.
        require_for_metrics: the token is needed on the metrics listener's ``/metrics`` too.
    """

    token: bytes | None = None
    allow_unauthenticated: bool = False
    require_for_inference: bool = False
    require_for_metrics: bool = False

    @classmethod
    def from_env(cls, environ: dict | None = None) -> AdminAuth:
        """The policy the ``ENV_*`` variables describe (a token file wins over an inline token).

        Raises:
            InvalidInput: an unreadable token file or a token that is too short.
        """
        env = os.environ if environ is None else environ
        token = None
        if env.get(ENV_TOKEN_FILE):
            token = read_token_file(env[ENV_TOKEN_FILE])
        elif env.get(ENV_TOKEN):
            token = _valid_token(env[ENV_TOKEN].strip().encode("utf-8"), ENV_TOKEN)
        return cls(
            token=token,
            allow_unauthenticated=_truthy(env.get(ENV_ALLOW_UNAUTHENTICATED)),
            require_for_inference=_truthy(env.get(ENV_REQUIRE_FOR_INFERENCE)),
            require_for_metrics=_truthy(env.get(ENV_REQUIRE_FOR_METRICS)),
        )

    def check(self, authorization: bytes | str | None, what: str, admin: bool = True) -> None:
        """Allow or refuse one request.

        Args:
            authorization: the request's ``Authorization`` header / gRPC metadata value (None when absent).
            what: the operation, for the message ("repository load").
            admin: True for a state-changing endpoint, False for an inference-listener read.

        Raises:
            Unauthenticated: a token is needed and the request has none or a wrong one (401).
            PermissionDenied: an admin endpoint with no token configured and unauthenticated admin not allowed.
        """
        if self.token is None:
            if admin and not self.allow_unauthenticated:
                raise PermissionDenied(f"{what} is disabled: {_HOW_TO_ENABLE}")
            return
        if not admin and not (self.require_for_inference or self.require_for_metrics):
            return  # callers ask for a read only when its option is on; with neither, no read needs a token
        presented = bearer_token(authorization)
        # compare_digest takes time independent of where the strings differ (no timing oracle on the token).
        if presented is None or not hmac.compare_digest(presented, self.token):
            raise Unauthenticated(f"{what} needs a valid admin token: send 'Authorization: Bearer <token>'")


def bearer_token(authorization: bytes | str | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` value; None for anything else."""
    if authorization is None:
        return None
    if isinstance(authorization, str):
        authorization = authorization.encode("utf-8", "replace")
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    return token or None


def of_plane(plane) -> AdminAuth:
    """The policy a data plane's transports share (read from the environment once, then kept on the plane)."""
    auth = getattr(plane, "auth", None)
    if auth is None:
        auth = AdminAuth.from_env()
        plane.auth = auth
    return auth


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, auth: AdminAuth) -> str | None:
    """Refuse a non-loopback listener whose admin plane has no token, unless explicitly allowed.

    Returns:
        A warning to print (non-loopback bind with unauthenticated admin allowed), else None.

    Raises:
        InvalidInput: a non-loopback address, no token, and unauthenticated admin not allowed.
    """
    if auth.token is not None or is_loopback(host):
        return None
    if not auth.allow_unauthenticated:
        raise InvalidInput(
            f"refusing to listen on {host} (reachable from other machines) without an admin token: give "
            "--admin-token-file PATH or FASTML_ADMIN_TOKEN, or --allow-unauthenticated-admin to accept that anyone "
            "who can reach the port can load and unload models"
        )
    return (
        f"WARNING: listening on {host} with unauthenticated admin endpoints: anyone who can reach the port can "
        "load and unload models and register shared memory"
    )


# gRPC methods (inference.GRPCInferenceService) that change server state, and those always open (health).
GRPC_ADMIN_METHODS = frozenset(
    {
        "RepositoryModelLoad",
        "RepositoryModelUnload",
        "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister",
        "CudaSharedMemoryRegister",
        "CudaSharedMemoryUnregister",
    }
)
GRPC_OPEN_METHODS = frozenset({"ServerLive", "ServerReady", "Check"})  # Check: grpc.health.v1.Health


def grpc_refusal(auth: AdminAuth, method: str, authorization: str | None) -> FastMLError | None:
    """The error a gRPC call to ``method`` (its bare name) is refused with, or None when it may run: admin
    methods always need the token; the others only when it is required for inference; health never."""
    admin = method in GRPC_ADMIN_METHODS
    if not admin and (method in GRPC_OPEN_METHODS or not auth.require_for_inference):
        return None
    try:
        auth.check(authorization, f"gRPC {method}", admin=admin)
    except (Unauthenticated, PermissionDenied) as exc:
        return exc
    return None


def grpc_interceptor(auth: AdminAuth):
    """A ``grpc.aio`` server interceptor applying ``auth`` to every call before its handler runs: admin
    methods always go through :meth:`AdminAuth.check`; the others only when the token is required for
    inference. A refused call ends with UNAUTHENTICATED (no or wrong token) or PERMISSION_DENIED (disabled)."""
    import grpc

    codes = {Unauthenticated: grpc.StatusCode.UNAUTHENTICATED, PermissionDenied: grpc.StatusCode.PERMISSION_DENIED}

    def refusal(handler, exc):
        code, message = codes[type(exc)], str(exc)

        async def deny_unary(request, context):
            await context.abort(code, message)

        async def deny_stream(request_iterator, context):
            await context.abort(code, message)
            yield  # pragma: no cover - abort raises; this makes the function an async generator

        if handler is None:
            return None
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                deny_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                deny_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                deny_stream, handler.request_deserializer, handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(
            deny_unary, handler.request_deserializer, handler.response_serializer
        )

    class _AuthInterceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            value = None
            for key, v in details.invocation_metadata or ():
                if key == "authorization":
                    value = v
            exc = grpc_refusal(auth, details.method.rsplit("/", 1)[-1], value)
            if exc is not None:
                return refusal(await continuation(details), exc)
            return await continuation(details)

    return _AuthInterceptor()


__all__ = [
    "ENV_ALLOW_UNAUTHENTICATED",
    "ENV_REQUIRE_FOR_INFERENCE",
    "ENV_REQUIRE_FOR_METRICS",
    "ENV_TOKEN",
    "ENV_TOKEN_FILE",
    "GRPC_ADMIN_METHODS",
    "WWW_AUTHENTICATE",
    "AdminAuth",
    "bearer_token",
    "check_bind",
    "grpc_interceptor",
    "grpc_refusal",
    "is_loopback",
    "of_plane",
    "read_token_file",
]
