"""Dask clusters for the tiled engine: local worker processes, a running scheduler, or SLURM.

>>> with get_client(workers=2) as client:  # doctest: +SKIP
...     print(dashboard_link(client))
...     apply_tiled("model", "lr.zarr", "sr.zarr", client=client)

GPUs are Dask *resources*: workers started with ``--resources GPU=1`` (the ``gpu_workers`` local
ones, or SLURM jobs whose YAML has ``worker-extra-args: ["--resources", "GPU=1"]``) run the tasks
of methods that ask for ``{"GPU": 1}``; :func:`task_resources` decides, per run, where they go.
Nothing here writes the user's Dask configuration files.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import dask.config
from distributed import Client, Nanny, Scheduler, SpecCluster
from distributed.worker_memory import parse_memory_limit

__all__ = ["CLUSTERS", "GPU_MODES", "dashboard_link", "get_client", "task_resources"]

#: Values of ``get_client(cluster=...)``.
CLUSTERS = ("local", "slurm")
#: Values of ``gpu`` in :func:`task_resources` and :func:`pairsr.tiles.apply_tiled`.
GPU_MODES = ("auto", "require")
#: The resource a GPU worker carries.
GPU = {"GPU": 1}

logger = logging.getLogger(__name__)


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
    """Yield a ``distributed.Client``; close what was started here on exit.

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
        ``worker-extra-args: ["--resources", "GPU=1"]``).
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
            slurm = stack.enter_context(
                SLURMCluster(**{k: v for k, v in job.items() if v is not None}))
            slurm.scale(jobs=workers or 1)
            client = stack.enter_context(Client(slurm))
        yield client


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
