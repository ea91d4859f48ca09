"""The system shared-memory registry (fastml.serving.shm): keys, bounds, views, writes, release."""

from __future__ import annotations

import mmap
import os
import uuid

import numpy as np
import pytest

from fastml.errors import Conflict, InvalidInput, NotFound
from fastml.serving.shm import SharedMemoryRegistry, tensor_params, validate_key


@pytest.fixture
def shm_object():
    """A fresh 4096-byte POSIX shared-memory object (/dev/shm/<key>); removed afterwards."""
    key = f"/fastml-test-{uuid.uuid4().hex[:12]}"
    path = "/dev/shm" + key
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    mm = mmap.mmap(fd, 4096)
    os.close(fd)
    yield key, mm
    mm.close()
    os.unlink(path)


@pytest.mark.parametrize(
    "key", ["", "/", "a/b", "/a/b", "/..", "..", "/.", "../etc/passwd", "/dev/shm/x", "x\x00y", "/" + "k" * 256]
)
def test_keys_that_are_paths_or_empty_are_refused(key):
    with pytest.raises(InvalidInput):
        validate_key(key)


@pytest.mark.parametrize("key,base", [("/abc", "abc"), ("abc", "abc"), ("/a.b-c_d", "a.b-c_d"), ("/...", "...")])
def test_posix_names_map_to_a_file_name(key, base):
    assert validate_key(key) == base


def test_register_status_unregister(shm_object):
    key, _ = shm_object
    reg = SharedMemoryRegistry()
    reg.register("in", key, 0, 1024)
    reg.register("out", key, 1024, 2048)
    assert reg.status("in") == [{"name": "in", "key": key, "offset": 0, "byte_size": 1024}]
    assert sorted(r["name"] for r in reg.status()) == ["in", "out"]
    with pytest.raises(Conflict, match="already in manager"):
        reg.register("in", key, 0, 16)
    reg.unregister("in")
    with pytest.raises(NotFound):
        reg.status("in")
    reg.unregister("in")  # idempotent, as in Triton
    reg.unregister()
    assert reg.status() == []


def test_register_refuses_missing_objects_and_windows_beyond_the_end(shm_object):
    key, _ = shm_object
    reg = SharedMemoryRegistry()
    with pytest.raises(NotFound):
        reg.register("r", "/fastml-test-does-not-exist", 0, 16)
    with pytest.raises(InvalidInput, match="exceeds"):
        reg.register("r", key, 4000, 200)
    with pytest.raises(InvalidInput):
        reg.register("r", key, -1, 16)
    with pytest.raises(InvalidInput):
        reg.register("r", key, 0, 0)
    with pytest.raises(InvalidInput):
        reg.register("r", "/../../etc/passwd", 0, 16)
    assert reg.status() == []


def test_symlinks_under_the_shm_dir_are_not_followed(tmp_path):
    target = tmp_path / "secret"
    target.write_bytes(b"x" * 64)
    (tmp_path / "link").symlink_to(target)
    reg = SharedMemoryRegistry(shm_dir=str(tmp_path))
    with pytest.raises(InvalidInput):
        reg.register("r", "/link", 0, 16)


def test_input_views_are_zero_copy_and_bounds_checked(shm_object):
    key, mm = shm_object
    reg = SharedMemoryRegistry()
    reg.register("r", key, 512, 1024)
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    mm[512 + 64 : 512 + 64 + 32] = data.tobytes()
    view = reg.input_view("r", 64, 32, np.dtype("<f4"), (2, 4))
    np.testing.assert_array_equal(view, data)
    assert not view.flags.writeable
    mm[512 + 64 : 512 + 68] = np.float32(42).tobytes()  # a change by the client is visible: no copy was made
    assert view[0, 0] == 42
    with pytest.raises(InvalidInput, match="outside region"):
        reg.input_view("r", 1000, 32, np.dtype("<f4"), (2, 4))
    with pytest.raises(InvalidInput, match="does not match shape"):
        reg.input_view("r", 0, 28, np.dtype("<f4"), (2, 4))
    with pytest.raises(InvalidInput, match="Unable to find"):
        reg.input_view("nope", 0, 32, np.dtype("<f4"), (2, 4))
    del view
    reg.close()


def test_bytes_inputs_and_outputs(shm_object):
    key, mm = shm_object
    reg = SharedMemoryRegistry()
    reg.register("r", key, 0, 4096)
    payload = b"".join(len(s).to_bytes(4, "little") + s for s in [b"ab", b"", "h\u00e9".encode()])
    mm[100 : 100 + len(payload)] = payload
    arr = reg.input_view("r", 100, len(payload), np.dtype(object), (3,))
    assert arr.tolist() == ["ab", "", "h\u00e9"]
    with pytest.raises(InvalidInput, match="claims 2 bytes but only 1 remain"):
        reg.input_view("r", 100, 5, np.dtype(object), (1,))
    with pytest.raises(InvalidInput, match="ends after 2 of 3"):
        reg.input_view("r", 100, 12, np.dtype(object), (3,))
    with pytest.raises(InvalidInput, match="needs 1099511627776 BYTES elements"):  # refused before allocating
        reg.input_view("r", 100, len(payload), np.dtype(object), (2**40,))
    n = reg.write_output("r", 2000, 100, payload)
    assert n == len(payload) and bytes(mm[2000 : 2000 + n]) == payload
    reg.close()


def test_write_output_checks_the_window_size(shm_object):
    key, mm = shm_object
    reg = SharedMemoryRegistry()
    reg.register("r", key, 1024, 64)
    out = np.arange(4, dtype=np.int64)
    assert reg.write_output("r", 8, 32, out) == 32
    np.testing.assert_array_equal(np.frombuffer(mm, np.int64, 4, 1024 + 8), out)
    with pytest.raises(InvalidInput, match="at least 32 bytes"):
        reg.write_output("r", 0, 16, out)
    with pytest.raises(InvalidInput, match="outside region"):
        reg.write_output("r", 40, 32, out)
    reg.close()


def test_unregister_while_a_view_is_alive_keeps_the_view_valid(shm_object):
    key, mm = shm_object
    reg = SharedMemoryRegistry()
    reg.register("r", key, 0, 64)
    mm[0:8] = np.int64(7).tobytes()
    view = reg.input_view("r", 0, 8, np.dtype("<i8"), (1,))
    reg.unregister("r")  # the mapping stays until the in-flight view is dropped
    assert view[0] == 7
    assert reg.status() == []


def test_tensor_params():
    assert tensor_params({}) is None
    assert tensor_params({"binary_data_size": 4}) is None
    assert tensor_params({"shared_memory_region": "r", "shared_memory_byte_size": 16}) == ("r", 0, 16)
    assert tensor_params({"shared_memory_region": "r", "shared_memory_byte_size": 16, "shared_memory_offset": 8}) == (
        "r",
        8,
        16,
    )
    with pytest.raises(InvalidInput, match="without"):
        tensor_params({"shared_memory_region": "r"})
    with pytest.raises(InvalidInput):
        tensor_params({"shared_memory_region": "r", "shared_memory_byte_size": -1})
    with pytest.raises(InvalidInput):
        tensor_params({"shared_memory_region": "r", "shared_memory_byte_size": "16"})
    with pytest.raises(InvalidInput):
        tensor_params({"shared_memory_region": 3, "shared_memory_byte_size": 16})
