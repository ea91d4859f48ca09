"""System shared memory: Triton's registry of client-created POSIX shared-memory regions.

A local client creates a shared-memory object (``shm_open``), registers a window of it by name
(``register(name, key, offset, byte_size)``), then sends requests whose inputs and outputs name the region
instead of carrying bytes: the server reads inputs straight out of the mapping (zero-copy numpy views) and
writes outputs into it. Every transport (HTTP, gRPC) resolves tensors through the one registry the data
plane owns, so the bounds checks below are the only ones.

Safety rules:
- a key is a POSIX shared-memory name (``/name``), never a path: one optional leading ``/``, no other
  ``/``, not ``.`` or ``..``, no NUL; the object is opened under /dev/shm with O_NOFOLLOW and must be a
  regular file that covers ``offset + byte_size``;
- every access is bounds-checked against the registered window before any array is built;
- a region is mapped once at registration and released at unregistration or :meth:`close`. A numpy view
  still held by an in-flight request keeps the mapping alive until that view is dropped (the kernel mapping
  goes away with the last reference), so unregistering never invalidates memory under a running model.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import threading

import numpy as np

from fastml.errors import Conflict, InvalidInput, NotFound

SHM_DIR = "/dev/shm"
# The parameter names Triton's clients put on an input or a requested output.
REGION_PARAM = "shared_memory_region"
OFFSET_PARAM = "shared_memory_offset"
BYTE_SIZE_PARAM = "shared_memory_byte_size"

_KEY = re.compile(r"/?[^/\x00]{1,255}")
MAX_SHAPE_ELEMENTS = 2**48  # a shape's product over its non-zero dimensions; numpy cannot describe more
MAX_SHAPE_DIMS = 32  # numpy's own limit is 64; no model input has more than a handful of dimensions


def shape_count(shape, where: str) -> int:
    """Elements of a tensor of ``shape``.

    Raises:
        InvalidInput: more than ``MAX_SHAPE_DIMS`` dimensions, a negative dimension, or a shape too large to
        describe even when another dimension is 0 (numpy refuses to build such an array, empty or not).
    """
    if len(shape) > MAX_SHAPE_DIMS:
        # Every transport's shapes come through here (shared-memory inputs, gRPC raw contents): a rank numpy
        # cannot build would otherwise surface as an internal error when the array is reshaped.
        raise InvalidInput(f"{where}: shape has {len(shape)} dimensions; at most {MAX_SHAPE_DIMS} are allowed")
    count, extent = 1, 1
    for d in shape:
        d = int(d)
        if d < 0:
            raise InvalidInput(f"{where}: shape {list(shape)} has a negative dimension")
        count *= d
        extent *= max(d, 1)
        if extent > MAX_SHAPE_ELEMENTS:
            raise InvalidInput(f"{where}: shape {list(shape)} is too large")
    return count


class Region:
    """One registered window ``[offset, offset + byte_size)`` of a shared-memory object.

    Attributes:
        name: the client's name for the region. key: the shared-memory object's name as registered.
        offset: start of the window inside the object. byte_size: window length.
        buffer: the mapping (from byte 0 of the object; the window starts at ``offset``).
    """

    __slots__ = ("name", "key", "offset", "byte_size", "buffer", "released")

    def __init__(self, name: str, key: str, offset: int, byte_size: int, buffer: mmap.mmap):
        self.name = name
        self.key = key
        self.offset = offset
        self.byte_size = byte_size
        self.buffer = buffer
        self.released = False  # unregistered: a request that resolved it before must not write into it

    def status(self) -> dict:
        """Triton's status entry for the region."""
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def release(self) -> None:
        self.released = True
        try:
            self.buffer.close()
        except BufferError:
            # A request still holds a view into the mapping: it is unmapped when the last view is dropped.
            pass


def validate_key(key: str) -> str:
    """The file name under /dev/shm for a POSIX shared-memory name, or InvalidInput.

    Raises:
        InvalidInput: the key is empty, a path (a '/' beyond the leading one), '.', '..' or holds NUL.
    """
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidInput(
            f"shared memory key {str(key)[:80]!r} is not a POSIX shared-memory name: use '/name' "
            "(one leading '/', no other '/', at most 255 characters)"
        )
    base = key[1:] if key.startswith("/") else key
    if base in (".", ".."):
        raise InvalidInput(f"shared memory key {key!r} is not a POSIX shared-memory name")
    return base


def _non_negative_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidInput(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


class SharedMemoryRegistry:
    """The registered system shared-memory regions of one server process (thread-safe).

    Args:
        shm_dir: where POSIX shared-memory objects live (/dev/shm on Linux; a test may point elsewhere).
    """

    def __init__(self, shm_dir: str = SHM_DIR):
        self.shm_dir = shm_dir
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()  # guards _regions (transports may run on several threads)

    # ----- control ------------------------------------------------------------------------------
    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes at ``offset`` of shared-memory object ``key`` under ``name``.

        Raises:
            InvalidInput: a bad name, key, offset or size; a window beyond the object's end.
            NotFound: no shared-memory object of that key.
            Conflict: a region of that name is already registered (Triton answers this as a bad request).
        """
        if not isinstance(name, str) or not name:
            raise InvalidInput("a shared memory region needs a non-empty name")
        base = validate_key(key)
        offset = _non_negative_int(offset, "shared memory offset")
        byte_size = _non_negative_int(byte_size, "shared memory byte_size")
        if byte_size == 0:
            raise InvalidInput(f"shared memory region {name!r}: byte_size must be positive")
        with self._lock:
            if name in self._regions:
                raise Conflict(f"shared memory region '{name}' already in manager")
        try:
            fd = os.open(os.path.join(self.shm_dir, base), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"Unable to open shared memory region: '{key}' (no such shared memory object)") from None
        except OSError as exc:
            raise InvalidInput(f"Unable to open shared memory region: '{key}' ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidInput(f"shared memory key {key!r} is not a shared memory object")
            if offset + byte_size > st.st_size:
                raise InvalidInput(
                    f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} exceeds the "
                    f"{st.st_size}-byte shared memory object {key!r}"
                )
            buffer = mmap.mmap(fd, offset + byte_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)  # the mapping keeps the object alive; the descriptor is not needed
        region = Region(name, key, offset, byte_size, buffer)
        with self._lock:
            if name in self._regions:  # lost a race with a concurrent register of the same name
                region.release()
                raise Conflict(f"shared memory region '{name}' already in manager")
            self._regions[name] = region

    def unregister(self, name: str | None = None) -> None:
        """Forget one region (``name``) or every region (None or ""). Unknown names are not an error
        (Triton's behaviour: unregistering is idempotent)."""
        with self._lock:
            if name:
                regions = [self._regions.pop(name)] if name in self._regions else []
            else:
                regions = list(self._regions.values())
                self._regions.clear()
        for region in regions:
            region.release()

    def status(self, name: str | None = None) -> list[dict]:
        """Status entries of every region, or of one.

        Raises:
            NotFound: ``name`` is not registered.
        """
        with self._lock:
            if name:
                region = self._regions.get(name)
                if region is None:
                    raise NotFound(f"Unable to find system shared memory region: '{name}'")
                return [region.status()]
            return [r.status() for r in self._regions.values()]

    def close(self) -> None:
        """Release every region (server shutdown)."""
        self.unregister(None)

    def __len__(self) -> int:
        return len(self._regions)

    # ----- data ---------------------------------------------------------------------------------
    def _window(self, name: str, offset: int, byte_size: int, where: str) -> tuple[Region, int]:
        region = self._regions.get(name)
        if region is None:
            raise InvalidInput(f"{where}: Unable to find shared memory region: '{name}'")
        offset = _non_negative_int(offset, f"{where}: shared_memory_offset")
        byte_size = _non_negative_int(byte_size, f"{where}: shared_memory_byte_size")
        if offset + byte_size > region.byte_size:
            raise InvalidInput(
                f"{where}: shared memory offset {offset} + byte_size {byte_size} is outside region '{name}' "
                f"of {region.byte_size} bytes"
            )
        return region, region.offset + offset

    def check_window(self, name: str, offset: int, byte_size: int, where: str = "output") -> Region:
        """The registered region ``name``, or InvalidInput unless ``[offset, offset + byte_size)`` lies inside
        it (checked when a request arrives, so a bad output region fails before the model runs). A transport
        keeps the region for :meth:`write_region`: the name may be unregistered and registered again for
        another object while the request runs."""
        return self._window(name, offset, byte_size, where)[0]

    def input_view(
        self, name: str, offset: int, byte_size: int, dtype: np.dtype, shape, where: str = "input"
    ) -> np.ndarray:
        """The tensor stored in a region: a zero-copy read-only view for numeric data; BYTES elements
        (4-byte little-endian length + UTF-8 each) are decoded into a str object array.

        Raises:
            InvalidInput: unknown region, a window outside the region, or a byte size that does not match
            the shape.
        """
        region, start = self._window(name, offset, byte_size, where)
        shape = tuple(int(d) for d in shape)
        count = shape_count(shape, where)
        dtype = np.dtype(dtype)
        if dtype.kind == "O":
            if count * 4 > byte_size:  # every element has a 4-byte length: refuse before allocating
                raise InvalidInput(
                    f"{where}: shape {list(shape)} needs {count} BYTES elements, the window holds {byte_size} bytes"
                )
            mv = memoryview(region.buffer)[start : start + byte_size]
            try:
                return _decode_bytes(mv, count, where).reshape(shape)
            finally:
                mv.release()  # the decoded strings are copies; the mapping must stay closable
        if count * dtype.itemsize != byte_size:
            raise InvalidInput(
                f"{where}: shared_memory_byte_size {byte_size} does not match shape {list(shape)} of {dtype} "
                f"({count * dtype.itemsize} bytes)"
            )
        arr = np.frombuffer(region.buffer, dtype, count, start).reshape(shape)
        arr.flags.writeable = False  # the model must not write into the client's memory
        return arr

    def write_output(
        self, name: str, offset: int, byte_size: int, data: bytes | np.ndarray, where: str = "output"
    ) -> int:
        """Copy an output tensor's bytes (numeric: raw little-endian; BYTES: length-prefixed elements) into
        a region's window and return how many bytes were written.

        Raises:
            InvalidInput: unknown region, a window outside the region, or a window too small for the data.
        """
        region, start = self._window(name, offset, byte_size, where)
        return _write(region, start, byte_size, data, where)

    def write_region(
        self, region: Region, offset: int, byte_size: int, data: bytes | np.ndarray, where: str = "output"
    ) -> int:
        """:meth:`write_output` into the region :meth:`check_window` returned when the request arrived.

        Raises:
            InvalidInput: the region was unregistered since, or its window is too small for the data.
        """
        if region.released:
            raise InvalidInput(f"{where}: shared memory region '{region.name}' was unregistered while the request ran")
        return _write(region, region.offset + offset, byte_size, data, where)


def _write(region: Region, start: int, byte_size: int, data: bytes | np.ndarray, where: str) -> int:
    """Copies ``data`` to ``start`` of ``region``'s mapping, a window of ``byte_size`` bytes checked by the caller."""
    if isinstance(data, np.ndarray):
        # Flattened first: memoryview cannot cast a view with a zero in its shape (an output of no rows).
        buf = memoryview(np.ascontiguousarray(data).reshape(-1)).cast("B")
    else:
        buf = memoryview(data)
    n = buf.nbytes
    if n > byte_size:
        raise InvalidInput(
            f"{where}: shared memory size specified with the request ({byte_size} bytes) should be at "
            f"least {n} bytes to hold the results"
        )
    region.buffer[start : start + n] = buf
    return n


def _decode_bytes(mv: memoryview, count: int, where: str) -> np.ndarray:
    """``count`` KServe BYTES elements (4-byte little-endian length + UTF-8 text each) as a str array."""
    out = np.empty(count, dtype=object)
    pos, end = 0, len(mv)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(f"{where}: BYTES data ends after {i} of {count} elements")
        n = int.from_bytes(mv[pos : pos + 4], "little")
        pos += 4
        if pos + n > end:
            raise InvalidInput(f"{where}: BYTES element {i} claims {n} bytes but only {end - pos} remain")
        try:
            out[i] = str(mv[pos : pos + n], "utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"{where}: BYTES element {i} is not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        pos += n
    return out


def tensor_params(params) -> tuple[str, int, int] | None:
    """``(region, offset, byte_size)`` when a tensor's parameters name a shared-memory region, else None.

    ``params`` is a plain mapping of parameter values (the transports unwrap their own parameter types).

    Raises:
        InvalidInput: a region without a byte size, or non-integer offset/size.
    """
    if not params:
        return None
    region = params.get(REGION_PARAM)
    if region is None:
        return None
    if not isinstance(region, str) or not region:
        raise InvalidInput(f"parameter {REGION_PARAM!r} must be a non-empty string, got {region!r}")
    if BYTE_SIZE_PARAM not in params:
        raise InvalidInput(f"shared memory region '{region}' is named without '{BYTE_SIZE_PARAM}'")
    byte_size = _non_negative_int(params[BYTE_SIZE_PARAM], BYTE_SIZE_PARAM)
    offset = _non_negative_int(params.get(OFFSET_PARAM, 0), OFFSET_PARAM)
    return region, offset, byte_size


__all__ = [
    "BYTE_SIZE_PARAM",
    "OFFSET_PARAM",
    "REGION_PARAM",
    "Region",
    "SharedMemoryRegistry",
    "tensor_params",
    "shape_count",
    "validate_key",
]
