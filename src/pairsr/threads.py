"""Thread settings of the execution policy: process-wide in Dask workers, scoped in pairsr's pools.

A worker of ``nthreads`` threads runs ``nthreads`` tasks at once, each on :data:`TASK_THREADS`
(one) thread for BLAS, OpenMP and torch's intra-op pool: :func:`set_process_threads`, which
:class:`pairsr.cluster.ThreadPolicy` calls once per worker process, and :func:`policy_environ`,
the variables the nanny starts the process with. Outside a worker, pairsr's functions take
``threads`` (default: the CPUs the process may use) and run that many threads of their own
(:func:`pairsr.patches.ordered_map`); while such a pool of more than one thread runs, BLAS runs
one thread per call (:func:`one_thread_per_worker`), so that a pool of ``threads``
threads uses ``threads`` cores, not ``threads ×`` BLAS's default. This is scikit-learn's idiom
for its own parallel loops; like it, the limit holds for the whole process while the pool runs
and is restored after.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

__all__ = ["TASK_THREADS", "THREAD_VARIABLES", "one_thread_per_worker", "policy_environ",
           "set_process_threads"]

#: Threads each task of a worker gets (BLAS, OpenMP, torch, pairsr's pools).
TASK_THREADS = 1
#: Variables that set the BLAS and OpenMP threads of a new process (torch reads OMP_NUM_THREADS).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


#: glibc's malloc serves allocations of at least this many bytes by ``mmap``, each freed at once:
#: the most its own dynamic threshold grows to (``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit).
#: Dask's nanny fixes ``MALLOC_TRIM_THRESHOLD_``, which stops that growth, so that every
#: temporary above 128 KiB would be mapped, faulted in and unmapped again (:func:`policy_environ`).
MMAP_THRESHOLD = 32 * 2**20


def policy_environ(threads: int = TASK_THREADS) -> dict[str, str]:
    """Environment variables of a new worker process: ``threads`` BLAS/OpenMP/torch threads, and
    glibc's mmap threshold at :data:`MMAP_THRESHOLD`. Without it, two tasks of one process
    fault pages in and unmap them concurrently, which the process's one page table serialises
    (``benchmarks/bench_policy.py`` compares the two layouts)."""
    return {**dict.fromkeys(THREAD_VARIABLES, str(threads)),
            "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}


def set_process_threads(threads: int) -> None:
    """Set this whole process to ``threads`` BLAS, OpenMP and torch intra-op threads, once.

    The libraries loaded now through threadpoolctl (kept, not a context) and torch, if imported,
    through ``torch.set_num_threads``; those loaded later through :func:`policy_environ`, which
    they read when they load (torch when it first runs). OpenMP's setting is per thread in
    libgomp: threads started before and not yet using OpenMP keep the process's variables,
    which is why the nanny sets them too.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    os.environ.update(policy_environ(threads))
    threadpool_limits(limits=threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


@contextmanager
def one_thread_per_worker(workers: int) -> Iterator[None]:
    """BLAS on one thread while a pool of ``workers`` > 1 threads of pairsr's runs.

    Each of the pool's threads calls BLAS on small matrices; on its default threads (the cores)
    ``workers`` of them oversubscribe the cores and spin against each other. With one worker
    (a Dask task, or ``threads=1``) the process's settings are left alone. OpenMP is not
    limited: libgomp's setting is per thread, and the pool's threads use none.
    """
    if workers <= 1:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
