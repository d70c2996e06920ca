"""The service's model-call admission: at most N at once, first come first served, threads per lane."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from recommender.corpora import SAMPLE_DIR
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat
from recommender.service.state import ComputeLanes, Predictor


def _wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def test_a_freed_lane_goes_to_the_longest_waiter_not_a_newcomer() -> None:
    lanes = ComputeLanes(1, cores=1)
    order: list[str] = []
    release_first = threading.Event()

    def call(name: str, hold: threading.Event | None = None) -> None:
        with lanes.lane():
            order.append(name)
            if hold is not None:
                hold.wait(5)

    first = threading.Thread(target=call, args=("first", release_first))
    first.start()
    _wait_until(lambda: order == ["first"])
    waiters = []
    for k, name in enumerate(("second", "third", "fourth")):
        t = threading.Thread(target=call, args=(name,))
        t.start()
        _wait_until(lambda k=k: len(lanes._waiting) == k + 1)
        waiters.append(t)
    release_first.set()
    call("newcomer")  # arrives while the hand-over happens: it must queue behind the others
    for t in (first, *waiters):
        t.join(5)
    assert order == ["first", "second", "third", "fourth", "newcomer"]
    assert lanes.running == 0 and not lanes._waiting


def test_never_more_calls_than_lanes() -> None:
    lanes = ComputeLanes(2, cores=2)
    running, peak = 0, 0
    lock = threading.Lock()

    def call() -> None:
        nonlocal running, peak
        with lanes.lane():
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.02)
            with lock:
                running -= 1

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak == 2 and lanes.running == 0


def test_each_lane_gets_its_share_of_the_cores_without_touching_other_threads() -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    seen: list[int] = []

    def call(lanes: ComputeLanes) -> None:
        with lanes.lane():
            seen.append(torch.get_num_threads())

    for n_lanes, expected in ((2, 2), (4, 1), (8, 1)):
        t = threading.Thread(target=call, args=(ComputeLanes(n_lanes, cores=4),))
        t.start()
        t.join(5)
        assert seen[-1] == expected
    assert torch.get_num_threads() == before  # the calling threads' setting, not this one's


def test_loading_a_model_freezes_the_long_lived_objects(tmp_path: Path) -> None:
    folder = tmp_path / "lexicon"
    LexiconExtractor.train(brat.read(SAMPLE_DIR)).save(folder)
    gc.unfreeze()
    predictor = Predictor()
    predictor.load(folder)
    try:
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def _hold(lanes: ComputeLanes, client: str, order: list[str], release: threading.Event) -> threading.Thread:
    def call() -> None:
        with lanes.lane(client):
            order.append(client)
            release.wait(5)

    t = threading.Thread(target=call)
    t.start()
    return t


def test_a_freed_lane_goes_to_the_client_holding_the_fewest() -> None:
    lanes = ComputeLanes(2, cores=2)
    order: list[str] = []
    release_one, release_other = threading.Event(), threading.Event()
    first = [_hold(lanes, "a", order, release_one), _hold(lanes, "a", order, release_other)]
    _wait_until(lambda: lanes.held == {"a": 2})
    again = threading.Event()
    queued_a = _hold(lanes, "a", order, again)  # waits longest
    _wait_until(lambda: len(lanes._waiting) == 1)
    queued_b = _hold(lanes, "b", order, again)
    _wait_until(lambda: len(lanes._waiting) == 2)
    release_one.set()  # one lane frees: the newcomer holding none gets it, not client a's third call
    _wait_until(lambda: len(order) == 3)
    assert order[2] == "b" and lanes.held == {"a": 1, "b": 1} and len(lanes._waiting) == 1
    release_other.set()
    again.set()
    for t in (*first, queued_a, queued_b):
        t.join(5)
    assert lanes.running == 0 and not lanes.held


def test_the_per_client_cap_keeps_a_lane_for_others_and_waiting_has_a_deadline() -> None:
    from recommender.errors import OverloadError

    lanes = ComputeLanes(2, cores=2, per_client=1)
    order: list[str] = []
    release = threading.Event()
    holder = _hold(lanes, "a", order, release)
    _wait_until(lambda: lanes.held == {"a": 1})
    started = time.monotonic()
    with pytest.raises(OverloadError, match=r"within \[0\] s"), lanes.lane("a", timeout=0.05):
        pass  # a lane is free, but not for client a
    assert time.monotonic() - started < 2
    with lanes.lane("b", timeout=0.05):  # another client gets it at once
        assert lanes.held == {"a": 1, "b": 1}
    release.set()
    holder.join(5)
    assert lanes.running == 0 and not lanes._waiting


def test_wait_idle_returns_when_the_last_call_ends_or_at_its_timeout() -> None:
    lanes = ComputeLanes(1, cores=1)
    assert lanes.wait_idle(0.0), "idle: at once"
    order: list[str] = []
    release = threading.Event()
    holder = _hold(lanes, "a", order, release)
    _wait_until(lambda: lanes.running == 1)
    started = time.monotonic()
    assert not lanes.wait_idle(0.1), "a call runs: timed out"
    assert time.monotonic() - started >= 0.1
    waiter_done: list[bool] = []
    waiter = threading.Thread(target=lambda: waiter_done.append(lanes.wait_idle(10.0)))
    waiter.start()
    time.sleep(0.1)
    assert not waiter_done, "still waiting while the call runs"
    release.set()
    waiter.join(5)
    holder.join(5)
    assert waiter_done == [True]
