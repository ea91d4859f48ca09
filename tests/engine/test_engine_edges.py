"""Engine edge cases: a split request refused part-way, per-call timeouts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fastml.engine import load_model
from fastml.errors import InvalidInput, Overloaded


def test_split_request_refused_part_way_queues_no_more_chunks(batcher, rowsum_model, gate):
    # max_queue_size 4: three queued requests leave room for the first 4-row chunk of a 10-row request only.
    model = load_model(rowsum_model, max_batch_size=4, max_queue_size=4, batcher=batcher, warmup=False)
    g = gate(model)
    x = np.arange(40, dtype=np.float32).reshape(10, 4)

    async def main():
        first = model.submit(x[:1])
        await asyncio.to_thread(g.entered.wait)
        queued = [model.submit(x[:1]) for _ in range(3)]
        with pytest.raises(Overloaded, match=r"^queue is full: 4 requests pending \(max_queue_size 4\)$"):
            model.submit(x)
        g.release()
        await first
        await asyncio.gather(*queued)
        for _ in range(20):  # passes in which a completed chunk could still queue the rest
            await asyncio.sleep(0.01)

    asyncio.run(main())
    model.close()
    # The refused request's first chunk had been queued and runs; rows 4-7 and 8-9 must not.
    assert [rows for rows, _ in g.batches] == [1, 3, 4]
    assert model.stats()["rows"] == 8


@pytest.mark.parametrize("runner", ["threads", "loop"])
@pytest.mark.parametrize("timeout", [-1, 1.5, True])
def test_per_call_timeout_must_be_a_non_negative_int(rowsum_model, runner, timeout):
    x = np.ones((2, 4), np.float32)
    with load_model(rowsum_model, max_batch_size=4, runner=runner) as model:
        message = rf"^timeout_us must be an int >= 0; got {timeout!r}$".replace(".", r"\.")
        with pytest.raises(InvalidInput, match=message):
            model.predict(x, timeout_us=timeout)
        with pytest.raises(InvalidInput, match=message):  # a request split into batches too
            model.predict(np.ones((9, 4), np.float32), timeout_us=timeout)
        with pytest.raises(InvalidInput, match=message):
            asyncio.run(model.predict_async(x, timeout_us=timeout))
        assert model.predict(x, timeout_us=np.int64(0))["Y"].tolist() == [4.0, 4.0]
        assert model.stats()["requests"] == 1
