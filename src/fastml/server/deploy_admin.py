"""The deployments admin endpoints of the HTTP transport.

``GET /v2/deployments`` lists this process's deployments with their variants, weights and counts;
``GET /v2/deployments/<name>`` shows one (both open, like model metadata). ``PUT /v2/deployments/<name>``
(body: the deployment's spec as TOML or JSON, the same table a deployment file holds) creates or replaces it
and ``DELETE`` removes it; both need the admin token (``fastml.server.auth``, checked by the transport
before the body is read), are applied without failing in-flight requests, and are persisted under
``FASTML_HOME`` so every server process on that home follows. A bad spec is a 400 naming the field, and the
running deployment is left as it was.
"""

from __future__ import annotations

from fastml.errors import NotFound, Unavailable
from fastml.server import routes
from fastml.server.tensors import encode_json

KINDS = frozenset({routes.DEPLOYMENTS, routes.DEPLOYMENT})
ADMIN_KINDS = frozenset({routes.DEPLOYMENT_PUT, routes.DEPLOYMENT_DELETE})


def _manager(plane):
    dm = plane.deployments
    if dm is None:
        raise Unavailable("this server process serves no deployments (a metrics-only or embedded data plane)")
    return dm


def get(plane, kind: int, name: str | None) -> bytes:
    """The JSON body of a GET: every deployment, or the one named.

    Raises:
        NotFound: no such deployment.
    """
    dm = _manager(plane)
    if kind == routes.DEPLOYMENTS:
        return encode_json({"deployments": dm.status()})
    d = dm.table.get(name)
    if d is None:
        raise NotFound(f"unknown deployment {name!r}")
    return encode_json({"name": name, "generation": d.router.generation, "variants": dm.variant_stats(name)})


async def change(plane, kind: int, name: str, body: bytes) -> bytes:
    """Apply a PUT or DELETE; the JSON body of the answer.

    Raises:
        InvalidInput / NotFound / Conflict: naming the field; the running deployments are unchanged.
    """
    dm = _manager(plane)
    if kind == routes.DEPLOYMENT_PUT:
        variants = await dm.put(name, body)
        return encode_json({"name": name, "applied": True, "variants": variants})
    await dm.delete(name)
    return encode_json({"name": name, "deleted": True})


__all__ = ["ADMIN_KINDS", "KINDS", "change", "get"]
