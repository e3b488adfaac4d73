"""The extender's assume cache, on its own: no scheduler, no event loop, the time passed in."""

from __future__ import annotations

from hami.extender.reservations import Reservations


class Write:
    """A stand-in for the background annotation write (an asyncio.Task in the service)."""

    def __init__(self, *, finished: bool = False) -> None:
        self.finished = finished
        self.cancelled = False

    def done(self) -> bool:
        return self.finished or self.cancelled

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def _decide(r: Reservations[Write], uid: str, node: str = "a", *, at: float = 0.0) -> Write:
    write = Write()
    r.decided(uid, node, {"hami.io/vgpu-node": node}, write, now=at)
    return write


def test_a_decision_assumes_the_pod_and_bind_takes_it_once() -> None:
    r: Reservations[Write] = Reservations()
    write = _decide(r, "u1", "a", at=5.0)
    assert r.is_assumed("u1") and r.assumed == {"u1"}
    pending = r.take("u1")
    assert pending is not None
    assert (pending.node, dict(pending.annotations), pending.write, pending.at) == (
        "a",
        {"hami.io/vgpu-node": "a"},
        write,
        5.0,
    )
    assert r.take("u1") is None  # taken once
    assert r.is_assumed("u1") and r.in_flight("a") == 1  # still assumed, still queued on a
    assert not write.cancelled


def test_a_new_decision_replaces_the_pending_one_and_cancels_its_write() -> None:
    r: Reservations[Write] = Reservations()
    first = _decide(r, "u1", "a")
    second = _decide(r, "u1", "b")
    assert first.cancelled and not second.cancelled
    pending = r.take("u1")
    assert pending is not None and pending.node == "b"
    assert (r.in_flight("a"), r.in_flight("b")) == (0, 1)


def test_a_finished_write_is_not_cancelled() -> None:
    r: Reservations[Write] = Reservations()
    write = Write(finished=True)
    r.decided("u1", "a", {}, write, now=0.0)
    r.forget("u1")
    assert not write.cancelled


def test_confirmed_ends_the_assumption_only() -> None:
    r: Reservations[Write] = Reservations()
    _decide(r, "u1")
    r.confirmed("u1")
    assert not r.is_assumed("u1")
    assert r.in_flight("a") == 1 and r.take("u1") is not None


def test_assume_without_a_decision_is_assumed_but_not_in_flight() -> None:
    r: Reservations[Write] = Reservations()
    r.assume("u1")
    assert r.is_assumed("u1") and r.take("u1") is None and r.congested(1) == frozenset()


def test_withdraw_keeps_the_pod_assumed() -> None:
    r: Reservations[Write] = Reservations()
    write = _decide(r, "u1")
    r.withdraw("u1")
    assert write.cancelled and r.is_assumed("u1")
    assert r.take("u1") is None and r.in_flight("a") == 0


def test_forget_drops_everything() -> None:
    r: Reservations[Write] = Reservations()
    write = _decide(r, "u1")
    r.forget("u1")
    assert write.cancelled and not r.is_assumed("u1")
    assert r.take("u1") is None and r.in_flight("a") == 0
    r.forget("never-seen")  # harmless


def test_in_flight_counts_make_a_node_congested_until_allocations_finish() -> None:
    r: Reservations[Write] = Reservations()
    _decide(r, "u1", "a")
    _decide(r, "u2", "a")
    _decide(r, "u3", "b")
    assert r.congested(2) == {"a"} and r.congested(1) == {"a", "b"}
    assert r.congested(0) == frozenset() and r.congested(-1) == frozenset()  # off
    r.take("u1")  # a bind does not end the wait for the allocation
    assert r.congested(2) == {"a"}
    r.allocation_finished("u1")
    assert r.congested(2) == frozenset() and r.in_flight("a") == 1
    r.allocation_finished("u1")  # repeated events are harmless
    r.allocation_finished("u2")
    r.allocation_finished("u3")
    assert r.congested(1) == frozenset()


def test_expired_names_old_assumed_decisions_at_most_once_per_sweep_interval() -> None:
    r: Reservations[Write] = Reservations(sweep_interval=10.0)
    _decide(r, "old", at=1000.0)
    _decide(r, "new", at=1200.0)
    _decide(r, "confirmed", at=1000.0)
    r.confirmed("confirmed")  # seen bound: the informer holds it, nothing to expire
    assert r.expired(now=1295.0, ttl=300.0) == []  # nothing older than the TTL yet
    assert r.expired(now=1303.0, ttl=300.0) == []  # "old" is due, but the last look was 8 s ago
    assert r.expired(now=1306.0, ttl=300.0) == [("old", 1000.0)]
    assert r.expired(now=1317.0, ttl=300.0) == [("old", 1000.0)]  # until the caller forgets it
    r.forget("old")
    assert r.expired(now=1600.0, ttl=300.0) == [("new", 1200.0)]


def test_a_taken_decision_never_expires() -> None:
    r: Reservations[Write] = Reservations()
    _decide(r, "u1", at=0.0)
    r.take("u1")
    assert r.expired(now=10_000.0, ttl=300.0) == []


def test_cancel_writes_cancels_the_unfinished_ones_and_keeps_the_decisions() -> None:
    r: Reservations[Write] = Reservations()
    running = _decide(r, "u1")
    finished = Write(finished=True)
    r.decided("u2", "a", {}, finished, now=0.0)
    r.cancel_writes()
    assert running.cancelled and not finished.cancelled
    assert r.take("u1") is not None and r.take("u2") is not None
