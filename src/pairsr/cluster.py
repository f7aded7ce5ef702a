"""Dask clusters for the tiled engine: local worker processes, a running scheduler, or SLURM.

>>> with get_client(workers=2) as client:  # doctest: +SKIP
...     print(dashboard_link(client))
...     apply_tiled("model", "lr.zarr", "sr.zarr", client=client)

GPUs are Dask *resources*: workers started with ``--resources GPU=1`` (the ``gpu_workers`` local
ones, or SLURM jobs whose YAML has ``worker-extra-args: ["--resources", "GPU=1"]``) run the tasks
of methods that ask for ``{"GPU": 1}``; :func:`task_resources` decides, per run, where they go.
Nothing here writes the user's Dask configuration files.

Execution policy (:mod:`pairsr.threads`): a worker of ``nthreads`` threads runs ``nthreads``
tasks at once, each on :data:`~pairsr.threads.TASK_THREADS` (one) thread for BLAS, OpenMP, torch's
intra-op pool and pairsr's own pools (the ``threads`` / ``workers`` arguments, which
:func:`pairsr.tiles.apply_tiled` passes to every task): tasks × threads = the worker's threads, one
per core, as Dask assumes. It is set once per worker process, never per task: the nanny starts a
new worker process with the variables of :func:`~pairsr.threads.policy_environ`
(``OMP_NUM_THREADS`` …), and :class:`ThreadPolicy`, a worker plugin that :func:`get_client`
installs on every cluster it starts or connects to (existing workers and those joining later),
sets the same process-wide (:func:`~pairsr.threads.set_process_threads`). Starting a cluster
leaves the client process's own settings alone.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import dask.config
from distributed import (
    Client,
    Nanny,
    Scheduler,
    SpecCluster,
    WorkerPlugin,
    as_completed,
    get_worker,
)
from distributed.worker_memory import parse_memory_limit

from pairsr.threads import TASK_THREADS, policy_environ, set_process_threads

__all__ = ["CLUSTERS", "GPU_MODES", "TASK_THREADS", "ThreadPolicy", "dashboard_link", "get_client",
           "policy_environ", "run_batched", "set_process_threads", "task_resources"]

#: Values of ``get_client(cluster=...)``.
CLUSTERS = ("local", "slurm")
#: Values of ``gpu`` in :func:`task_resources` and :func:`pairsr.tiles.apply_tiled`.
GPU_MODES = ("auto", "require")
#: The resource a GPU worker carries.
GPU = {"GPU": 1}

logger = logging.getLogger(__name__)


class ThreadPolicy(WorkerPlugin):
    """The execution policy as a worker plugin: :func:`set_process_threads` with ``threads``
    (default :data:`TASK_THREADS`) when it is set up on a worker process."""

    name = "pairsr-thread-policy"

    def __init__(self, threads: int = TASK_THREADS):
        self.threads = threads

    def setup(self, worker) -> None:
        set_process_threads(self.threads)


def _local_cluster(workers: int, threads: int, memory_limit: str, gpu_workers: int) -> SpecCluster:
    """``workers`` worker processes on this machine; the first ``gpu_workers`` carry :data:`GPU`
    and see CUDA device ``i`` only."""
    memory = parse_memory_limit(memory_limit, 1, total_cores=workers, logger=logger)

    def worker(i: int) -> dict:
        options = {"nthreads": threads, "memory_limit": memory, "host": "127.0.0.1",
                   "silence_logs": logging.WARNING}
        if i < gpu_workers:
            options.update(resources=dict(GPU), env={"CUDA_VISIBLE_DEVICES": str(i)})
        return {"cls": Nanny, "options": options}

    scheduler = {"cls": Scheduler,
                 "options": {"host": "127.0.0.1", "dashboard": True, "dashboard_address": ":8787"}}
    # The policy's variables before each worker process starts (its allocator reads them then;
    # a Nanny's ``env`` is set only after), next to Dask's own.
    spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", default={}),
             **policy_environ()}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn}):
        return SpecCluster(workers={i: worker(i) for i in range(workers)}, scheduler=scheduler,
                           silence_logs=logging.WARNING, name="pairsr")


def _jobqueue_settings(path: Path) -> dict:
    """Dask config ``jobqueue.slurm`` updated by the ``jobqueue: slurm:`` section of ``path``."""
    import dask_jobqueue  # noqa: F401  (registers the jobqueue defaults)
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the jobqueue config ({err})") from err
    slurm = loaded.get("jobqueue", {}).get("slurm") if isinstance(loaded, dict) else None
    if not isinstance(slurm, dict):
        raise ValueError(f"{path}: expected a dask-jobqueue YAML with a 'jobqueue: slurm:' section")
    return {"jobqueue.slurm": dask.config.update(copy.deepcopy(dask.config.get("jobqueue.slurm")),
                                                 slurm)}


@contextmanager
def get_client(
    *,
    scheduler: str | None = None,
    cluster: str = "local",
    workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    jobqueue_config: str | Path | None = None,
    gpu_workers: int = 0,
) -> Iterator[Client]:
    """Yield a ``distributed.Client`` with the execution policy (:class:`ThreadPolicy`) installed
    on its workers; close what was started here on exit.

    Parameters
    ----------
    scheduler
        Address of a running scheduler (``tcp://host:8786``): only connect; the other
        arguments must be left at their defaults.
    cluster
        ``"local"``: ``workers`` worker processes (default: one per ``threads_per_worker``
        cores) of ``threads_per_worker`` threads (default 1) and ``memory_limit`` each
        (default ``"auto"``, an equal share of the RAM; or e.g. ``"4GiB"``); the first
        ``gpu_workers`` carry the resource ``GPU=1`` and see CUDA device ``i``.
        ``"slurm"``: a ``dask_jobqueue.SLURMCluster`` of ``workers`` jobs (default 1), set up
        from the Dask config ``jobqueue.slurm`` updated, while the client lives, by the
        ``jobqueue: slurm:`` section of the YAML file ``jobqueue_config``. ``threads_per_worker``
        and ``memory_limit``, when given, set each job's ``cores`` and ``memory``; GPUs are
        asked for in the YAML (``job-extra-directives: ["--gres=gpu:1"]``,
        ``worker-extra-args: ["--resources", "GPU=1"]``). The job script exports
        :func:`policy_environ` after the YAML's ``job-script-prologue``.
    """
    if cluster not in CLUSTERS:
        raise ValueError(f"cluster must be one of {CLUSTERS}, got {cluster!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise ValueError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
    with ExitStack() as stack:
        if scheduler is not None:
            given = (cluster != "local", workers, threads_per_worker, memory_limit,
                     jobqueue_config, gpu_workers)
            if any(given):
                raise ValueError("with scheduler=ADDRESS the cluster is already running: "
                                 "leave cluster, workers, threads, memory and GPU options unset")
            client = stack.enter_context(Client(scheduler))
        elif cluster == "local":
            threads = threads_per_worker or 1
            if workers is None:
                workers = max(1, (os.cpu_count() or 1) // threads, gpu_workers)
            if not 0 <= gpu_workers <= workers:
                raise ValueError(f"gpu_workers must be between 0 and workers={workers}, "
                                 f"got {gpu_workers}")
            local = stack.enter_context(
                _local_cluster(workers, threads, memory_limit or "auto", gpu_workers))
            client = stack.enter_context(Client(local))
        else:
            if gpu_workers:
                raise ValueError("gpu_workers is for local clusters; for SLURM ask for GPUs in "
                                 "the jobqueue YAML (job-extra-directives: ['--gres=gpu:1'], "
                                 "worker-extra-args: ['--resources', 'GPU=1'])")
            if shutil.which("sbatch") is None:
                raise RuntimeError("cluster='slurm' needs SLURM's sbatch on PATH; it is not")
            from dask_jobqueue import SLURMCluster

            if jobqueue_config is not None:
                stack.enter_context(dask.config.set(_jobqueue_settings(jobqueue_config)))
            job = {"cores": threads_per_worker, "memory": memory_limit}
            prologue = [*(dask.config.get("jobqueue.slurm.job-script-prologue") or []),
                        *(f"export {k}={v}" for k, v in policy_environ().items())]
            slurm = stack.enter_context(
                SLURMCluster(**{k: v for k, v in job.items() if v is not None},
                             job_script_prologue=prologue))
            slurm.scale(jobs=workers or 1)
            client = stack.enter_context(Client(slurm))
        client.register_plugin(ThreadPolicy())
        yield client


def _on_worker(fn: Callable[..., dict], args: tuple) -> dict:
    return fn(*args, worker=get_worker().address)


def run_batched(client: Client, fn: Callable[..., dict], calls: Sequence[tuple], key: str,
                resources: dict | None = None) -> Iterator[dict]:
    """``fn(*args, worker=ADDRESS)`` for each ``args`` of ``calls`` on ``client``'s workers (those
    offering ``resources``), in batches of about twice its threads; yield the results as they
    finish. Tasks still pending when the caller stops are cancelled."""
    batch = max(2, 2 * sum(client.nthreads().values()))
    pending = iter(calls)

    def submit(count: int) -> list:
        part = list(itertools.islice(pending, count))
        return client.map(_on_worker, [fn] * len(part), part, key=key, pure=False,
                          resources=resources)

    running = as_completed(submit(batch))
    try:
        for future in running:
            yield future.result()
            if running.count() <= batch // 2:
                running.update(submit(batch - running.count()))
    finally:
        client.cancel(list(running.futures))


def dashboard_link(client: Client) -> str | None:
    """The URL of the scheduler's dashboard, or None when it has none (e.g. bokeh missing)."""
    try:
        return client.dashboard_link
    except KeyError:
        return None


def task_resources(client: Client | None, resources: dict | None, gpu: str = "auto") -> dict | None:
    """The resources to submit a method's tasks with (None: any worker).

    ``resources`` is what the method asks for (``method.resources``, e.g. ``{"GPU": 1}``).
    With a client they are returned when a worker offers them; otherwise ``gpu="auto"`` runs the
    tasks on the other workers with a ``RuntimeWarning`` and ``gpu="require"`` raises. Without a
    client (tasks in this process) ``gpu="require"`` needs torch to see a CUDA device.
    """
    if gpu not in GPU_MODES:
        raise ValueError(f"gpu must be one of {GPU_MODES}, got {gpu!r}")
    if not resources:
        return None
    if client is None:
        if gpu == "require":
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(f"gpu='require' but this process sees no CUDA device "
                                   f"for a method that asks for {resources}")
        return None
    client.wait_for_workers(1)
    offered = [w.get("resources", {}) for w in client.scheduler_info()["workers"].values()]
    if any(all(r.get(k, 0) >= v for k, v in resources.items()) for r in offered):
        return resources
    message = (f"the method asks for {resources} but no worker of {client.scheduler.address} "
               "offers it (start workers with --resources GPU=1, or get_client(gpu_workers=N))")
    if gpu == "require":
        raise RuntimeError(message)
    warnings.warn(f"{message}; running it on CPU workers", RuntimeWarning, stacklevel=2)
    return None
