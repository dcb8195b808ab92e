"""The one thread-pool helper: order, limits, stop, deadlines."""

from __future__ import annotations

import threading

from compose_env.concurrency import Workers


def test_every_item_is_worked_at_most_count_at_a_time() -> None:
    running, peak, done = [0], [0], []
    lock = threading.Lock()
    release = threading.Event()

    def work(item: int) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(5)
        with lock:
            running[0] -= 1
            done.append(item)

    workers = Workers(work, list(range(7)), 3, "test")
    release.set()
    assert workers.wait() is True
    assert sorted(done) == list(range(7)) and peak[0] <= 3


def test_items_start_in_the_given_order() -> None:
    started: list[int] = []
    Workers(started.append, [5, 3, 9], 1, "test").wait()
    assert started == [5, 3, 9]


def test_stop_drops_the_items_not_started_and_wait_returns_at_once() -> None:
    stop = threading.Event()
    started: list[int] = []
    gate = threading.Event()

    def work(item: int) -> None:
        started.append(item)
        stop.set()
        gate.wait(5)

    workers = Workers(work, [1, 2, 3], 1, "test", stop=stop)
    assert workers.wait() is False
    gate.set()
    assert workers.finish(5) is True
    assert started == [1]


def test_wait_gives_up_after_its_seconds_and_leaves_the_work_running() -> None:
    gate = threading.Event()
    workers = Workers(lambda item: gate.wait(5) and None, [1], 1, "test")
    assert workers.wait(0.05) is False
    gate.set()
    assert workers.finish(5) is True
