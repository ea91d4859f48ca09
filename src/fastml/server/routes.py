"""URL routing for the KServe v2 / Triton HTTP API (Triton's URL grammar, src/http_server.cc).

``route(path)`` returns ``(kind, model, version)``; kinds are the constants below. Unknown paths are
``NOT_FOUND``. Versions are whatever follows ``/versions/`` (Triton allows digits only; we also serve the
registry's version strings). Percent-encoded model names are decoded.
"""

from __future__ import annotations

from urllib.parse import unquote

LIVE, READY, SERVER_META, MODEL_META, MODEL_READY, MODEL_CONFIG, INFER, MODEL_STATS, ALL_STATS = range(9)
REPO_INDEX, REPO_LOAD, REPO_UNLOAD, METRICS, NOT_FOUND = range(9, 14)
# Triton's system shared-memory extension (name None = every region) and its CUDA twin (nothing registered).
SHM_STATUS, SHM_REGISTER, SHM_UNREGISTER, CUDA_SHM_STATUS, CUDA_SHM_REGISTER, CUDA_SHM_UNREGISTER = range(14, 20)
# Outcomes of served predictions for a model or deployment (fastml.serving.feedback): records data, changes
# no serving state, so it is authorised like inference.
FEEDBACK = 20
# Deployments (fastml.server.deploy_admin): /v2/deployments lists them; /v2/deployments/<name> answers GET
# (status, open like metadata) and, with the admin token, PUT (create or replace) and DELETE. The transport
# turns DEPLOYMENT into DEPLOYMENT_PUT / DEPLOYMENT_DELETE by method before the admin check.
DEPLOYMENTS, DEPLOYMENT, DEPLOYMENT_PUT, DEPLOYMENT_DELETE = range(21, 25)

# kind -> the one method it accepts (anything else is 405)
METHOD = {
    LIVE: b"GET",
    READY: b"GET",
    SERVER_META: b"GET",
    MODEL_META: b"GET",
    MODEL_READY: b"GET",
    MODEL_CONFIG: b"GET",
    INFER: b"POST",
    MODEL_STATS: b"GET",
    ALL_STATS: b"GET",
    REPO_INDEX: b"POST",
    REPO_LOAD: b"POST",
    REPO_UNLOAD: b"POST",
    METRICS: b"GET",
    SHM_STATUS: b"GET",
    SHM_REGISTER: b"POST",
    SHM_UNREGISTER: b"POST",
    CUDA_SHM_STATUS: b"GET",
    CUDA_SHM_REGISTER: b"POST",
    CUDA_SHM_UNREGISTER: b"POST",
    FEEDBACK: b"POST",
    DEPLOYMENTS: b"GET",
    DEPLOYMENT: (b"GET", b"PUT", b"DELETE"),  # several methods: a tuple (see DEPLOYMENT above)
    DEPLOYMENT_PUT: b"PUT",
    DEPLOYMENT_DELETE: b"DELETE",
}
_BY_METHOD = {b"PUT": DEPLOYMENT_PUT, b"DELETE": DEPLOYMENT_DELETE}


def by_method(kind: int, method: bytes) -> int | None:
    """The kind a request of a several-method route (METHOD value is a tuple) has for ``method``; None when
    the route does not take that method."""
    allowed = METHOD[kind]
    if type(allowed) is not tuple or method not in allowed:
        return None
    return _BY_METHOD.get(method, kind)


_MODEL_ACTIONS = {
    "infer": INFER,
    "ready": MODEL_READY,
    "config": MODEL_CONFIG,
    "stats": MODEL_STATS,
    "feedback": FEEDBACK,
}


def route(path: str) -> tuple[int, str | None, str | None]:
    """Classify a request path (without query string)."""
    parts = path.split("/")
    # parts[0] is "" for an absolute path
    if len(parts) < 2 or parts[0] != "" or parts[1] != "v2":
        if path == "/metrics":
            return METRICS, None, None
        return NOT_FOUND, None, None
    rest = parts[2:]
    if rest and rest[-1] == "" and len(rest) > 1:
        return NOT_FOUND, None, None
    n = len(rest)
    if n == 0 or rest == [""]:
        return SERVER_META, None, None
    head = rest[0]
    if head == "health" and n == 2:
        if rest[1] == "live":
            return LIVE, None, None
        if rest[1] == "ready":
            return READY, None, None
        return NOT_FOUND, None, None
    if head == "models":
        if n == 2 and rest[1] == "stats":
            return ALL_STATS, None, None
        if n < 2 or not rest[1]:
            return NOT_FOUND, None, None
        name = unquote(rest[1])
        version = None
        i = 2
        if n >= 4 and rest[2] == "versions" and rest[3]:
            version = unquote(rest[3])
            i = 4
        if i == n:
            return MODEL_META, name, version
        if i + 1 == n and rest[i] in _MODEL_ACTIONS:
            return _MODEL_ACTIONS[rest[i]], name, version
        return NOT_FOUND, None, None
    if head == "deployments":
        if n == 1:
            return DEPLOYMENTS, None, None
        if n == 2 and rest[1]:
            return DEPLOYMENT, unquote(rest[1]), None
        return NOT_FOUND, None, None
    if head == "systemsharedmemory" or head == "cudasharedmemory":
        return _shared_memory(head, rest, n)
    if head == "repository":
        # /v2/repository[/{repo}]/index and /v2/repository[/{repo}]/models/{m}/(load|unload)
        if n >= 2 and rest[1] != "index" and rest[1] != "models":
            rest = rest[:1] + rest[2:]  # drop the optional repository name
            n = len(rest)
        if n == 2 and rest[1] == "index":
            return REPO_INDEX, None, None
        if n == 4 and rest[1] == "models" and rest[2]:
            if rest[3] == "load":
                return REPO_LOAD, unquote(rest[2]), None
            if rest[3] == "unload":
                return REPO_UNLOAD, unquote(rest[2]), None
    return NOT_FOUND, None, None


def _shared_memory(head: str, rest: list[str], n: int) -> tuple[int, str | None, str | None]:
    """/v2/(system|cuda)sharedmemory[/region/{name}]/(status|register|unregister); register needs a name."""
    name = None
    if n == 4 and rest[1] == "region" and rest[2]:
        name = unquote(rest[2])
    elif n != 2:
        return NOT_FOUND, None, None
    action = rest[-1]
    cuda = head == "cudasharedmemory"
    if action == "status":
        return (CUDA_SHM_STATUS if cuda else SHM_STATUS), name, None
    if action == "register" and name is not None:
        return (CUDA_SHM_REGISTER if cuda else SHM_REGISTER), name, None
    if action == "unregister":
        return (CUDA_SHM_UNREGISTER if cuda else SHM_UNREGISTER), name, None
    return NOT_FOUND, None, None
