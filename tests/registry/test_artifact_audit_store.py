"""Artifact store integrity: what is read for serving is the registered content or an error, never a link out of
the store or a path named by caller text, and garbage collection never deletes what a version still needs."""

from __future__ import annotations

import hashlib
import os
import shutil
import time

import pytest

from fastml.errors import IntegrityError, InvalidInput, NotFound


def _age(path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old), follow_symlinks=False)


def test_an_artifact_replaced_by_a_link_to_identical_bytes_is_refused_then_repaired(reg, artifact, tmp_path):
    src = artifact("linked", 2048)
    mv = reg.register("m", src, actor="ana")
    stored = reg.artifact_path(mv.ref)
    # Same bytes, but living outside the store: whoever controls the target can change it after any check.
    outside = tmp_path / "elsewhere.onnx"
    shutil.copyfile(stored, outside)
    stored.unlink()
    stored.symlink_to(outside)

    with pytest.raises(IntegrityError, match="links are never followed") as err:
        reg.artifact_path(mv.ref)
    assert mv.sha256 in str(err.value)
    assert [(p["ref"], p["kind"]) for p in reg.verify()] == [("m:1.0.0", "artifact")]

    # Storing the same content again replaces the link with a checked plain file.
    reg.register("m", src, actor="ana")
    assert not stored.is_symlink() and stored.read_bytes() == src.read_bytes()
    assert reg.artifact_path(mv.ref) == stored
    assert reg.verify() == []
    assert [c["kind"] for c in reg.cleaned()] == ["repaired"]


def test_serving_refuses_an_artifact_that_is_a_link(fastml_home, artifact, tmp_path):
    """The loader's path (fastml.load_model / fastml serve resolve references this way) gets the error."""
    from fastml.registry import Registry
    from fastml.serving.loader import resolve_ref

    with Registry() as reg:
        mv = reg.register("churn", artifact("served", 1024), actor="ana")
        stored = reg.artifact_path(mv.ref)
    outside = tmp_path / "other.onnx"
    shutil.copyfile(stored, outside)
    stored.unlink()
    stored.symlink_to(outside)
    with pytest.raises(IntegrityError, match=mv.sha256):
        resolve_ref("churn")


def test_a_linked_shard_directory_is_neither_read_nor_written(reg, artifact, tmp_path):
    src = artifact("shard", 1024)
    mv = reg.register("m", src, actor="ana")
    shard = reg.artifact_path(mv.ref).parent
    moved = tmp_path / "moved-shard"
    shutil.move(shard, moved)
    shard.symlink_to(moved, target_is_directory=True)

    with pytest.raises(IntegrityError, match=mv.sha256):
        reg.artifact_path(mv.ref)
    # Registering the same content must not write through the link, and records nothing when it refuses.
    with pytest.raises(IntegrityError, match="symbolic link"):
        reg.register("m", src, actor="ana")
    assert [v.version for v in reg.list_versions("m")] == ["1.0.0"]
    assert sorted(p.name for p in moved.iterdir()) == [mv.sha256]


def test_gc_never_deletes_through_a_linked_shard_directory(reg, tmp_path):
    outside = tmp_path / "not-the-store"
    outside.mkdir()
    victim = outside / ("ab" + "0" * 62)
    victim.write_bytes(b"someone else's file")
    _age(victim, 7200)
    reg.artifacts.root.mkdir(parents=True, exist_ok=True)
    (reg.artifacts.root / "ab").symlink_to(outside, target_is_directory=True)

    assert reg.gc() == []
    assert victim.read_bytes() == b"someone else's file"


@pytest.mark.parametrize("digest", ["../../../etc/passwd", "../outside.parquet", "AB" * 32, "a" * 63, ""])
def test_only_a_sha256_digest_names_a_stored_file(reg, digest):
    with pytest.raises(InvalidInput, match="not a sha256 digest"):
        reg.artifacts.path_for(digest)
    with pytest.raises(InvalidInput, match="not a sha256 digest"):
        reg.artifacts.verified_path(digest, 10, "m:1.0.0")


def test_a_reference_tag_cannot_point_outside_the_store(fastml_home, artifact, tmp_path):
    """A drift reference named by a version's tag (user text) is looked up by digest only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fastml.registry import Registry
    from fastml.serving.live_monitoring import registry_reference

    # "../outside.parquet" under <home>/artifacts/<first two chars>/ is <tmp_path>/outside.parquet.
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0]}), tmp_path / "outside.parquet")
    with Registry() as reg:
        reg.register("churn", artifact("tagged"), tags={"reference_sha256": "../outside.parquet"}, actor="ana")
    with pytest.raises(InvalidInput, match="not a sha256 digest"):
        registry_reference("churn")


def test_a_truncated_artifact_error_names_both_digests(reg, artifact):
    mv = reg.register("m", artifact("cut", 4096), actor="ana")
    stored = reg.artifact_path(mv.ref)
    kept = stored.read_bytes()[:1000]
    stored.write_bytes(kept)
    with pytest.raises(IntegrityError) as err:
        reg.artifact_path(mv.ref)
    text = str(err.value)
    assert "has 1000 bytes, expected 4096" in text
    assert f"expected {mv.sha256}" in text
    assert f"has sha256 {hashlib.sha256(kept).hexdigest()}" in text


def test_gc_racing_a_register_of_stored_content_keeps_the_file(reg, artifact, monkeypatch):
    """Content left unreferenced long ago (a register that crashed before its commit) is registered again; gc
    runs after the copy step and before the version row commits. The committed row must find its file."""
    src = artifact("orphan", 2048)
    orphan = reg.artifacts.put(src)
    _age(orphan.path, 7200)  # older than gc's default one-hour grace period

    real_put = reg.artifacts.put

    def put_then_gc(path):
        stored = real_put(path)
        assert reg.gc() == []  # the row is not committed yet: nothing references the file
        return stored

    monkeypatch.setattr(reg.artifacts, "put", put_then_gc)
    mv = reg.register("m", src, actor="ana")
    assert reg.artifact_path(mv.ref).read_bytes() == src.read_bytes()
    assert reg.verify() == []


def test_gc_still_collects_old_unreferenced_files_and_keeps_referenced_ones(reg, artifact):
    kept = reg.register("m", artifact("kept", 1024), actor="ana")
    gone = reg.artifacts.put(artifact("gone", 1024))
    young = reg.artifacts.put(artifact("young", 1024))
    _age(gone.path, 7200)
    _age(reg.artifact_path(kept.ref), 7200)
    assert reg.gc() == [gone.sha256]
    assert not gone.path.exists() and young.path.exists()
    assert reg.artifact_path(kept.ref).is_file()


def test_a_missing_artifact_is_not_found_not_integrity(reg, artifact):
    mv = reg.register("m", artifact("vanish"), actor="ana")
    reg.artifact_path(mv.ref).unlink()
    with pytest.raises(NotFound, match="missing"):
        reg.artifact_path(mv.ref)


def test_artifact_bytes_are_the_checked_bytes_or_an_error(reg, artifact):
    src = artifact("bytes", 4096)
    mv = reg.register("m", src, actor="ana")
    got_mv, data = reg.artifact_bytes("m@latest")
    assert got_mv.ref == mv.ref and data == src.read_bytes()
    stored = reg.artifact_path(mv.ref)
    stored.chmod(0o644)
    for changed, why in (
        (data + b"x", "more than 4096 bytes"),  # grown: read stops one byte past the registered size
        (data[:-1], "4095 bytes"),
        (bytes([data[0] ^ 1]) + data[1:], "4096 bytes and sha256"),
    ):
        stored.write_bytes(changed)
        with pytest.raises(IntegrityError, match=why) as err:
            reg.artifact_bytes(mv.ref)
        assert mv.sha256 in str(err.value) and "refusing to load it" in str(err.value)
    stored.unlink()
    with pytest.raises(NotFound, match="is missing"):
        reg.artifact_bytes(mv.ref)


def test_a_reference_without_a_size_tag_is_still_checked_against_its_digest(fastml_home, artifact, tmp_path):
    # Before: with no reference_bytes tag (register_reference stores none), the file was read unchecked, so a
    # replaced reference silently became the baseline every drift score was measured against.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fastml.registry import Registry
    from fastml.serving.live_monitoring import register_reference, registry_reference

    with Registry() as reg:
        sha = register_reference("churn", {"x": [1.0, 2.0, 3.0, 4.0]}, registry=reg)
        reg.register("churn", artifact("with_reference"), tags={"reference_sha256": sha}, actor="ana")
        stored = reg.artifacts.path_for(sha)
    profile, source = registry_reference("churn")
    assert source == "registry:churn:1.0.0" and list(profile.columns) == ["x"]
    pq.write_table(pa.table({"x": [100.0, 200.0]}), tmp_path / "other.parquet")
    stored.chmod(0o644)
    stored.write_bytes((tmp_path / "other.parquet").read_bytes())
    with pytest.raises(IntegrityError, match=f"expected .*sha256 {sha}"):
        registry_reference("churn")
