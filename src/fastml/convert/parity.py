"""Parity of an ONNX graph with the source model it was converted from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fastml.convert.spec import InputSpec, onnx_feed


def off_tolerance(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> tuple[np.ndarray, float]:
    """(where ``got`` is not within ``atol + rtol * |want|`` of ``want``, the largest absolute difference).

    A NaN on one side only is off (``diff > tol`` is False for a NaN, so a graph answering NaN used to pass);
    NaN on both sides at the same place is agreement. The largest difference is then inf.
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(got - want)
        both_nan = np.isnan(got) & np.isnan(want)
        off = ~(diff <= atol + rtol * np.abs(want)) & ~both_nan
    if not diff.size:
        return off, 0.0
    return off, float("inf") if off.any() and np.isnan(diff[off]).any() else float(
        np.nanmax(np.where(both_nan, 0.0, diff))
    )


@dataclasses.dataclass
class ParityReport:
    """Outcome of :func:`check_parity`. ``ok`` is False when any check failed; ``failures`` says which."""

    ok: bool
    rows: int
    atol: float
    rtol: float
    max_abs_diff: float
    label_mismatches: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def run_onnx(path: str | Path, model_input, spec: InputSpec) -> dict[str, np.ndarray]:
    """Run the graph at ``path`` on ``model_input``; outputs by name."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, onnx_feed(model_input, spec))))


def check_parity(
    source,
    onnx_path: str | Path,
    model_input,
    spec: InputSpec,
    *,
    task: str,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ParityReport:
    """Compare ONNX outputs with ``source.predict``/``predict_proba`` on ``model_input``.

    Classification: every probability within ``atol + rtol * |p|`` of the source's, and labels equal
    except on rows whose two top source probabilities are closer than the tolerance (a tie the float32
    graph may break the other way). Regression: every prediction within ``atol + rtol * |y|``.
    """
    out = run_onnx(onnx_path, model_input, spec)
    n = len(model_input)
    failures: list[str] = []
    if task == "classification":
        ref_p = np.asarray(source.predict_proba(model_input), dtype=np.float64)
        got_p = np.asarray(out["probabilities"], dtype=np.float64)
        if got_p.shape != ref_p.shape:
            return ParityReport(
                False,
                n,
                atol,
                rtol,
                float("inf"),
                failures=[f"probabilities shape {got_p.shape} != source {ref_p.shape}"],
            )
        bad, max_diff = off_tolerance(got_p, ref_p, atol, rtol)
        if bad.any():
            failures.append(
                f"{int(bad.any(axis=1).sum())} of {n} rows have probabilities off by up to {max_diff:.3g} (tolerance {atol:g} + {rtol:g}*|p|)"
            )
        ref_l = np.asarray(source.predict(model_input))
        got_l = np.asarray(out["label"]).reshape(-1)
        if ref_l.dtype.kind in "OUS":
            got_l, ref_l = got_l.astype(str), ref_l.astype(str)
        mism = got_l != ref_l
        top2 = np.sort(ref_p, axis=1)[:, -2:] if ref_p.shape[1] > 1 else np.zeros((n, 2))
        tie = (top2[:, 1] - top2[:, 0]) <= 2 * (atol + rtol)
        hard = mism & ~tie
        if hard.any():
            failures.append(f"{int(hard.sum())} of {n} labels differ from the source model")
        return ParityReport(not failures, n, atol, rtol, max_diff, int(mism.sum()), failures)
    ref = np.asarray(source.predict(model_input), dtype=np.float64).reshape(-1)
    got = np.asarray(out["variable"], dtype=np.float64).reshape(-1)
    if got.shape != ref.shape:
        return ParityReport(
            False, n, atol, rtol, float("inf"), failures=[f"prediction shape {got.shape} != source {ref.shape}"]
        )
    bad, max_diff = off_tolerance(got, ref, atol, rtol)
    if bad.any():
        failures.append(
            f"{int(bad.sum())} of {n} predictions off by up to {max_diff:.3g} (tolerance {atol:g} + {rtol:g}*|y|)"
        )
    return ParityReport(not failures, n, atol, rtol, max_diff, 0, failures)
