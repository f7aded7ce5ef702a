"""The execution policy (pairsr.cluster): one BLAS/OpenMP/torch thread per task on a worker, set
once per worker process; and the module structure it relies on (no cycles, no Dask or
process-wide thread settings in library code)."""

import ast
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

import pairsr
from pairsr.cluster import TASK_THREADS, get_client, policy_environ
from pairsr.io import from_float32, write_ome_zarr
from pairsr.lbnlm import LBNLM
from pairsr.methods import method_class, register_method, save_model
from pairsr.networks import EDSR
from pairsr.tiles import STATE, apply_tiled

#: The package's source (not from ``__file__``: ``upload_file`` reloads this module from a copy
#: in the in-process scheduler's folder).
SRC = Path(pairsr.__file__).parent


def _probe(method) -> None:
    """Append, from inside a running ``predict``, the thread counts this task runs with."""
    import torch
    from threadpoolctl import threadpool_info

    record = {"pid": os.getpid(), "thread": threading.get_ident(), "method": method.name,
              "threads": method.threads, "torch": torch.get_num_threads(),
              "pools": {f"{p['internal_api']}:{p['filepath']}": p["num_threads"]
                        for p in threadpool_info()}}
    with open(method.params["probe"], "a") as log:
        log.write(json.dumps(record) + "\n")


@register_method
@dataclass
class ProbeLBNLM(LBNLM):
    """LB-NLM that records the thread counts it runs with, and when."""

    name: ClassVar[str] = "test-probe-lbnlm"

    def predict(self, lr):
        start = time.time()
        _probe(self)
        out = super().predict(lr)
        with open(self.params["probe"] + ".spans", "a") as log:
            log.write(json.dumps([os.getpid(), threading.get_ident(), start, time.time()]) + "\n")
        return out


@register_method
@dataclass
class ProbeEDSR(EDSR):
    """EDSR (asks for a GPU, so runs on CPU workers here) that records its thread counts."""

    name: ClassVar[str] = "test-probe-edsr"

    def predict(self, lr):
        _probe(self)
        return super().predict(lr)


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """A 32×48 uint8 LR zarr (6 tiles of 16²); plain and probing LB-NLM and edsr-tiny models."""
    root = tmp_path_factory.mktemp("policy")
    rng = np.random.default_rng(3)
    hr = ndi.gaussian_filter(rng.random((96, 96)), 1.2)
    hr = ((hr - hr.min()) / np.ptp(hr) * 0.8 + 0.1).astype(np.float32)
    lr = ndi.gaussian_filter(hr, 1.0).reshape(48, 2, 48, 2).mean((1, 3))
    lbnlm = LBNLM.fit([(lr, hr)], n=5, k=4, K=2, L=200, sigma=0.05)
    edsr = method_class("edsr").fit([(lr, hr)], preset="edsr-tiny", folder=root / "edsr",
                                    epochs=1, steps=2, patch=16, batch=4, progress=False)
    save_model(edsr, root / "edsr")
    log = str(root / "probe.jsonl")
    models = {
        "lbnlm": save_model(lbnlm, root / "lbnlm"),
        "edsr": root / "edsr",
        "probe-lbnlm": save_model(ProbeLBNLM(zoom=2, params={**lbnlm.params, "probe": log},
                                             library=lbnlm.library), root / "probe-lbnlm"),
        "probe-edsr": save_model(ProbeEDSR(zoom=2, params={**edsr.params, "probe": log},
                                           net=edsr.net), root / "probe-edsr"),
    }
    field = ndi.gaussian_filter(rng.random((32, 48)), 1.0)
    write_ome_zarr(root / "lr.zarr", from_float32((field - field.min()) / np.ptp(field),
                                                  np.uint8), chunks=16)
    return root, models, Path(log)


def _single_threaded(lr: Path, runs: dict[Path, Path]) -> None:
    """``apply_tiled`` of each model → output of ``runs`` in one fresh process on one CPU with
    one BLAS/OpenMP/torch thread."""
    code = ("import sys; from pairsr.tiles import apply_tiled\n"
            "for model, out in zip(sys.argv[2::2], sys.argv[3::2]):\n"
            "    apply_tiled(model, sys.argv[1], out, tile=16, out_dtype='float32', "
            "progress=False)")
    cpu = min(os.sched_getaffinity(0))
    subprocess.run([sys.executable, "-c", code, str(lr), *map(str, itertools.chain(*runs.items()))],
                   check=True, env={**os.environ, **policy_environ(1)},
                   preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


def test_policy_inside_workers_running_lbnlm_and_a_network_at_once(probes, tmp_path):
    """Workers of 2 threads run LB-NLM and an edsr-tiny CPU fallback concurrently: every task
    sees 1 BLAS/OpenMP thread, torch 1 thread and threads=1, two tasks run at once in one
    worker (tasks × threads = the worker's 2), and the outputs are bit for bit those of a
    single-threaded run (the same arithmetic in the same order: thread counts are the only
    difference, and the policy leaves none)."""
    root, models, log = probes
    lr = root / "lr.zarr"
    with get_client(workers=2, threads_per_worker=2, memory_limit="1GiB") as client:
        client.upload_file(__file__)  # workers register the probe methods
        assert all(w["nthreads"] == 2 for w in client.scheduler_info()["workers"].values())
        environ = client.run(lambda: {k: os.environ.get(k) for k in policy_environ()})
        assert all(e == policy_environ() for e in environ.values())
        if Path("/proc/self/environ").exists():  # what the process started with (its allocator's)
            started = client.run(lambda: Path("/proc/self/environ").read_bytes().split(b"\0"))
            policy = {f"{k}={v}".encode() for k, v in policy_environ().items()}
            assert all(policy <= set(e) for e in started.values())

        def run(name: str) -> Path:
            return apply_tiled(models[f"probe-{name}"], lr, tmp_path / f"{name}.zarr", tile=16,
                               out_dtype="float32", client=client, progress=False)

        with pytest.warns(RuntimeWarning, match="running it on CPU workers"):
            with ThreadPoolExecutor(2) as pool:
                outputs = dict(zip(("lbnlm", "edsr"), pool.map(run, ("lbnlm", "edsr")),
                                   strict=True))
        pids = set(client.run(os.getpid).values())
        addresses = set(client.scheduler_info()["workers"])
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["method"] for r in records} == {"test-probe-lbnlm", "test-probe-edsr"}
    assert {r["pid"] for r in records} == pids  # both workers ran tasks
    for r in records:
        assert r["threads"] == r["torch"] == TASK_THREADS, r
        assert r["pools"] and set(r["pools"].values()) == {TASK_THREADS}, r
    spans = [json.loads(line) for line in Path(f"{log}.spans").read_text().splitlines()]
    assert any(a[0] == b[0] and a[1] != b[1] and a[2] < b[3] and b[2] < a[3]
               for a in spans for b in spans), "no two tasks of one worker overlapped"
    single = {name: tmp_path / f"{name}-1.zarr" for name in outputs}
    _single_threaded(lr, {models[name]: out for name, out in single.items()})
    for name, out in outputs.items():
        tasks = json.loads((out / STATE / "log.json").read_text())["tasks"]
        assert {t["worker"] for t in tasks} <= addresses and {t["pid"] for t in tasks} <= pids
        reference = zarr.open_array(single[name] / "0")[:]
        assert np.array_equal(zarr.open_array(out / "0")[:], reference), name


def test_the_client_process_keeps_its_own_thread_settings(probes):
    """Starting a cluster sets the policy in the workers only: this process's BLAS keeps the
    threads it had (pairsr's functions here take threads= explicitly)."""
    from threadpoolctl import threadpool_info

    before = {p["filepath"]: p["num_threads"] for p in threadpool_info()}
    with get_client(workers=1, threads_per_worker=1, memory_limit="1GiB") as client:
        assert client.submit(lambda: os.environ["OMP_NUM_THREADS"]).result() == "1"
    assert {p["filepath"]: p["num_threads"] for p in threadpool_info()} == before


def test_pairsr_pools_run_blas_on_one_thread_each_and_restore_it():
    """A pool of 2 of pairsr's threads (ordered_map) sees one BLAS thread in each task
    (no threads × cores oversubscription); a pool of 1 sees the process's own; both leave the
    process's settings as they were."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from pairsr.patches import ordered_map

    def seen(_) -> set[int]:
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    # A process whose BLAS runs more than one thread:
    with threadpool_limits(limits=2, user_api="blas"):
        before = {p["filepath"]: p["num_threads"] for p in threadpool_info()}
        assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"} == {2}
        assert all(s == {1} for s in ordered_map(seen, range(4), 2))
        assert all(s == {2} for s in ordered_map(seen, range(4), 1))
        assert {p["filepath"]: p["num_threads"] for p in threadpool_info()} == before


# --- module structure -------------------------------------------------------------------------


def _modules() -> dict[str, Path]:
    return {".".join(("pairsr", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(
        ".__init__"): p for p in sorted(SRC.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(set(_modules()) - {"pairsr.__main__"}))
def test_every_module_imports_alone(module):
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)


def _top_level_imports(path: Path, module: str) -> set[str]:
    """The pairsr modules ``module`` imports when it is imported (module level, not in
    functions or ``TYPE_CHECKING`` blocks), relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return  # runs later, when called
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            found.update({base} | {f"{base}.{a.name}" for a in node.names})
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m.split(".")[0] == "pairsr"}


def test_no_module_imports_one_that_imports_it_back():
    """No cycle among module-level imports (a lazy table or a function-level import can hide
    one; only functions may import late)."""
    modules = _modules()
    graph = {m: {i for i in _top_level_imports(p, m) if i in modules and i != m}
             for m, p in modules.items()}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen))
                   for n in graph[start])

    cycles = sorted(m for m in graph if reaches(m, m, set()))
    assert not cycles, f"modules in an import cycle: {cycles}"
    assert "pairsr.lbnlm" in graph["pairsr.sigma"] or "pairsr.sigma" in graph["pairsr.lbnlm"]


def _calls_and_imports(path: Path) -> tuple[set[str], set[str]]:
    """Every module imported anywhere in ``path``, and every name imported from one or called
    (``compute`` when called without an explicit ``scheduler``: "ambient compute"; a call with
    ``workers=-1``: "workers=-1")."""
    imports, calls = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imports |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imports.add(node.module or "")
            calls |= {a.name for a in node.names}
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func).rpartition(".")[2]
            keywords = {kw.arg: ast.unparse(kw.value) for kw in node.keywords}
            calls.add("ambient compute" if name == "compute" and "scheduler" not in keywords
                      else name)
            if keywords.get("workers") == "-1":
                calls.add("workers=-1")
    return imports, calls


def test_only_the_policy_modules_touch_dask_workers_and_thread_pools():
    """Library code takes threads explicitly: only pairsr.cluster imports distributed (to look
    for a worker), only pairsr.threads sets thread pools (process-wide for a worker, scoped while
    pairsr's own pool runs), and nothing computes on an ambient dask scheduler."""
    offenders = {}
    for module, path in _modules().items():
        imports, calls = _calls_and_imports(path)
        bad = set()
        if module != "pairsr.cluster":
            bad |= {i for i in imports if i.split(".")[0] == "distributed"}
            bad |= calls & {"get_worker", "workers=-1"}
        if module != "pairsr.threads":
            bad |= calls & {"threadpool_limits", "set_num_threads"}
        if module.startswith("pairsr.register"):  # registration reads dask HRs itself
            bad |= calls & {"ambient compute", "delayed"}
        if bad:
            offenders[module] = sorted(bad)
    assert not offenders
    assert "threadpool_limits" in _calls_and_imports(SRC / "threads.py")[1]  # the check can see
