"""Clients of the fastml binary protocol (docs/protocol.md): numpy arrays in, numpy arrays out.

Example:
    >>> from fastml.client import Client                         # doctest: +SKIP
    >>> with Client("127.0.0.1:8001") as client:
    ...     client.infer("mlp", {"input": x})["probabilities"]

``Client`` blocks (and pipelines with ``infer_many``); ``AsyncClient`` serves many concurrent
``await infer(...)`` calls over few connections. Both pool connections, time out, retry requests refused
as ``Unavailable`` a bounded number of times, and raise the ``fastml.errors`` class the server answered.
"""

from fastml.client.aio import AsyncClient
from fastml.client.sync import Client
from fastml.client.tls import client_context

__all__ = ["AsyncClient", "Client", "client_context"]
