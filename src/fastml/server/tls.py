"""TLS for the inference listeners: one certificate and key for HTTP, gRPC and the binary protocol.

``fastml serve --tls-cert FILE --tls-key FILE`` (or the ``tls_cert`` / ``tls_key`` settings, i.e.
``FASTML_TLS_CERT`` / ``FASTML_TLS_KEY`` or ``config.toml``) serves HTTP as HTTPS, gRPC with
``grpc.ssl_server_credentials`` and the binary protocol inside TLS. ``--tls-client-ca FILE`` adds mutual TLS:
a client must present a certificate signed by that CA or the handshake fails, before any request is read.
The metrics listener stays plain HTTP (Prometheus scrapes it on a private network, as with Triton).

The files are read and checked once, when the server starts, so a missing file or a key that does not match
the certificate is one clear startup error rather than a failed handshake per connection.
"""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

from fastml.errors import InvalidInput


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """Where the server's TLS material lives.

    Attributes:
        cert_file: PEM certificate chain presented to clients (server certificate first).
        key_file: PEM private key of that certificate (unencrypted; keep it mode 600).
        client_ca_file: PEM CA bundle; when given, clients must present a certificate it signed (mutual TLS).
    """

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    @classmethod
    def from_options(cls, cert_file: str | None, key_file: str | None, client_ca_file: str | None) -> TlsConfig | None:
        """The configuration the three options describe; None when TLS is off (no cert and no key).

        Raises:
            InvalidInput: only one of cert and key, or a client CA without them.
        """
        cert_file, key_file, client_ca_file = cert_file or None, key_file or None, client_ca_file or None
        if cert_file is None and key_file is None:
            if client_ca_file is not None:
                raise InvalidInput("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
            return None
        if cert_file is None or key_file is None:
            raise InvalidInput("TLS needs both --tls-cert and --tls-key")
        config = cls(str(Path(cert_file).absolute()), str(Path(key_file).absolute()), None)
        if client_ca_file is not None:
            config = dataclasses.replace(config, client_ca_file=str(Path(client_ca_file).absolute()))
        config.server_context()  # fail now, with the file named, not on the first handshake
        return config

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate."""
        return self.client_ca_file is not None

    def server_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` for asyncio listeners (HTTP, binary): TLS 1.2 or newer, client certificates
        required when a client CA is configured.

        Raises:
            InvalidInput: a file that cannot be read or parsed, or a key that does not match the certificate.
        """
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            # An encrypted key would make OpenSSL prompt for its passphrase on the terminal (a server that hangs
            # before it listens, once per worker); refuse it with the file named instead.
            ctx.load_cert_chain(self.cert_file, self.key_file, password=self._encrypted_key)
        except InvalidInput:
            raise
        except FileNotFoundError as exc:
            raise InvalidInput(f"TLS: no such file {exc.filename or self.cert_file}") from None
        except (ssl.SSLError, OSError) as exc:
            raise InvalidInput(
                f"TLS: cannot use certificate {self.cert_file} with key {self.key_file}: {_reason(exc)}"
            ) from None
        if self.client_ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=self.client_ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise InvalidInput(f"TLS: cannot read client CA {self.client_ca_file}: {_reason(exc)}") from None
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _encrypted_key(self):
        raise InvalidInput(
            f"TLS: the key {self.key_file} is encrypted (it needs a passphrase): give the server an unencrypted "
            "key, e.g. `openssl pkey -in KEY -out KEY.plain`, and keep it mode 600"
        )

    def grpc_credentials(self):
        """``grpc.ServerCredentials`` with the same certificate, key and (optionally required) client CA."""
        import grpc

        key, cert = _read(self.key_file), _read(self.cert_file)
        ca = _read(self.client_ca_file) if self.client_ca_file is not None else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"TLS: cannot read {path}: {exc.strerror or exc}") from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


__all__ = ["TlsConfig"]
