"""TLS on the client side: the ``ssl.SSLContext`` that :class:`fastml.client.Client`, :class:`AsyncClient` and
``fastml loadtest`` use to reach a server started with ``--tls-cert`` (and, for mutual TLS, ``--tls-client-ca``)."""

from __future__ import annotations

import ssl

from fastml.errors import InvalidInput


def client_context(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """A client ``ssl.SSLContext`` that trusts ``ca_file`` (else the system store) and, for mutual TLS,
    presents ``cert_file`` / ``key_file``. The server's name is checked against its certificate.

    Raises:
        InvalidInput: unreadable files, or a certificate without its key.
    """
    if (cert_file is None) != (key_file is None):
        raise InvalidInput("a client certificate needs its key (and the key its certificate)")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        if cert_file is not None:
            ctx.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise InvalidInput(f"TLS: no such file {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise InvalidInput(f"TLS: cannot load client TLS files: {_reason(exc)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


__all__ = ["client_context"]
