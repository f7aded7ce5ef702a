"""Deployment: the deploy/local scripts with a real scheduler and CPU / GPU-tagged workers,
``pairsr apply --scheduler`` on them (placement, outputs, live dashboard), ``pairsr batch`` on a
real SLURM (when .ci/slurm.sh started one), and the Docker files."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from distributed import Client, Event

from pairsr.io import convert, from_float32, read_image, to_float32, write_ome_zarr
from pairsr.lbnlm import LBNLM
from pairsr.methods import load_model, method_class, save_model
from pairsr.simulate import save_pair, simulate_pair
from pairsr.tiles import STATE

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent  # the environment's bin: pairsr, dask
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` if anything of it is left."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll ``condition()`` until it returns something truthy; return that or fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return value


@contextmanager
def started(command: list, log: Path | None = None, **options):
    """Run ``command`` in its own process group, output to ``log``; kill what is left on exit."""
    with open(log or os.devnull, "w") as output:
        proc = subprocess.Popen(command, env=ENV, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True, **options)
    try:
        yield proc
    finally:
        kill_group(proc.pid)


# ----------------------------------------------------------------------------- local cluster


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """deploy/local/start.sh: a scheduler, worker cpu-0 and GPU-tagged worker gpu-0 (one thread,
    1 GiB each) on free loopback ports; yields (run folder, client). On teardown stop.sh must
    stop every process it started; leftovers are killed either way."""
    run = tmp_path_factory.mktemp("dask-run")
    start = subprocess.run(
        [DEPLOY / "local/start.sh", "-d", run, "-p", "0", "-D", "0", "-c", "1", "-g", "1",
         "-t", "1", "-m", "1GiB", "-w", "60"],
        env=ENV, capture_output=True, text=True, timeout=120)
    pids = {p.stem: int(p.read_text()) for p in run.glob("*.pid")}
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        assert set(pids) == {"scheduler", "cpu-0", "gpu-0"}
        address = re.search(r"^scheduler: (tcp://\S+)", start.stdout, re.M)[1]
        with Client(address, timeout=30, set_as_default=False) as client:
            yield run, client
    finally:
        stop = subprocess.run([DEPLOY / "local/stop.sh", "-d", run, "-t", "20"], env=ENV,
                              capture_output=True, text=True, timeout=120)
        survivors = [name for name, pid in pids.items() if alive(pid)]
        for pid in pids.values():
            kill_group(pid)
    assert stop.returncode == 0 and not survivors, (survivors, stop.stdout, stop.stderr)
    assert sorted(stop.stdout.split("\n")[:-1]) == sorted(
        f"{name}: stopped (PID {pid})" for name, pid in pids.items())
    assert not list(run.glob("*.pid"))


@pytest.fixture(scope="module")
def pair():
    """A tiny simulated pair: LR (64, 80) uint8 and its ground truth on the SR grid."""
    return simulate_pair(lr_shape=(64, 80), seed=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory, pair):
    """Model folders fitted on the simulated (LR, ground truth): LB-NLM and EDSR (edsr-tiny,
    one short epoch)."""
    root = tmp_path_factory.mktemp("models")
    training = [(to_float32(pair.lr), pair.gt)]
    lbnlm = save_model(LBNLM.fit(training, n=5, k=4, K=2, L=200, sigma=0.05), root / "lbnlm")
    edsr = method_class("edsr").fit(training, preset="edsr-tiny", folder=root / "edsr",
                                    epochs=1, steps=2, patch=16, batch=4, progress=False)
    return {"lbnlm": lbnlm, "edsr": save_model(edsr, root / "edsr")}


@pytest.fixture(scope="module")
def lr_zarr(tmp_path_factory, pair):
    path = tmp_path_factory.mktemp("lr") / "lr.zarr"
    write_ome_zarr(path, pair.lr, chunks=16)
    return path


def test_status_shows_cpu_and_gpu_tagged_workers(local_cluster):
    run, client = local_cluster
    status = subprocess.run([DEPLOY / "local/status.sh", "-d", run], env=ENV,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert re.search(r"^scheduler +running", status.stdout, re.M)
    assert re.search(r"^  gpu-0 .*resources \{'GPU': 1\.0\}$", status.stdout, re.M)
    assert re.search(r"^  cpu-0 .*resources -$", status.stdout, re.M)
    workers = {w["name"]: (a, w) for a, w in client.scheduler_info()["workers"].items()}
    assert workers["gpu-0"][1]["resources"] == {"GPU": 1} and workers["cpu-0"][1]["resources"] == {}
    assert all(w["nthreads"] == 1 and w["memory_limit"] == 2**30 for _, w in workers.values())
    # The CPU worker sees no GPU; the GPU worker sees device 0 only.
    assert client.run(os.getenv, "CUDA_VISIBLE_DEVICES") == {workers["gpu-0"][0]: "0",
                                                            workers["cpu-0"][0]: ""}
    # A second start on the same run folder refuses.
    again = subprocess.run([DEPLOY / "local/start.sh", "-d", run, "-p", "0", "-D", "0"],
                           env=ENV, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "is in use" in again.stderr


def hold(client: Client):
    """Occupy every worker thread with a task that waits on an Event, so that tasks submitted
    meanwhile queue; return the function that lets them go."""
    event = Event(f"release-{uuid.uuid4().hex}", client=client)
    workers = client.scheduler_info()["workers"]
    holds = [client.submit(event.wait, 120, workers=[a], pure=False, key=f"hold-{w['name']}")
             for a, w in workers.items()]

    def busy() -> bool:
        executing = client.run(lambda dask_worker: len(dask_worker.state.executing))
        return all(executing[a] == w["nthreads"] for a, w in workers.items())

    wait_for(busy, 30, "the holding tasks to run")

    def release() -> None:
        event.set()
        client.gather(holds)

    return release


def tile_keys(client: Client) -> dict[str, set[str]]:
    """Per worker name, the keys of the tiles it executed, from its own transition log."""
    return dict(client.run(lambda dask_worker: (dask_worker.name, {
        e[0] for e in dask_worker.state.log
        if len(e) == 7 and e[1] == "executing" and e[3] == "memory"
        and str(e[0]).startswith("pairsr-tile")})).values())


@pytest.mark.parametrize("name", ["lbnlm", "edsr"])
def test_apply_on_a_running_scheduler(local_cluster, models, lr_zarr, pair, tmp_path, name):
    """``pairsr apply --scheduler``: the output equals the in-memory prediction, the network's
    tiles run on the GPU-tagged worker only (LB-NLM's on both), and the dashboard link pairsr
    prints answers while the run is going."""
    _, client = local_cluster
    before = tile_keys(client)
    out, log = tmp_path / "sr.zarr", tmp_path / "apply.log"
    command = [BIN / "pairsr", "apply", models[name], lr_zarr, "--out", out, "--tile", "16",
               "--dtype", "float32", "--scheduler", client.scheduler.address]
    release = hold(client)
    with started(command, log) as proc:
        try:
            link = wait_for(lambda: re.search(r"dashboard: (http\S+)", log.read_text()), 60,
                            "pairsr to print the dashboard link")[1]
            wait_for(lambda: client.run_on_scheduler(lambda dask_scheduler: any(
                str(k).startswith("pairsr-tile") for k in dask_scheduler.tasks)), 60,
                "pairsr's first tiles to reach the scheduler")
            with urllib.request.urlopen(link, timeout=30) as response:
                assert response.status == 200
            assert proc.poll() is None  # the run was going
        finally:
            release()
        assert proc.wait(timeout=120) == 0, log.read_text()

    expected = load_model(models[name]).predict(to_float32(pair.lr))
    result = zarr.open_array(out / "0", mode="r")[:]
    assert result.shape == (128, 160)
    assert np.abs(result - expected).max() <= 1e-4
    assert zarr.open_group(out, mode="r").attrs["pairsr"]["complete"]

    after = tile_keys(client)
    ran = {w: after[w] - before.get(w, set()) for w in after}
    assert sum(map(len, ran.values())) == 20  # 4 × 5 tiles of 16 LR px
    workers = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    recorded = {workers[t["worker"]] for t in
                json.loads((out / STATE / "log.json").read_text())["tasks"]}
    if name == "edsr":
        assert ran["cpu-0"] == set() and len(ran["gpu-0"]) == 20 and recorded == {"gpu-0"}
    else:
        assert ran["cpu-0"] and ran["gpu-0"] and recorded == {"cpu-0", "gpu-0"}


def test_batch_trains_networks_on_the_gpu_worker(local_cluster, tmp_path):
    """``pairsr batch --scheduler`` with a network: its model trains on the GPU-tagged worker
    (as one task), its tiles run there too, and the output is complete."""
    _, client = local_cluster
    save_pair(simulate_pair(lr_shape=(160, 200), seed=5), tmp_path / "pair")
    convert(tmp_path / "pair/lr.tif", tmp_path / "lr.zarr", chunk=64)
    (tmp_path / "day.toml").write_text(
        '[defaults]\nmethod = "edsr"\ntile = 64\n'
        'params = { preset = "edsr-tiny", epochs = 1, steps = 2, patch = 16, batch = 4, '
        'progress = false }\n'
        '[[pair]]\nname = "a"\nlr = "lr.zarr"\nhr = "pair/hr.tif"\nout = "a.zarr"\n')
    before = fit_keys(client)
    done = subprocess.run([BIN / "pairsr", "batch", tmp_path / "day.toml", "--scheduler",
                           client.scheduler.address], env=ENV, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    after = fit_keys(client)
    assert after.get("gpu-0", set()) - before.get("gpu-0", set()) == {"pairsr-fit-0-a"}
    assert after.get("cpu-0", set()) == before.get("cpu-0", set())
    assert json.loads((tmp_path / "a.zarr.model/model.json").read_text())["method"] == "edsr"
    assert zarr.open_group(tmp_path / "a.zarr", mode="r").attrs["pairsr"]["complete"]


def fit_keys(client: Client) -> dict[str, set[str]]:
    """Per worker name, the keys of the batch fits it executed (a fit that computes dask arrays
    may secede from its thread and finish as a long-running task)."""
    return dict(client.run(lambda dask_worker: (dask_worker.name, {
        e[0] for e in dask_worker.state.log
        if len(e) == 7 and e[1] in ("executing", "long-running") and e[3] == "memory"
        and str(e[0]).startswith("pairsr-fit")})).values())


# ----------------------------------------------------------------------------- SLURM


@pytest.mark.parametrize(("name", "directives", "worker"), [
    ("cpu", {"-J pairsr-cpu", "-p cpu", "--cpus-per-task=16", "--mem=64G", "-t 04:00:00"},
     "--nthreads 16 --memory-limit 64.00GiB"),
    ("gpu", {"-J pairsr-gpu", "-p gpu", "--cpus-per-task=8", "--mem=64G", "--gres=gpu:1"},
     "--nthreads 8 --memory-limit 64.00GiB"),
    ("ci", {"-J pairsr-ci", "--cpus-per-task=1", "--mem=2G", "-t 00:10:00"},
     "--nthreads 1 --memory-limit 2.00GiB"),
])
def test_jobqueue_configs_give_the_intended_job_scripts(name, directives, worker):
    """The job script dask-jobqueue writes from each YAML, as pairsr loads it (no SLURM needed):
    partition, CPUs, memory, GPU request; GPU jobs' workers carry the GPU resource."""
    import dask.config
    from dask_jobqueue import SLURMCluster

    from pairsr.cluster import _jobqueue_settings

    with dask.config.set(_jobqueue_settings(DEPLOY / f"slurm/{name}.yaml")):
        with SLURMCluster(scheduler_options={"dashboard_address": ":0"}) as cluster:
            script = cluster.job_script()
    found = {line.removeprefix("#SBATCH ") for line in script.splitlines()
             if line.startswith("#SBATCH ")}
    assert directives <= found
    assert any(d.startswith("-p ") for d in found) == (name != "ci")  # CI: default partition
    assert worker in script
    assert ("--resources GPU=1" in script) == ("--gres=gpu:1" in found) == (name == "gpu")


@functools.cache
def slurm_missing() -> str | None:
    """Why no SLURM job can run here, or None when sbatch exists and a node is free."""
    if shutil.which("sbatch") is None:
        return "SLURM's sbatch is not on PATH (CI starts a single-node SLURM with .ci/slurm.sh)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        if ping.returncode != 0 or " is UP" not in ping.stdout:
            said = (ping.stdout.strip() or ping.stderr.strip() or "nothing").splitlines()[0]
            return f"slurmctld is not answering (scontrol ping: {said}; see .ci/slurm.sh)"
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                               timeout=20).stdout.split()
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"slurmctld is not answering ({err})"
    if not {"idle", "mixed"} & set(nodes):
        return f"no SLURM node is idle or mixed (sinfo: {nodes})"
    return None


def test_batch_on_slurm(tmp_path):
    """deploy/slurm/pairsr-batch.sbatch runs ``pairsr batch --cluster slurm --jobqueue-config
    deploy/slurm/ci.yaml`` in a SLURM job: two simulated pairs are registered and fitted there,
    their tiles run on the worker of one job it submitted, and it cancels that job at the end."""
    if why := slurm_missing():
        pytest.skip(why)
    names = ("pair1", "pair2")
    for seed, name in enumerate(names, 1):
        save_pair(simulate_pair(lr_shape=(120, 160), seed=seed), tmp_path / name)
        convert(tmp_path / name / "lr.tif", tmp_path / name / "lr.zarr", chunk=32)
    (tmp_path / "day.toml").write_text(
        '[defaults]\nmethod = "lbnlm"\ntile = 64\n'
        "params = {n = 5, k = 4, K = 2, L = 200, sigma = 0.05}\n" + "".join(
            f'\n[[pair]]\nname = "{n}"\nlr = "{n}/lr.zarr"\nhr = "{n}/hr.tif"\n'
            f'out = "{n}/sr.zarr"\n' for n in names))

    # The batch job and the worker job take one CPU each (the wrapper's defaults are larger).
    submit = subprocess.run(
        ["sbatch", "--parsable", "--cpus-per-task=1", "--mem=2G", "--time=10",
         DEPLOY / "slurm/pairsr-batch.sbatch", "day.toml", DEPLOY / "slurm/ci.yaml"],
        cwd=tmp_path, env={**ENV, "PAIRSR": str(BIN / "pairsr"), "PAIRSR_WORKERS": "1"},
        capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    batch = submit.stdout.strip().split(";")[0]
    seen: dict[str, dict[str, set[str]]] = {"pairsr-batch": {}, "pairsr-ci": {}}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # until the batch job has left the queue
            queue = subprocess.run(["squeue", "--me", "--name", ",".join(seen), "-h", "-o",
                                    "%j %i %T"], capture_output=True, text=True, timeout=20)
            queue.check_returncode()
            rows = [line.split() for line in queue.stdout.splitlines()]
            for name, job, state in rows:
                seen[name].setdefault(job, set()).add(state)
            if batch not in {job for _, job, _ in rows}:
                break
            time.sleep(0.5)
    finally:
        jobs = [batch, *seen["pairsr-ci"]]
        left = subprocess.run(["squeue", "-h", "-o", "%i", "-t", "PD,R,CF", "-j", ",".join(jobs)],
                              capture_output=True, text=True, timeout=20).stdout.split()
        if left:
            subprocess.run(["scancel", *left], timeout=20)
    assert not left, f"jobs {left} still queued after the batch (or it timed out)"
    info = subprocess.run(["scontrol", "-o", "show", "job", batch], capture_output=True,
                          text=True, timeout=20).stdout
    log = (tmp_path / f"pairsr-batch-{batch}.out").read_text()
    assert "JobState=COMPLETED" in info and "ExitCode=0:0" in info, info + log
    assert "RUNNING" in seen["pairsr-batch"][batch]
    (worker,) = seen["pairsr-ci"]  # one worker job served the whole manifest
    assert "RUNNING" in seen["pairsr-ci"][worker]
    # Every tile ran on the worker that the worker job started (its output names it).
    (address,) = re.findall(r"Start worker at:\s+(tcp://\S+)",
                            (tmp_path / f"slurm-{worker}.out").read_text())
    for name in names:
        out = tmp_path / name / "sr.zarr"
        tasks = json.loads((out / STATE / "log.json").read_text())["tasks"]
        assert len(tasks) == 6 and {t["worker"] for t in tasks} == {address}  # 2 × 3 tiles
        lr = read_image(tmp_path / name / "lr.zarr").values
        model = load_model(tmp_path / name / "sr.zarr.model")
        expected = from_float32(model.predict(to_float32(lr)), lr.dtype)
        result = zarr.open_array(out / "0", mode="r")[:]
        assert np.abs(result.astype(int) - expected).max() <= 1
        assert zarr.open_group(out, mode="r").attrs["pairsr"]["complete"]


def test_cpu_and_gpu_worker_jobs_join_a_scheduler_outside_slurm(tmp_path):
    """deploy/slurm/dask-worker.sbatch: a CPU and a GPU-tagged worker job join one scheduler
    that runs outside SLURM (as on a login node), with the job's name, CPUs and memory."""
    if why := slurm_missing():
        pytest.skip(why)
    scheduler_file = tmp_path / "scheduler.json"
    jobs = []
    with started([BIN / "dask", "scheduler", "--port", "0", "--dashboard-address", ":0",
                  "--scheduler-file", scheduler_file], tmp_path / "scheduler.log", cwd=tmp_path):
        try:
            wait_for(scheduler_file.exists, 60, "the scheduler file")
            for extra in ([], ["--resources", "GPU=1"]):
                submit = subprocess.run(
                    ["sbatch", "--parsable", "--cpus-per-task=1", "--mem=1G", "--time=5",
                     DEPLOY / "slurm/dask-worker.sbatch", scheduler_file, *extra],
                    cwd=tmp_path, env={**ENV, "DASK": str(BIN / "dask")}, capture_output=True,
                    text=True, timeout=60)
                assert submit.returncode == 0, submit.stderr
                jobs.append(submit.stdout.strip().split(";")[0])
            with Client(scheduler_file=str(scheduler_file), timeout=30,
                        set_as_default=False) as client:
                client.wait_for_workers(2, timeout=120)
                workers = client.scheduler_info()["workers"]
                in_job = client.run(os.getenv, "SLURM_JOB_ID")
        finally:
            if jobs:
                subprocess.run(["scancel", *jobs], timeout=20)
    cpu, gpu = (f"pairsr-worker-{job}" for job in jobs)
    assert {w["name"]: w["resources"] for w in workers.values()} == {cpu: {}, gpu: {"GPU": 1}}
    assert all(w["nthreads"] == 1 and w["memory_limit"] == 2**30 for w in workers.values())
    assert {workers[a]["name"]: job for a, job in in_job.items()} == {cpu: jobs[0], gpu: jobs[1]}


# ----------------------------------------------------------------------------- Docker
# No Docker engine runs here: the compose file is checked as data, its dask commands with the
# installed dask CLI's own parser, its health check against a real scheduler.

COMPOSE = DEPLOY / "docker/docker-compose.yml"


def defaults(value: str) -> str:
    """Compose's ``${NAME:-default}`` interpolation, with every variable unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(defaults(COMPOSE.read_text()))


def test_compose_services_share_one_image_data_path_and_scheduler(compose):
    from distributed.cli import dask_scheduler, dask_worker

    services = compose["services"]
    assert set(services) == {"scheduler", "worker-cpu", "worker-gpu", "pairsr"}
    for service in services.values():
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).is_file()
        # pairsr gives workers absolute paths: the data must be at the same path everywhere.
        assert [v.rsplit(":", 1)[1] for v in service["volumes"]] == ["/data"]
    scheduler = services["scheduler"]
    assert scheduler["command"][:2] == ["dask", "scheduler"]
    options = dask_scheduler.main.make_context("dask scheduler", scheduler["command"][2:]).params
    assert scheduler["ports"] == [f"{options['port']}:{options['port']}", "8787:8787"]
    assert options["dashboard_address"] == ":8787"
    workers = {}
    for name in ("worker-cpu", "worker-gpu"):
        command = services[name]["command"]
        assert command[:2] == ["dask", "worker"]
        workers[name] = dask_worker.main.make_context("dask worker", command[2:]).params
        assert workers[name]["scheduler"] == f"tcp://scheduler:{options['port']}"
        assert services[name]["depends_on"] == {"scheduler": {"condition": "service_healthy"}}
    assert workers["worker-gpu"]["resources"] == "GPU=1"
    assert workers["worker-cpu"]["resources"] is None
    assert services["worker-cpu"]["environment"] == {"CUDA_VISIBLE_DEVICES": ""}
    assert "deploy" not in services["worker-cpu"]
    gpu = services["worker-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    assert gpu["image"] != scheduler["image"] == "pairsr:cpu"
    assert services["pairsr"]["entrypoint"] == ["pairsr"]


def test_compose_health_check_probes_a_real_scheduler(compose, local_cluster):
    _, client = local_cluster
    test = compose["services"]["scheduler"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "localhost:8787" in test[3]
    dashboard = re.match(r"http://([^/]+)/", client.dashboard_link)[1]
    probe = subprocess.run([sys.executable, "-c", test[3].replace("localhost:8787", dashboard)],
                           capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0, probe.stderr
    with socket.socket() as sock:  # a port nothing listens on: the probe fails
        sock.bind(("127.0.0.1", 0))
        free = f"127.0.0.1:{sock.getsockname()[1]}"
    closed = subprocess.run([sys.executable, "-c", test[3].replace("localhost:8787", free)],
                            capture_output=True, text=True, timeout=30)
    assert closed.returncode != 0


def test_dockerfile_pins_the_tested_torch_and_copies_what_pip_needs():
    dockerfile = (DEPLOY / "docker/Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.M))
    makefile = (ROOT / "Makefile").read_text()
    assert args["TORCH_VARIANT"] == "cpu"
    assert f"torch=={args['TORCH_VERSION']}+cpu" in makefile  # the version the venv is set up with
    assert 'whl/${TORCH_VARIANT}' in dockerfile and 'pip install ".[hpc]"' in dockerfile
    ignore = (DEPLOY / "docker/Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") - 1].startswith("#")  # everything is excluded first …
    for line in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for source in line.split():  # … except what is copied, which exists
            assert (ROOT / source).exists() and f"!{source}" in ignore


def test_every_worker_launcher_sets_the_policy_allocator_threshold():
    """Worker processes started outside pairsr.cluster (compose, the local scripts, SLURM jobs)
    get the policy's mmap threshold before they start, as the local clusters do."""
    from pairsr.threads import MMAP_THRESHOLD, policy_environ

    assert policy_environ()["MALLOC_MMAP_THRESHOLD_"] == str(MMAP_THRESHOLD)
    for launcher in ("docker/Dockerfile", "local/start.sh", "slurm/dask-worker.sbatch"):
        assert f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}" in (DEPLOY / launcher).read_text()
