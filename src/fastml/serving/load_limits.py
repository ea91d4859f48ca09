"""What a repository load request may ask for: a validated model name and bounded overrides.

A load request (HTTP ``/v2/repository/models/<name>/load``, gRPC ``RepositoryModelLoad``) comes from the
network, so everything in it is checked here before anything is allocated: the name is one path component
that must name a model of a served repository (never a path), and every override is an integer within the
bound below (a ``max_batch_size`` of 5,000,000 would allocate gigabytes for the warm-up batch, 300
``instances`` would start 300 threads). The bounds are deliberately generous for real deployments; larger
values belong in the model's ``config.toml``, which the operator controls.
"""

from __future__ import annotations

import re

from fastml.errors import InvalidInput

# One path component: starts with a letter or digit, then letters, digits, '_', '.', '-'; no '/', no '..'.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# field -> (smallest, largest) a load request may set.
LOAD_BOUNDS: dict[str, tuple[int, int]] = {
    "max_batch_size": (1, 4096),  # the engine batches at least one row (no "0 = does not batch" here)
    "instances": (1, 64),
    "max_queue_size": (1, 1 << 20),
    "max_queue_delay_us": (0, 10_000_000),
    "timeout_us": (0, 3_600_000_000),
}


def validate_model_name(name) -> str:
    """``name`` if it is a valid model name.

    Raises:
        InvalidInput: not a string, not matching :data:`MODEL_NAME_RE`, or containing ``..``.
    """
    if not isinstance(name, str) or not MODEL_NAME_RE.fullmatch(name) or ".." in name:
        shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
        raise InvalidInput(
            f"invalid model name {shown}: use 1-128 letters, digits, '_', '.' or '-', starting with a letter or "
            "digit (a model name, never a path)"
        )
    return name


def check_override(field: str, value) -> int:
    """``value`` as the int a load request may set for ``field``.

    Raises:
        InvalidInput: not an integer (booleans and floats included) or outside ``LOAD_BOUNDS[field]``.
    """
    low, high = LOAD_BOUNDS[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(
            f"load override {field} must be an integer between {low} and {high}, got {type(value).__name__}"
        )
    if not low <= value <= high:
        raise InvalidInput(f"load override {field} must be between {low} and {high}, got {value}")
    return value


__all__ = ["LOAD_BOUNDS", "MODEL_NAME_RE", "check_override", "validate_model_name"]
