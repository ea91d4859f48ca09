"""Deployment files: parse and check the TOML that declares deployments, and persist it under FASTML_HOME.

A file holds one table per deployment::

    [deployments.fraud]
    [[deployments.fraud.variants]]
    name = "incumbent"
    model = "fraud@production"     # registry reference (name@alias, name:version) or a served model's name
    weight_bp = 9000               # basis points; the variants' weights sum to 10000
    [[deployments.fraud.variants]]
    name = "candidate"
    model = "fraud:2.0.0"
    weight_bp = 1000
    [[deployments.fraud.shadows]]  # optional mirrors: a copy of the request, answer logged and dropped
    name = "next"
    model = "fraud:3.0.0"
    share_bp = 10000               # share of requests mirrored (basis points)

Every error is an :class:`fastml.errors.InvalidInput` that names the file and the field
(``deployments.fraud.variants[1].weight_bp``). The persisted copy is replaced all-or-nothing (a temporary
file, fsync, rename), so a server polling it never reads half a file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from pathlib import Path

import msgspec

from fastml.errors import InvalidInput

TOTAL_BP = 10_000
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+\Z")
FILE_NAME = "deployments.toml"


# A variant or shadow loaded from the registry may declare its features (docs/features.md, "Features in the
# request path"): features = ["driver:trips", ...], entity_key = "driver_id", feature_policy = {...}.
Policy = str | float | dict[str, str | float]


class VariantSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One primary variant: ``name``, ``model`` (a reference or served model name), ``weight_bp``, and
    optionally the features its model joins from the online store (``features``, ``entity_key``,
    ``feature_policy``)."""

    name: str
    model: str
    weight_bp: int
    features: list[str] = []
    entity_key: str = ""
    feature_policy: dict[str, Policy] = {}


class ShadowSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One shadow (mirror): ``name``, ``model``, ``share_bp`` of requests mirrored (default all), and
    optionally its features (as for a variant)."""

    name: str
    model: str
    share_bp: int = TOTAL_BP
    features: list[str] = []
    entity_key: str = ""
    feature_policy: dict[str, Policy] = {}


def feature_overrides(target: VariantSpec | ShadowSpec) -> dict:
    """The serving-config fields a variant or shadow declares for its model's feature join ({} for none)."""
    if not target.features:
        return {}
    out: dict = {"features": list(target.features)}
    if target.entity_key:
        out["entity_key"] = target.entity_key
    if target.feature_policy:
        out["feature_policy"] = dict(target.feature_policy)
    return out


class CanarySpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[deployments.<name>.canary]``: a canary the server runs (:class:`fastml.serving.canary.CanaryController`).

    ``baseline`` and ``candidate`` name the deployment's two variants; ``check_interval_s`` is how often the
    guards are checked; ``promote_ref`` / ``promote_stage`` the registry promotion when the last step passes
    (none: the canary ends at its last step). The other fields are :class:`fastml.serving.canary.CanaryPolicy`'s.
    """

    baseline: str
    candidate: str
    steps_pct: list[float] = msgspec.field(default_factory=lambda: [5.0, 10.0, 25.0, 50.0, 100.0])
    interval_s: float | None = 300.0
    interval_requests: int | None = None
    check_interval_s: float = 10.0
    min_requests: int = 100
    max_error_rate: float = 0.05
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.5
    latency_alpha: float = 0.01
    min_slowdown_ratio: float = 1.1
    min_feedback: int = 100
    failures_to_rollback: int = 2
    promote_ref: str | None = None
    promote_stage: str = "production"

    def policy_fields(self) -> dict:
        """The CanaryPolicy keyword arguments."""
        d = msgspec.structs.asdict(self)
        for k in ("baseline", "candidate", "check_interval_s", "promote_ref", "promote_stage"):
            d.pop(k)
        d["steps_pct"] = tuple(d["steps_pct"])
        return d


class DeploymentSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A named endpoint: its variants and shadows (``name`` is filled from the table key), and optionally a
    canary the server runs."""

    variants: list[VariantSpec]
    shadows: list[ShadowSpec] = msgspec.field(default_factory=list)
    canary: CanarySpec | None = None
    name: str = ""


def home_dir() -> Path:
    """``$FASTML_HOME/deployments`` (created on demand by writers)."""
    from fastml.config import get_settings

    return Path(get_settings().home) / "deployments"


def state_path() -> Path:
    """Where the applied deployments are persisted."""
    return home_dir() / FILE_NAME


def parse(text: str, source: str = "deployment file") -> dict[str, DeploymentSpec]:
    """Parse and check a deployment file's text; ``{name: DeploymentSpec}`` in file order.

    Raises:
        InvalidInput: malformed TOML, an unknown or missing field, a bad name, weights that do not sum to
            10000, a share outside 0..10000, a repeated variant name, or a shadow that mirrors a variant
            of its own deployment onto the same model ("a shadow pointing at itself").
    """
    raw = _toml(text, source)
    unknown = sorted(set(raw) - {"deployments"})
    if unknown:
        raise InvalidInput(f"{source}: unknown top-level field {unknown[0]!r} (expected [deployments.<name>] tables)")
    tables = raw.get("deployments", {})
    if not isinstance(tables, dict):
        raise InvalidInput(f"{source}: deployments must be a table of [deployments.<name>] tables")
    return {name: _spec(name, table, source) for name, table in tables.items()}


def _toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:  # arrays or inline tables nested thousands deep (a request body is a deployment file)
        raise InvalidInput(f"{source}: not valid TOML: nested too deeply") from None


def _spec(name: str, table, source: str) -> DeploymentSpec:
    try:
        spec = msgspec.convert(table, DeploymentSpec)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"{source}: {_where(str(exc), f'deployments.{name}')}") from None
    spec = msgspec.structs.replace(spec, name=name, canary=_no_null_interval(spec.canary))
    check(spec, source)
    return spec


def _no_null_interval(c: CanarySpec | None) -> CanarySpec | None:
    """``interval_s = null`` (JSON: steps judged by request count only) as ``0.0``, which the controller treats the
    same (a step's time is always over). TOML has no null: the persisted file would leave the field out and read
    back the 300 s default, so other server processes and restarts would run another canary, and this process
    would restart its own as changed at the next re-read of the file."""
    if c is not None and c.interval_s is None and c.interval_requests is not None:
        return msgspec.structs.replace(c, interval_s=0.0)
    return c


def parse_one(name: str, text: str | bytes, source: str = "request body") -> DeploymentSpec:
    """One deployment's spec as an admin request sends it: TOML or JSON, either the deployment's own table
    (``variants = [...]``, ``{"variants": [...]}``) or a deployment file holding exactly ``[deployments.<name>]``.

    Raises:
        InvalidInput: as :func:`parse`, naming the field; or a body that declares another deployment.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{source}: not UTF-8 text") from None
    if text.lstrip().startswith("{"):
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"{source}: not valid JSON: {exc}") from None
        except RecursionError:  # arrays or objects nested thousands deep
            raise InvalidInput(f"{source}: not valid JSON: nested too deeply") from None
    else:
        raw = _toml(text, source)
    if not isinstance(raw, dict):
        raise InvalidInput(f"{source}: expected a table with 'variants' (and optionally 'shadows')")
    if "deployments" in raw:
        tables = raw["deployments"]
        extra = sorted(set(raw) - {"deployments"})
        if extra or not isinstance(tables, dict) or list(tables) != [name]:
            raise InvalidInput(
                f"{source}: a deployment file sent here must hold exactly [deployments.{name}] "
                f"(got {sorted(tables) if isinstance(tables, dict) else tables!r})"
            )
        raw = tables[name]
    if "name" in raw:
        raise InvalidInput(f"{source}: deployments.{name}.name: the name comes from the URL, not the body")
    return _spec(name, raw, source)


_PATH = re.compile(r"at `\$\.?([^`]*)`")


def _where(msg: str, prefix: str) -> str:
    # msgspec says "... - at `$.variants[0].weight_bp`"; name the full field from the file's root.
    if "at `$" not in msg:
        return f"{prefix}: {msg}"
    return _PATH.sub(
        lambda m: f"at `{prefix}{'.' if m.group(1) and not m.group(1).startswith('[') else ''}{m.group(1)}`", msg
    )


def check(spec: DeploymentSpec, source: str = "deployment") -> None:
    """The checks that need no registry or model: names, weights, shares, self-mirrors."""
    where = f"{source}: deployments.{spec.name}"
    if not _NAME.match(spec.name):
        raise InvalidInput(f"{where}: the deployment name may hold letters, digits, '_', '.' and '-' only")
    if not spec.variants:
        raise InvalidInput(f"{where}.variants: at least one variant is needed")
    seen: set[str] = set()
    for kind, items in (("variants", spec.variants), ("shadows", spec.shadows)):
        for i, v in enumerate(items):
            field = f"{where}.{kind}[{i}]"
            if not _NAME.match(v.name):
                raise InvalidInput(f"{field}.name: {v.name!r} may hold letters, digits, '_', '.' and '-' only")
            if v.name in seen:
                raise InvalidInput(f"{field}.name: {v.name!r} is used twice in deployment {spec.name!r}")
            seen.add(v.name)
            if not v.model.strip():
                raise InvalidInput(f"{field}.model: must name a registry reference or a served model")
            if v.model == spec.name:
                raise InvalidInput(f"{field}.model: {v.model!r} is the deployment itself")
            if (v.entity_key or v.feature_policy) and not v.features:
                raise InvalidInput(f"{field}: entity_key and feature_policy need features")
            share = v.weight_bp if kind == "variants" else v.share_bp
            if isinstance(share, bool) or not 0 <= share <= TOTAL_BP:
                unit = "weight_bp" if kind == "variants" else "share_bp"
                raise InvalidInput(f"{field}.{unit}: {share} is outside 0..10000 basis points")
    total = sum(v.weight_bp for v in spec.variants)
    if total != TOTAL_BP:
        raise InvalidInput(f"{where}.variants: weight_bp values sum to {total}, not 10000")
    if spec.canary is not None:
        _check_canary(spec, f"{where}.canary")
    primaries = {v.model: v.name for v in spec.variants}
    for i, s in enumerate(spec.shadows):
        if s.model in primaries:
            raise InvalidInput(
                f"{where}.shadows[{i}].model: {s.model!r} is variant {primaries[s.model]!r} of this deployment; "
                "a shadow must not mirror a variant onto itself"
            )


def _check_canary(spec: DeploymentSpec, where: str) -> None:
    c = spec.canary
    names = [v.name for v in spec.variants]
    if len(names) != 2:
        raise InvalidInput(f"{where}: a canary needs exactly two variants; the deployment has {names}")
    for key in ("baseline", "candidate"):
        if getattr(c, key) not in names:
            raise InvalidInput(f"{where}.{key}: {getattr(c, key)!r} is not a variant of the deployment ({names})")
    if c.baseline == c.candidate:
        raise InvalidInput(f"{where}.candidate: must differ from the baseline")
    if not 0 < c.check_interval_s < float("inf"):
        raise InvalidInput(f"{where}.check_interval_s: must be a finite number > 0, got {c.check_interval_s}")
    from fastml.serving.canary import CanaryPolicy  # the policy's own checks, named from the file's root

    try:
        CanaryPolicy(**c.policy_fields())
    except InvalidInput as exc:
        raise InvalidInput(f"{where}.{exc}") from None


def read(path: str | Path) -> tuple[str, dict[str, DeploymentSpec]]:
    """(text, parsed specs) of a deployment file. Raises NotFound-like InvalidInput when unreadable."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"{p}: no such deployment file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{p}: cannot read the deployment file: {exc}") from None
    return text, parse(text, str(p))


def write_atomic(path: Path, text: str, fsync: bool = True) -> None:
    """Replace ``path`` with ``text`` all-or-nothing: write a temporary file beside it, fsync, rename.
    ``fsync=False`` for files that are rewritten every second and need not survive a crash (status snapshots)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".deployments-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def dump(specs: dict[str, DeploymentSpec]) -> str:
    """TOML text for ``specs`` (what ``parse`` reads back)."""
    lines: list[str] = []
    for name, spec in specs.items():
        lines.append(f"[deployments.{_q(name)}]")
        for v in spec.variants:
            lines += [
                f"[[deployments.{_q(name)}.variants]]",
                f"name = {_s(v.name)}",
                f"model = {_s(v.model)}",
                f"weight_bp = {v.weight_bp}",
                *_feature_lines(v),
            ]
        for s in spec.shadows:
            lines += [
                f"[[deployments.{_q(name)}.shadows]]",
                f"name = {_s(s.name)}",
                f"model = {_s(s.model)}",
                f"share_bp = {s.share_bp}",
                *_feature_lines(s),
            ]
        if spec.canary is not None:
            lines.append(f"[deployments.{_q(name)}.canary]")
            for key, value in msgspec.structs.asdict(_no_null_interval(spec.canary)).items():
                if value is not None:
                    lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _feature_lines(target: VariantSpec | ShadowSpec) -> list[str]:
    if not target.features:
        return []
    lines = [f"features = [{', '.join(_s(f) for f in target.features)}]"]
    if target.entity_key:
        lines.append(f"entity_key = {_s(target.entity_key)}")
    if target.feature_policy:
        pairs = ", ".join(f"{_s(k)} = {_v(v)}" for k, v in target.feature_policy.items())
        lines.append(f"feature_policy = {{ {pairs} }}")
    return lines


def _v(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_s(k)} = {_v(v)}" for k, v in value.items()) + " }"
    if isinstance(value, str):
        return _s(value)
    return repr(float(value))


def _toml_value(value) -> str:
    if isinstance(value, str):
        return _s(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


# Control characters a TOML basic string must escape (tab may stay as it is).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _s(value: str) -> str:
    # Besides the quote and the backslash, control characters are escaped: written raw, the persisted file would
    # not read back, and every server on this home would keep failing on it.
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", out) + '"'


def _q(name: str) -> str:
    return name if re.match(r"^[A-Za-z0-9_\-]+$", name) else _s(name)


__all__ = [
    "DeploymentSpec",
    "ShadowSpec",
    "VariantSpec",
    "check",
    "dump",
    "feature_overrides",
    "home_dir",
    "parse",
    "read",
    "state_path",
    "write_atomic",
]
