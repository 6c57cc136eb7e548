"""core.fields.map_fields: the fields of a batch side by side in forked workers, as the stages' jobs run them."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from snakescope.core.fields import map_fields, workers_for


def _square_and_pid(value: int) -> tuple[int, int]:
    return value * value, os.getpid()


def test_results_come_back_in_order_from_other_processes():
    results = map_fields(_square_and_pid, list(range(12)), workers=2)
    assert [value for value, _ in results] == [i * i for i in range(12)]
    assert {pid for _, pid in results} - {os.getpid()}, "no field ran in a worker"


def test_one_worker_runs_here():
    results = map_fields(_square_and_pid, [1, 2, 3], workers=1)
    assert [value for value, _ in results] == [1, 4, 9]
    assert {pid for _, pid in results} == {os.getpid()}


def test_workers_never_exceed_fields_or_fall_below_one():
    assert workers_for(8, 3) == 3
    assert workers_for(None, 5) == 1
    assert workers_for(0, 5) == 1


def _die_on_three(value: int) -> int:
    if value == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    return value


def test_a_dead_worker_stops_the_job_with_a_message():
    with pytest.raises(RuntimeError, match=r"a worker process died .* of 6 field\(s\) not done"):
        map_fields(_die_on_three, list(range(6)), workers=2, label="postprocess")


def _dask_sum(value: int) -> float:
    import dask.array as da

    return float(da.full((64, 64), value, chunks=16).sum().compute())


def _timed_out(signum, frame):
    raise TimeoutError("map_fields hung")


def test_dask_after_the_parent_used_its_thread_pool():
    """The readers compute dask arrays; the parent's dask thread pool has no threads in a forked worker."""
    import dask.array as da

    assert float(da.ones((64, 64), chunks=16).sum().compute(scheduler="threads")) == 4096.0
    previous = signal.signal(signal.SIGALRM, _timed_out)
    signal.alarm(30)
    try:
        results = map_fields(_dask_sum, [1, 2, 3], workers=2)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert results == [4096.0 * v for v in (1, 2, 3)]
    assert np.isclose(sum(results), 4096.0 * 6)


def _sleep(item: tuple[str, int]) -> int:
    import time

    folder, value = item
    with open(os.path.join(folder, f"{os.getpid()}.pid"), "w"):
        pass
    time.sleep(600)
    return value


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a dead child not yet reaped holds nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_an_interrupted_job_leaves_no_worker_behind(tmp_path):
    import time

    previous = signal.signal(signal.SIGALRM, _timed_out)
    signal.alarm(3)
    try:
        with pytest.raises(TimeoutError):
            map_fields(_sleep, [(str(tmp_path), v) for v in (1, 2, 3)], workers=2)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert len(workers) == 2, "the workers did not start"
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _running(pid)], "workers still running after the job was interrupted"


def test_outcomes_split_into_results_by_unit_and_failures_in_order():
    from snakescope.core.fields import by_unit

    units = [{"unit_id": "a"}, {"unit_id": "b"}, {"unit_id": "c"}]
    outcomes = [({"n": 1}, None), (None, {"unit_id": "b", "reason": "broken"}), ({"n": 3}, None)]
    results, failures = by_unit(units, outcomes)
    assert results == {"a": {"n": 1}, "c": {"n": 3}}
    assert failures == [{"unit_id": "b", "reason": "broken"}]
