"""The shared receive buffer (fastml.client.wire.FrameBuffer): frames split anywhere, views kept alive, bounds."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from fastml import _frames
from fastml.client import wire


@pytest.mark.parametrize("chunk_bytes", [1024, 4096, 1 << 16])
def test_frames_split_at_random_points_parse_in_order_and_views_stay_valid(chunk_bytes):
    rng = random.Random(chunk_bytes)
    frames = [
        _frames.encode_request(i, "m", None, {"x": np.full((rng.randint(0, 3000),), i, np.float32)}) for i in range(200)
    ]
    stream = b"".join(frames)
    buffer, parser = wire.FrameBuffer(chunk_bytes), wire.Parser()
    items, pos = [], 0
    while pos < len(stream):
        space = buffer.get_buffer()
        assert len(space) > 0
        n = min(len(space), rng.randint(1, 9000), len(stream) - pos)
        space[:n] = stream[pos : pos + n]
        pos += n
        buffer.advance(n)
        got, fatal = buffer.parse(parser, 1 << 20)
        assert fatal is None
        items += got
    assert [i[1] for i in items] == list(range(200))
    # Every array still holds its own frame's values: no chunk was reused under a live view.
    assert all((i[5]["x"] == i[1]).all() for i in items)
    assert buffer.pending_bytes == 0


def test_an_announced_large_frame_costs_only_the_bytes_received():
    buffer, parser = wire.FrameBuffer(4096), wire.Parser()
    header = struct.pack("<I", 60 << 20) + b"FMLB\x01\x01\x00\x00" + b"\0" * 8
    space = buffer.get_buffer()
    space[: len(header)] = header
    buffer.advance(len(header))
    assert buffer.parse(parser, 10) == ([], None)
    for _ in range(20):
        buffer.advance(min(len(buffer.get_buffer()), 1000))
        buffer.parse(parser, 10)
    assert buffer.pending_bytes == len(header) + 20_000
    assert len(buffer.get_buffer()) + buffer.pending_bytes < 64 * 1024  # not 60 MiB
