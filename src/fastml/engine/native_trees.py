"""The native tree kernel behind an ONNX Runtime session's face, for batch scoring (``fastml predict``).

A model that is one ONNX-ML tree ensemble (what ``fastml convert`` makes of gradient boosting and random forests)
is scored by ``fastml._core.TreeEnsemble`` (csrc/tree_ensemble.h) instead of ONNX Runtime's tree operator: the
same sums in the same order and ONNX Runtime's finishing rules, about twice the rows per core-second. It is used
only where it is known to agree:

* the model's graph and attributes are ones the kernel reproduces (else ``_core`` says why, and ONNX Runtime
  scores the model);
* on probe rows built around every split threshold (each value, its float neighbours, NaN), its labels equal ONNX
  Runtime's and its scores agree to float32 rounding; any difference keeps ONNX Runtime.

:class:`TreeSession` keeps the ONNX Runtime session: its inputs and outputs describe the model, and a feed the
kernel does not take as it is (another dtype, shape or layout) is handed to that session, whose checks and error
messages stay the ones users see.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

# Probe rows compared with ONNX Runtime before the kernel is used, and the agreement they must show.
PROBE_ROWS = 512
_RTOL = 1e-5
_ATOL = 1e-6


class TreeSession:
    """``run``, ``get_inputs`` and ``get_outputs`` of an ONNX Runtime session, scored by the native tree kernel.

    Thread-safe as the session is: the kernel is read-only and releases the GIL while it scores.
    """

    def __init__(self, session, kernel) -> None:
        self.session = session
        self.kernel = kernel
        (inp,) = session.get_inputs()
        self._input = inp.name
        self._width = inp.shape[1]
        # A model declaring a fixed row count: ONNX Runtime refuses other counts, and so does this face.
        self._rows = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self._outputs = [o.name for o in session.get_outputs()]

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, output_names, feed, run_options=None):
        """The outputs named (all when None) for ``feed``, as ``InferenceSession.run`` returns them."""
        x = feed.get(self._input) if len(feed) == 1 else None
        names = list(output_names) if output_names else self._outputs
        if (
            not isinstance(x, np.ndarray)
            or x.dtype != np.float32
            or x.ndim != 2
            or x.shape[1] != self._width
            or x.shape[0] == 0
            or (self._rows is not None and x.shape[0] != self._rows)
            or not x.flags.c_contiguous
            or not set(names) <= set(self._outputs)
        ):
            return self.session.run(output_names, feed, run_options)
        labels, scores = self.kernel.predict(x)
        results = (labels, scores) if self.kernel.classifier else (scores,)
        by_name = {name: results[i] for name, i in self.kernel.outputs}
        # A name asked for twice gets its own array each time, as ONNX Runtime returns them.
        return [by_name[n] if names.index(n) == k else by_name[n].copy() for k, n in enumerate(names)]


def native_kernel(model: bytes):
    """The compiled kernel (``fastml._core.TreeEnsemble``) of an ONNX file's bytes, or None where the kernel does not
    evaluate that model (the reason is logged at debug level)."""
    from fastml import _core
    from fastml.errors import InvalidInput

    try:
        return _core.TreeEnsemble(model)
    except InvalidInput as exc:
        log.debug("ONNX Runtime scores this model: %s", exc)
        return None


def tree_session(session, model):
    """``session`` scored by the native tree kernel where that gives ONNX Runtime's results (a :class:`TreeSession`),
    else ``session`` itself. ``model``: the ONNX file's bytes that ``session`` was loaded from, or the kernel
    :func:`native_kernel` compiled from them."""
    kernel = native_kernel(model) if isinstance(model, (bytes, bytearray, memoryview)) else model
    if kernel is None:
        return session
    inputs = session.get_inputs()
    outputs = {o.name for o in session.get_outputs()}
    if (
        len(inputs) != 1
        or inputs[0].type != "tensor(float)"
        or len(inputs[0].shape) != 2
        or not isinstance(inputs[0].shape[1], int)
        or inputs[0].shape[1] < kernel.min_features
        or inputs[0].name != kernel.input_name
        or outputs != {name for name, _ in kernel.outputs}
    ):
        log.debug("ONNX Runtime scores this model: its input is not one float matrix the trees read whole")
        return session
    candidate = TreeSession(session, kernel)
    probe = probe_rows(kernel, inputs[0].shape[1])
    differs = disagreement(session, candidate, probe)
    if differs:
        log.info("ONNX Runtime scores this model: the native tree kernel differs from it (%s)", differs)
        return session
    return candidate


def probe_rows(kernel, width: int, rows: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """Rows whose values sit on, just above and just below the trees' split thresholds (and NaN, and values far
    from any split), so that every comparison the kernel makes is tried on its edge. Deterministic for a seed."""
    features, thresholds = kernel.splits()
    # away from the splits, in [-4, 4): a block of 64 columns repeated, so a wide input costs no more to build
    block = ((_uniform(rows * min(width, 64), seed).reshape(rows, -1) - 0.5) * 8.0).astype(np.float32)
    x = np.tile(block, (1, -(-width // block.shape[1])))[:, :width].copy()
    order = np.argsort(features, kind="stable")
    features, thresholds = features[order], thresholds[order]
    # the features read, from the sorted array (np.unique imports numpy.ma: ~10 ms of every command's start)
    for f in features[np.flatnonzero(np.diff(features, prepend=-1))]:
        values = thresholds[np.searchsorted(features, f, "left") : np.searchsorted(features, f, "right")]
        u = _uniform(rows * 3, seed + 1 + int(f)).reshape(3, rows)
        picked = values[(u[0] * len(values)).astype(np.int64)]
        side = (u[1] * 3).astype(np.int64)  # on the threshold, the float above, the float below
        picked = np.where(side == 1, np.nextafter(picked, np.float32(np.inf)), picked)
        picked = np.where(side == 2, np.nextafter(picked, np.float32(-np.inf)), picked)
        keep = u[2] < 0.8
        x[keep, f] = picked[keep]
        x[u[2] > 0.95, f] = np.nan
    return x


def _uniform(n: int, seed: int) -> np.ndarray:
    """``n`` floats in [0, 1) from splitmix64 (numpy.random's import costs ~19 ms of every ``fastml predict``)."""
    with np.errstate(over="ignore"):
        z = (np.arange(1, n + 1, dtype=np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def disagreement(session, candidate: TreeSession, x: np.ndarray) -> str:
    """How ``candidate``'s outputs for ``x`` differ from ``session``'s ('' when they agree)."""
    names = [o.name for o in session.get_outputs()]
    try:
        expected = session.run(names, {candidate._input: x})
    except Exception as exc:  # noqa: BLE001 - a model ONNX Runtime cannot run on the probe is not compared
        return f"ONNX Runtime failed on the probe rows: {exc}"
    got = candidate.run(names, {candidate._input: x})
    for name, want, have in zip(names, expected, got):
        want = np.asarray(want)
        if want.shape != have.shape or want.dtype != have.dtype:
            return f"output {name!r}: {have.dtype}{list(have.shape)}, ONNX Runtime {want.dtype}{list(want.shape)}"
        if want.dtype.kind in "iub":
            bad = np.flatnonzero(want != have)
        else:  # np.isclose's rule, written out: np.isclose imports numpy.ma (~14 ms of every command's start)
            with np.errstate(invalid="ignore"):
                close = np.abs(have - want) <= _ATOL + _RTOL * np.abs(want)
            bad = np.flatnonzero(~(close | (np.isnan(have) & np.isnan(want))).reshape(-1))
        if len(bad):
            return f"output {name!r} differs at {len(bad)} of {want.size} values"
    return ""
