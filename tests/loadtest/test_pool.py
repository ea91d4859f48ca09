"""The open loop's connection pool: hand-over races, made deterministic with fake connections.

Each race is staged inside one loop iteration (release, then cancel, before any task runs): that is
what happens when a waiter's ``asyncio.timeout`` fires (it cancels the task) in the same iteration as
a release.
"""

from __future__ import annotations

import asyncio

import pytest

from fastml.loadtest import runner
from fastml.loadtest.connection import ConnectionClosed
from fastml.loadtest.runner import _ConnectionPool

# Enough loop iterations for every runnable task to settle; no sleeps, no timing.
SETTLE = 20


class FakeConn:
    """Stands in for HttpConnection: the pool only reads ``closed`` and calls ``close()``."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"FakeConn({self.n}, closed={self.closed})"


@pytest.fixture
def opened(monkeypatch) -> list[FakeConn]:
    """Every connection the pool opens, in order."""
    conns: list[FakeConn] = []

    async def fake_open(host, port, *, keep_body=False, ssl=None):
        conn = FakeConn(len(conns))
        conns.append(conn)
        return conn

    monkeypatch.setattr(runner, "open_connection", fake_open)
    return conns


async def settle() -> None:
    for _ in range(SETTLE):
        await asyncio.sleep(0)


async def pool_with_waiters(n_waiters: int) -> tuple[_ConnectionPool, object, list[asyncio.Task]]:
    """A pool of one connection, held by the caller, with ``n_waiters`` acquirers queued for it."""
    pool = _ConnectionPool("127.0.0.1", 1, max_connections=1, keep_body=False)
    held = await pool.acquire()
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(n_waiters)]
    await settle()
    assert not any(w.done() for w in waiters)
    return pool, held, waiters


def test_waiter_cancelled_as_a_connection_is_released_passes_it_on(opened):
    async def main():
        pool, held, (first, second) = await pool_with_waiters(2)
        pool.release(held)  # goes to `first`...
        first.cancel()  # ...whose timeout fires in the same iteration, before it runs
        await settle()
        assert first.cancelled()
        # The connection must reach the waiter still waiting, not sit idle until its timeout.
        assert second.done() and second.result() is held
        assert pool._idle == [] and len(opened) == 1 and pool._total == 1

    asyncio.run(main())


def test_waiter_cancelled_as_a_closed_connection_frees_its_slot_passes_the_slot_on(opened):
    async def main():
        pool, held, (first, second) = await pool_with_waiters(2)
        held.close()
        pool.release(held)  # the slot goes to `first`, which is cancelled before it can connect
        first.cancel()
        await settle()
        assert first.cancelled()
        assert second.done()
        fresh = second.result()
        assert fresh is opened[1] and not fresh.closed
        assert pool._total == 1 and pool.peak == 1

    asyncio.run(main())


def test_waiter_cancelled_before_the_release_is_skipped(opened):
    async def main():
        pool, held, (first, second) = await pool_with_waiters(2)
        first.cancel()
        await settle()
        pool.release(held)
        await settle()
        assert second.result() is held

    asyncio.run(main())


def test_acquirer_cancelled_while_connecting_frees_its_slot(monkeypatch):
    conns: list[FakeConn] = []

    async def main():
        gate = asyncio.Event()  # never set: the first connect hangs until cancelled

        async def slow_open(host, port, *, keep_body=False, ssl=None):
            if not conns:
                conns.append(FakeConn(-1))
                await gate.wait()
            conn = FakeConn(len(conns))
            conns.append(conn)
            return conn

        monkeypatch.setattr(runner, "open_connection", slow_open)
        pool = _ConnectionPool("127.0.0.1", 1, max_connections=1, keep_body=False)
        first = asyncio.create_task(pool.acquire())
        await settle()
        second = asyncio.create_task(pool.acquire())
        await settle()
        assert not second.done()  # the only slot is taken by `first`'s connect
        first.cancel()
        await settle()
        assert second.done() and second.result() is conns[-1]
        assert pool._total == 1

    asyncio.run(main())


def test_connection_closed_by_the_server_during_hand_over_is_replaced(opened):
    async def main():
        pool, held, (waiter,) = await pool_with_waiters(1)
        pool.release(held)
        held.close()  # the server's FIN arrives before the waiter runs
        await settle()
        got = waiter.result()
        assert got is opened[1] and not got.closed
        assert pool._total == 1

    asyncio.run(main())


def test_idle_connection_closed_by_the_server_is_replaced(opened):
    async def main():
        pool = _ConnectionPool("127.0.0.1", 1, max_connections=1, keep_body=False)
        conn = await pool.acquire()
        pool.release(conn)
        conn.close()  # closed while idle
        assert pool.try_acquire() is None
        fresh = await pool.acquire()
        assert fresh is opened[1] and not fresh.closed
        assert pool._total == 1 and pool.peak == 1

    asyncio.run(main())


def test_close_fails_waiters_and_closes_connections_released_after_it(opened):
    async def main():
        pool, held, (first, second) = await pool_with_waiters(2)
        pool.close()
        await settle()
        for waiter in (first, second):
            with pytest.raises(ConnectionClosed):
                waiter.result()
        pool.release(held)  # a request still in flight at close() finishes afterwards
        assert held.closed and pool._idle == [] and pool._total == 0
        with pytest.raises(ConnectionClosed):
            await pool.acquire()

    asyncio.run(main())


def test_cancelled_open_loop_stops_its_requests_and_closes_their_connections(monkeypatch):
    """Cancelling a run (a caller's wait_for, Ctrl-C) must not leave requests running on open sockets."""
    conns: list[FakeConn] = []

    class HangingConn(FakeConn):
        def request(self, wire, timeout_s=None):
            return asyncio.get_running_loop().create_future()  # never answered

    async def fake_open(host, port, *, keep_body=False, ssl=None):
        conn = HangingConn(len(conns))
        conns.append(conn)
        return conn

    monkeypatch.setattr(runner, "open_connection", fake_open)

    async def main():
        run = asyncio.create_task(
            runner.run_open_loop("127.0.0.1", 1, b"x", rate_per_s=1e6, max_requests=3, timeout_s=3600)
        )
        for _ in range(10_000):  # an iteration bound, not a time bound: stop once all three are sent
            if len(conns) == 3:
                break
            await asyncio.sleep(0)
        assert len(conns) == 3
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert all(c.closed for c in conns), conns
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())
