"""Type stubs of fastml._core, the pybind11 module built from csrc/ (bindings in csrc/bindings.cc).

Checked against the built module by tests/engine/test_core_stubs.py (mypy's stubtest).
"""

from collections.abc import Callable, Sequence
from typing import Any, SupportsIndex, SupportsInt

import numpy as np
import numpy.typing as npt

from fastml.errors import FastMLError

_Int = SupportsInt | SupportsIndex

# Status code name -> number (csrc/status.h StatusCode), "OK" included.
STATUS_CODES: dict[str, int]
# The one table: failure code -> the fastml.errors class the core raises for it.
ERROR_CLASSES: dict[int, type[FastMLError]]

def raise_status(code: _Int, message: str) -> None:
    """Raises the fastml.errors exception that the core's status `code` maps to (the one table)."""

# The batcher's submit entry point for fastml._frames.Intake (a PyCapsule; see csrc/frame_submit_api.h).
frame_submit_api: object

class CoreError(RuntimeError):
    """A batcher failure with ``args == (code, message)``; fastml.engine converts it with ERROR_CLASSES."""

class CompletionQueue:
    """Completions for one event loop: watch `fd` (an eventfd), then Batcher.resolve()."""

    def __init__(self) -> None: ...
    @property
    def fd(self) -> int: ...
    def set_quiet_thread(self) -> None: ...
    def drain(self) -> list[Any]:
        """[(ticket, batch, row_offset, rows, code, message | None, batch_requests)]; settles nothing."""

class Ticket:
    """A blocking request handle (see Batcher.wait)."""

    @property
    def id(self) -> int: ...

# (batch_id, rows, [read-only input arrays]) as a runner receives a batch.
_Batch = tuple[int, int, list[np.ndarray]]

class Batcher:
    """The native micro-batcher of one model (see csrc/batcher.h)."""

    def __init__(
        self,
        inputs: Sequence[tuple[str, np.dtype[Any], Sequence[_Int]]],
        outputs: Sequence[str],
        max_batch_size: _Int,
        max_queue_size: _Int,
        max_queue_delay_us: _Int,
        instances: _Int,
    ) -> None: ...
    def submit_async(self, queue: CompletionQueue, arrays: object, timeout_us: _Int, future: object = None) -> int: ...
    def submit_future(self, queue: CompletionQueue, inputs: object, timeout_us: _Int, loop: Any) -> Any:
        """Model.submit's fast path: enqueues `inputs` with a new future of `loop` and returns it."""
    def submit_future_fn(self) -> Callable[[CompletionQueue, object, int, Any], Any]:
        """submit_future as a plain fast-call function bound to this batcher (no pybind11 dispatch)."""
    def submit_sync(self, arrays: object, timeout_us: _Int) -> Ticket: ...
    def wait(self, ticket: Ticket) -> tuple[int, object, object]:
        """(code, message | None, result dict | None); interruptible by signals."""
    def abandon_ticket(self, ticket: Ticket) -> None: ...
    def abandon(self, queue: CompletionQueue) -> None: ...
    def resolve(self, queue: CompletionQueue, make_error: Callable[[int, str], BaseException] | object) -> int: ...
    def next_batch(self, runner: _Int) -> _Batch | None: ...
    def try_next_batch(self, runner: _Int) -> _Batch | None: ...
    def run_queued(
        self,
        runner: _Int,
        run: Callable[..., Any],
        output_names: Sequence[str],
        input_names: tuple[str, ...],
        run_options: object,
        failed_prefix: str,
    ) -> int: ...
    def complete(self, runner: _Int, code: _Int = 0, message: str = "", outputs: object = None) -> None: ...
    def complete_next(
        self, runner: _Int, code: _Int = 0, message: str = "", outputs: object = None
    ) -> _Batch | None: ...
    def shutdown(self, reason: str = "closed") -> None: ...
    def stats(self) -> dict[str, Any]: ...

class FeatureTable:
    """One online table (a feature group version) of a FeatureCache."""

    @property
    def name(self) -> str: ...
    @property
    def n_features(self) -> int: ...
    def put_many(
        self,
        keys_data: npt.ArrayLike,
        keys_offsets: npt.ArrayLike,
        values: npt.ArrayLike,
        present: npt.ArrayLike,
        event_time_us: npt.ArrayLike,
    ) -> tuple[int, int]: ...
    def put(
        self, keys: object, values: npt.ArrayLike, present: npt.ArrayLike, event_time_us: npt.ArrayLike
    ) -> tuple[int, int]: ...
    def count(self) -> int: ...
    def sample_keys(self, limit: int = 16) -> list[bytes]: ...

class FeatureReadPlan:
    """A prepared lookup: which tables and features fill which output columns."""

    @property
    def n_columns(self) -> int: ...
    @property
    def n_key_sets(self) -> int: ...
    def get(
        self, keys: object, as_float32: bool = False, now_us: _Int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def get_into(
        self, keys: object, out: np.ndarray, present: object = None, event_time: object = None, now_us: _Int = 0
    ) -> int: ...

class FeatureJoinPlan:
    """A compiled serving join: entity keys and request-time columns in, a model's float32 [rows, F] input out."""

    def __init__(
        self,
        cache: FeatureCache,
        tables: list[Any],
        columns: list[Any],
        n_key_inputs: int = 1,
        n_request: int = 0,
        key_names: list[str] = ...,
        key_dtypes: list[str] = ...,
        request_names: list[str] = ...,
    ) -> None: ...
    def run(self, inputs: dict[Any, Any], now_us: _Int = 0) -> tuple[np.ndarray, int, int, bool]: ...
    def counts(self) -> tuple[int, np.ndarray, np.ndarray]: ...
    def uncount_last(self) -> bool: ...
    @property
    def n_columns(self) -> int: ...
    def join(
        self, keys: Sequence[Any], request: Sequence[Any], out: np.ndarray, now_us: _Int = 0
    ) -> tuple[np.ndarray, np.ndarray, int, int, bool]: ...

class FeatureCache:
    """An LMDB environment holding one table per feature group version."""

    def __init__(
        self,
        path: str,
        map_size_bytes: _Int = ...,
        max_readers: _Int = 1024,
        max_tables: _Int = 4096,
        sync: bool = True,
    ) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def owner_pid(self) -> int: ...
    def readers(self) -> list[tuple[int, int]]: ...
    def open_table(self, name: str, n_features: _Int) -> FeatureTable: ...
    def plan(self, specs: list[Any], n_key_sets: _Int = 1) -> FeatureReadPlan: ...

# ----- router (csrc/router.h) -----
ROUTER_BUCKETS: int

def xxhash64(data: Any, seed: _Int = 0) -> int:
    """xxHash64 of a bytes-like object (the routing key hash)."""

class Router:
    """Traffic router of one deployment: weighted variants and shadows (see csrc/router.h)."""

    def __init__(
        self,
        variants: Sequence[str],
        weights_bp: Sequence[_Int],
        shadows: Sequence[str] = ...,
        shadow_bp: Sequence[_Int] = ...,
    ) -> None: ...
    def route(self, key: str | bytes | None = None) -> tuple[int, int]:
        """(variant index, shadow bit mask) for one request; key None means keyless."""
    def route_many(
        self,
        out: npt.NDArray[np.int32],
        keys: Any = None,
        offsets: npt.NDArray[np.int64] | None = None,
        shadow_out: npt.NDArray[np.uint32] | None = None,
    ) -> None:
        """Fill `out` (int32) with len(out) decisions; keys: concatenated key bytes with int64 `offsets`."""
    def peek(self, key: str | bytes | None = None) -> tuple[int, int]:
        """route() without counting the decision (count_routed when the request goes that way)."""
    def peek_many(self, out: npt.NDArray[np.int32]) -> None:
        """len(out) keyless decisions like route_many(out), not counted (count_routed as they are used)."""
    def count_routed(self, variant: _Int, n: _Int = 1) -> None: ...
    def set_weights(self, weights_bp: Sequence[_Int], shadow_bp: Sequence[_Int] | None = None) -> None: ...
    def count_pinned(self, arg0: _Int, /) -> None: ...
    def count_error(self, arg0: _Int, /) -> None: ...
    def count_shadow_shed(self, arg0: _Int, /) -> None: ...
    @property
    def variants(self) -> list[str]: ...
    @property
    def shadows(self) -> list[str]: ...
    @property
    def weights_bp(self) -> list[int]: ...
    @property
    def shadow_bp(self) -> list[int]: ...
    @property
    def generation(self) -> int: ...
    def counts(self) -> dict[str, list[int]]: ...

# (rows, first_ts, last_ts, [(n finite, counts per bin, reservoir values), ...]) of one closed window.
_WindowSummary = tuple[int, float, float, list[tuple[int, npt.NDArray[np.int64], npt.NDArray[np.float64]]]]

class MonitorWindow:
    """The open live-monitoring window of one model (see csrc/monitor_window.h)."""

    def __init__(
        self,
        edges: Sequence[npt.ArrayLike],
        capacities: Sequence[_Int],
        window_rows: _Int,
        max_closed: _Int = 4,
        seed: _Int = 0,
    ) -> None: ...
    def add(self, arrays: Sequence[np.ndarray], columns: Sequence[_Int], now_s: float) -> int: ...
    def rotate(self) -> bool: ...
    def take(self) -> list[_WindowSummary]: ...
    def set_layout(self, edges: Sequence[npt.ArrayLike], capacities: Sequence[_Int]) -> None: ...
    @property
    def n_columns(self) -> int: ...
    @property
    def open_rows(self) -> int: ...
    @property
    def open_first_ts(self) -> float: ...
    @property
    def dropped_rows(self) -> int: ...
    @property
    def add_ns(self) -> int: ...

class TreeEnsemble:
    """A compiled ONNX-ML tree ensemble scored natively (see csrc/tree_ensemble.h)."""

    def __init__(self, model: bytes | bytearray | memoryview) -> None: ...
    def predict(self, x: np.ndarray) -> tuple[npt.NDArray[np.int64] | None, npt.NDArray[np.float32]]: ...
    def splits(self) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]: ...
    @property
    def classifier(self) -> bool: ...
    @property
    def n_scores(self) -> int: ...
    @property
    def min_features(self) -> int: ...
    @property
    def n_trees(self) -> int: ...
    @property
    def n_nodes(self) -> int: ...
    @property
    def input_name(self) -> str: ...
    @property
    def outputs(self) -> list[tuple[str, int]]: ...
