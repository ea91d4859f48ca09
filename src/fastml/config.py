"""One settings object: built-in defaults < config file < ``FASTML_*`` environment variables.

The home directory is ``$FASTML_HOME`` if set, else the per-user data directory
``$XDG_DATA_HOME/fastml`` (``~/.local/share/fastml`` when ``XDG_DATA_HOME`` is unset), the same place
MLflow- and Feast-style tools keep local state, so every command finds the same registry whatever the
current directory. The config file is ``$FASTML_CONFIG`` if set, else ``<home>/config.toml`` when it
exists; it may set ``home`` too. Each field maps to the environment variable ``FASTML_<FIELD>`` (upper case). Settings are read once per
process by :func:`get_settings`; tests call :func:`reset_settings` after changing the environment.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

from fastml.errors import InvalidInput


def default_home(environ: dict[str, str] | None = None) -> Path:
    """The per-user home used when neither ``FASTML_HOME`` nor the config file names one:
    ``$XDG_DATA_HOME/fastml``, else ``~/.local/share/fastml`` (XDG base directory specification)."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_DATA_HOME", "")
    # The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "fastml"
    return Path(env.get("HOME") or Path.home()) / ".local" / "share" / "fastml"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Process-wide settings. Paths are absolute once loaded."""

    home: Path = dataclasses.field(default_factory=default_home)
    """Root of all embedded state (registry.db, artifacts/, features/, logs/, audit/, runs/); default
    :func:`default_home`."""
    registry_url: str = ""
    """SQLAlchemy URL of the registry; empty means SQLite at ``home/registry.db``."""
    user: str = ""
    """Actor recorded in history and audit entries; empty means the login name."""
    http_port: int = 8000
    metrics_port: int = 8002
    log_sample_rate: float = 1.0
    """Fraction of predictions written to the prediction log."""
    max_buffered_bytes: int = 256 * 1024 * 1024
    """``fastml serve``: request body bytes buffered across all connections at once (503 beyond)."""
    tls_cert: str = ""
    """``fastml serve``: PEM certificate chain; with ``tls_key`` the listeners speak TLS. Empty: plain."""
    tls_key: str = ""
    """``fastml serve``: PEM private key of ``tls_cert``."""
    tls_client_ca: str = ""
    """``fastml serve``: PEM CA bundle clients' certificates must chain to (mutual TLS). Empty: no client certs."""

    @property
    def registry_db_url(self) -> str:
        return self.registry_url or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def actor(self) -> str:
        if self.user:
            return self.user
        try:
            return os.getlogin()
        except OSError:
            import getpass

            return getpass.getuser()

    def path(self, *parts: str) -> Path:
        """A path under ``home``; the directory holding it is created."""
        p = self.home.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def _coerce(field: dataclasses.Field, raw, source: str):
    typ = (
        field.type
        if isinstance(field.type, type)
        else {"Path": Path, "str": str, "int": int, "float": float}[field.type]
    )
    try:
        return typ(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"setting {field.name!r} from {source}: cannot read {raw!r} as {typ.__name__}") from exc


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build settings from defaults, the config file and the environment."""
    env = os.environ if environ is None else environ
    values: dict = {}
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    home = Path(env["FASTML_HOME"]) if env.get("FASTML_HOME") else default_home(env)
    cfg_path = Path(env["FASTML_CONFIG"]) if env.get("FASTML_CONFIG") else home / "config.toml"
    if env.get("FASTML_CONFIG") and not cfg_path.is_file():
        # Named on purpose: a typo or a directory would otherwise run every command on the defaults, silently.
        raise InvalidInput(f"config file {cfg_path} (FASTML_CONFIG): no such file")
    if cfg_path.is_file():
        with open(cfg_path, "rb") as fh:
            try:
                data = tomllib.load(fh)
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # tomllib reads UTF-8 only
                raise InvalidInput(f"config file {cfg_path}: {exc}") from exc
        for key, raw in data.items():
            if key not in fields:
                raise InvalidInput(f"config file {cfg_path}: unknown setting {key!r}; known: {sorted(fields)}")
            values[key] = _coerce(fields[key], raw, str(cfg_path))
    for name, field in fields.items():
        var = f"FASTML_{name.upper()}"
        if var in env and not (name == "home" and not env[var]):  # an empty FASTML_HOME means "unset"
            values[name] = _coerce(field, env[var], var)
    values.setdefault("home", home)
    settings = Settings(**values)
    return dataclasses.replace(settings, home=Path(settings.home).expanduser().absolute())


_settings: Settings | None = None


def get_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def reset_settings() -> None:
    global _settings
    _settings = None
