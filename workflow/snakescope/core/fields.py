"""The fields of a batch processed side by side on the cores a job is given (the rule's ``threads``).

Import, quality metrics, post-processing and the gallery work on one field at a time with single-threaded
numpy/scipy/scikit-image code, so a job given two cores would use one. :func:`map_fields` runs a stage's
per-field function in that many forked worker processes: each field is independent, the function and the
fields reach the workers through the fork (no pickling of closures), and only each field's result comes
back. One worker, or a system without ``fork``, runs the fields in this process, as before. Results come
back in the fields' order, so every output is the same whatever the number of workers.

A worker that dies (killed for memory, say) stops the job with one message naming the fields it left,
rather than leaving it waiting. The jobs ask for memory per worker (``core.costs.job_mem_mb``). These stages
make almost no BLAS calls, so the BLAS threads Snakemake allows a job (``OPENBLAS_NUM_THREADS`` = threads)
are not lowered per worker; the model runtime's threads are inference's and it does not fork.

A forked worker has only the thread that forked it: a thread pool the parent made before (dask's, which
the image readers use) is an object with no threads in the worker, and work given to it waits forever.
Each worker therefore sets dask to compute in its own thread, which is what one worker per core wants.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_TASK: tuple[Callable[[Any], Any], Sequence[Any]] | None = None  # what forked workers run, set before they fork


def _run(index: int) -> Any:
    function, items = _TASK  # type: ignore[misc]
    return function(items[index])


def _start_worker() -> None:
    """In a fresh worker: dask computes in this thread (the parent's thread pool did not survive the fork)."""
    if "dask" in sys.modules:
        import dask

        dask.config.set(scheduler="synchronous")


def workers_for(threads: int | None, fields: int) -> int:
    """How many workers a job of ``threads`` cores uses for ``fields`` fields (at least 1)."""
    return max(1, min(int(threads or 1), fields))


def map_fields(function: Callable[[Item], Result], items: Sequence[Item], *, workers: int,
               label: str = "fields") -> list[Result]:
    """``function(item)`` for every item, in order, in ``workers`` forked processes (here when 1).

    ``function`` must handle a field's own failure (the stages record it and go on); what it returns must pickle.
    """
    global _TASK
    items = list(items)
    workers = workers_for(workers, len(items))
    if workers == 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [function(item) for item in items]
    _TASK = (function, items)
    results: list[Any] = []
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_start_worker)
    try:
        for result in pool.map(_run, range(len(items))):
            results.append(result)
    except BrokenProcessPool:
        left = len(items) - len(results)
        raise RuntimeError(f"{label}: a worker process died (out of memory?) with {left} of {len(items)} field(s) "
                           f"not done; run with fewer threads (--set-threads) or more memory") from None
    except BaseException:
        # interrupted (Ctrl-C, a signal's exception): the workers stop with the job, none is left behind
        pool.shutdown(wait=False, cancel_futures=True)
        stray = set(multiprocessing.active_children()) - before
        for child in stray:
            child.kill()
        for child in stray:
            child.join(5)
        raise
    finally:
        pool.shutdown(wait=True)
        _TASK = None
    return results


def by_unit(units: Sequence[dict[str, Any]], outcomes: Sequence[tuple[Any, Any]]) -> tuple[dict[str, Any], list[Any]]:
    """Each unit's ``(result, failure)`` split into the results by ``unit_id`` and the failures, in the units' order."""
    results: dict[str, Any] = {}
    failures: list[Any] = []
    for unit, (result, failure) in zip(units, outcomes):
        if failure:
            failures.append(failure)
        else:
            results[unit["unit_id"]] = result
    return results, failures
