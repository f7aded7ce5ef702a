"""Dask clusters: local worker processes with GPU resources, a running scheduler, SLURM."""

import json
import os
import signal
import stat
import warnings
from dataclasses import dataclass
from typing import ClassVar

import dask.config
import numpy as np
import pytest
import yaml
import zarr

from pairsr.cluster import dashboard_link, get_client, task_resources
from pairsr.io import ImageError, from_float32, to_float32, write_image, write_ome_zarr
from pairsr.methods import Bicubic, register_method, save_model
from pairsr.tiles import STATE, apply_tiled


@register_method
@dataclass
class GPUBicubic(Bicubic):
    """Bicubic that asks for a GPU worker, as the networks do."""

    name: ClassVar[str] = "test-gpu-bicubic"
    resources: ClassVar[dict] = {"GPU": 1}


@pytest.fixture(scope="module")
def client():
    """Two worker processes of one thread and 1 GiB; the first carries GPU=1."""
    with get_client(workers=2, threads_per_worker=1, memory_limit="1GiB", gpu_workers=1) as c:
        c.upload_file(__file__)  # workers import this module: GPUBicubic is registered there
        yield c


@pytest.fixture(scope="module")
def lr(tmp_path_factory):
    values = from_float32(np.random.default_rng(0).random((40, 52)), np.uint8)
    path = tmp_path_factory.mktemp("lr") / "lr.zarr"
    write_ome_zarr(path, values, chunks=16)
    return path, values


def test_local_cluster_of_worker_processes(client):
    workers = client.scheduler_info()["workers"]
    assert len(workers) == 2
    assert all(w["nthreads"] == 1 and w["memory_limit"] == 2**30 for w in workers.values())
    pids = client.run(os.getpid)
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    gpu = [a for a, w in workers.items() if w["resources"] == {"GPU": 1}]
    assert len(gpu) == 1 and [w["resources"] for a, w in workers.items() if a not in gpu] == [{}]
    assert client.run(os.getenv, "CUDA_VISIBLE_DEVICES", workers=gpu) == {gpu[0]: "0"}
    assert dashboard_link(client).startswith("http")


def test_gpu_methods_run_on_gpu_workers_only(client, lr, tmp_path):
    path, values = lr
    model = save_model(GPUBicubic(), tmp_path / "model")
    out = apply_tiled(model, path, tmp_path / "sr.zarr", tile=8, client=client, gpu="require",
                      progress=False)
    tasks = json.loads((out / STATE / "log.json").read_text())["tasks"]
    gpu = [a for a, w in client.scheduler_info()["workers"].items() if w["resources"]]
    assert len(tasks) == 35 and {t["worker"] for t in tasks} == set(gpu)
    expected = from_float32(GPUBicubic().predict(to_float32(values)), np.uint8)
    assert np.abs(zarr.open_array(out / "0")[:].astype(int) - expected).max() <= 1
    # Plain methods use every worker.
    out = apply_tiled("bicubic", path, tmp_path / "plain.zarr", tile=8, client=client,
                      progress=False)
    tasks = json.loads((out / STATE / "log.json").read_text())["tasks"]
    assert len({t["worker"] for t in tasks}) == 2


def test_missing_resources_fall_back_to_cpu_or_fail_as_asked(client):
    assert task_resources(client, {"GPU": 1}, "require") == {"GPU": 1}
    assert task_resources(client, None, "require") is None
    with pytest.raises(RuntimeError, match="no worker"):
        task_resources(client, {"GPU": 2}, "require")
    with pytest.warns(RuntimeWarning, match="running it on CPU workers"):
        assert task_resources(client, {"GPU": 2}, "auto") is None
    with pytest.raises(ValueError, match="gpu must be one of"):
        task_resources(client, {"GPU": 1}, "always")


def test_gpu_methods_in_process(lr, tmp_path):
    """Without a client a GPU method just runs here; 'require' insists on a CUDA device."""
    path, _ = lr
    model = save_model(GPUBicubic(), tmp_path / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_tiled(model, path, tmp_path / "sr.zarr", tile=16, progress=False, pixel_size=2.0)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            apply_tiled(model, path, tmp_path / "sr2.zarr", gpu="require", progress=False)


def test_connect_to_a_running_scheduler(client, lr, tmp_path):
    address = client.scheduler.address
    with get_client(scheduler=address) as other:
        assert other.submit(sum, [1, 2]).result() == 3
    assert client.submit(sum, [3, 4]).result() == 7  # leaving the context closed nothing else
    with pytest.raises(ValueError, match="already running"):
        with get_client(scheduler=address, workers=2):
            pass
    tif = tmp_path / "lr.tif"
    write_image(tif, lr[1])
    with pytest.raises(ImageError, match="zarr inputs only"):
        apply_tiled("bicubic", tif, tmp_path / "sr.zarr", client=client)


def test_bad_cluster_arguments():
    with pytest.raises(ValueError, match="cluster must be one of"):
        with get_client(cluster="pbs"):
            pass
    with pytest.raises(ValueError, match="gpu_workers must be between"):
        with get_client(workers=1, gpu_workers=2):
            pass


FAKE_SBATCH = """#!/bin/sh
# sbatch stand-in: keep the job script, run it detached in its own process group, print the id.
cp "$1" "{dir}/job.sh"
setsid bash "{dir}/job.sh" > "{dir}/job.log" 2>&1 < /dev/null &
echo $! >> "{dir}/submitted"
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = """#!/bin/sh
kill -TERM -- "-$1"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` / ``scancel`` stand-ins on PATH; yields their folder; kills leftover jobs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text.format(dir=bin_dir))
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield bin_dir
    submitted = bin_dir / "submitted"
    for pid in submitted.read_text().split() if submitted.exists() else []:
        try:
            os.killpg(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_slurm_cluster_from_a_jobqueue_yaml(fake_slurm, tmp_path):
    """A SLURMCluster set up from the YAML submits a job whose worker joins with the GPU
    resource the YAML asks for; the Dask config is as before afterwards."""
    config = tmp_path / "jobqueue.yaml"
    slurm = {"cores": 1, "memory": "1GiB", "walltime": "00:10:00",
             "job-extra-directives": ["--gres=gpu:1"],
             "worker-extra-args": ["--resources", "GPU=1"]}
    config.write_text(yaml.safe_dump({"jobqueue": {"slurm": slurm}}))
    with get_client(cluster="slurm", workers=1, jobqueue_config=config) as client:
        assert dask.config.get("jobqueue.slurm.job-extra-directives") == ["--gres=gpu:1"]
        client.wait_for_workers(1, timeout=60)
        (worker,) = client.scheduler_info()["workers"].values()
        assert worker["resources"] == {"GPU": 1} and worker["nthreads"] == 1
        assert task_resources(client, {"GPU": 1}, "require") == {"GPU": 1}
    script = (fake_slurm / "job.sh").read_text()
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -t 00:10:00" in script
    assert "export OMP_NUM_THREADS=1" in script  # the execution policy, for the nanny's env
    assert dask.config.get("jobqueue.slurm.job-extra-directives") == []
    with pytest.raises(ValueError, match="'jobqueue: slurm:' section"):
        (tmp_path / "bad.yaml").write_text("slurm: {cores: 1}")
        with get_client(cluster="slurm", jobqueue_config=tmp_path / "bad.yaml"):
            pass


def test_slurm_needs_sbatch(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="sbatch"):
        with get_client(cluster="slurm"):
            pass
    with pytest.raises(ValueError, match="jobqueue YAML"):
        with get_client(cluster="slurm", gpu_workers=1):
            pass
