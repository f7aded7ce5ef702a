"""Throughput, peak memory, worker scaling and overhead of the tiled engine (pairsr.tiles).

A ``--size`` × ``--size`` uint8 LR OME-Zarr (1024 px chunks) is tiled from one 2048² simulated
nanocomposite texture and super-resolved ×2 by ``apply_tiled`` on a local cluster of 1, then
2, worker processes (1 thread each). Per run it prints the wall seconds (cluster start-up
excluded), output MPix/s, the speed-up over the first run, the CPU cores the worker processes
used on average (their CPU seconds / wall seconds: below the worker count when other programs
share the CPUs), how busy the workers were (task seconds / workers / wall seconds: the engine's
own idle time shows here) and the peak RSS of this process plus all its children (sampled
every 0.1 s). Then the engine's overhead: one
in-memory ``method.predict`` of a ``--overhead-size``² image against ``apply_tiled`` of the same
image from zarr to zarr in this process (one tile, and 1024 px tiles), best of 2 each, in wall
and in CPU seconds (the latter hardly depends on other programs' load).

``--method lbnlm`` fits LB-NLM (library defaults, σ = 0.05) on a small simulated pair. In a
worker, LB-NLM runs one thread per task (the execution policy, :mod:`pairsr.cluster`); by
default every worker is also pinned to its own core (``--no-pin`` to compare without).

Run: ``.venv/bin/python benchmarks/bench_tiles.py`` (16384² LR, LB-NLM, 1 then 2 workers: more
than an hour on 2 cores); ``--workers 2 --overhead-size 0`` (the 16384² run on 2 workers only);
``--size 4096`` (the speed-up on a smaller field); ``--method bicubic`` (minutes); ``--quick``
(4096² LR, bicubic, about a minute).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import psutil

from pairsr.cluster import get_client
from pairsr.io import from_float32, read_image, to_float32, write_ome_zarr
from pairsr.lbnlm import LBNLM
from pairsr.methods import load_model, save_model
from pairsr.simulate import nanocomposite, simulate_pair
from pairsr.tiles import STATE, apply_tiled

TEXTURE = 2048


class PeakRSS:
    """Largest summed RSS (bytes) of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in (me, *me.children(recursive=True)):
                try:
                    total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def make_lr(path: Path, size: int) -> Path:
    """A ``size``² uint8 OME-Zarr tiled from one simulated texture, written chunk by chunk."""
    texture = nanocomposite((TEXTURE, TEXTURE), np.random.default_rng(0), scale=1.0)
    tile = da.from_array(from_float32(texture, np.uint8), chunks=1024)
    reps = -(-size // TEXTURE)
    return write_ome_zarr(path, da.tile(tile, (reps, reps))[:size, :size], chunks=1024,
                          pixel_size_nm=4.0, overwrite=True)


def make_model(method: str, folder: Path) -> str:
    if method == "bicubic":
        return "bicubic"
    pair = simulate_pair(lr_shape=(256, 320), seed=0)
    return str(save_model(LBNLM.fit([(to_float32(pair.lr), pair.gt)], sigma=0.05), folder,
                          overwrite=True))


def _pin(cpu: int) -> None:
    """Pin every thread of this (worker) process to ``cpu``; threads started later inherit it."""
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), {cpu})


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def run_cluster(model: str, lr: Path, out: Path, workers: int, tile: int,
                pin: bool) -> dict[str, float]:
    """Wall seconds, worker CPU seconds, task seconds and peak RSS (bytes) of one run."""
    with get_client(workers=workers, threads_per_worker=1) as client:
        pids = client.run(os.getpid)
        if pin:
            cpus = sorted(os.sched_getaffinity(0))
            for i, address in enumerate(pids):
                client.run(_pin, cpus[i % len(cpus)], workers=[address])
        processes = [psutil.Process(pid) for pid in pids.values()]
        with PeakRSS() as memory:
            cpu, start = _cpu_seconds(processes), time.perf_counter()
            apply_tiled(model, lr, out, tile=tile, client=client, overwrite=True, progress=False)
            seconds = time.perf_counter() - start
            cpu = _cpu_seconds(processes) - cpu
    tasks = json.loads((out / STATE / "log.json").read_text())["tasks"]
    busy = sum(t["read_s"] + t["predict_s"] + t["write_s"] for t in tasks)
    return {"seconds": seconds, "cpu": cpu, "busy": busy, "peak": memory.peak}


def best_of(n: int, fn) -> tuple[float, float]:
    """The smallest wall and CPU seconds (this process, all its threads) of ``n`` calls."""
    walls, cpus = [], []
    for _ in range(n):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def main(size: int, method: str, workers: list[int], tile: int, overhead_size: int,
         pin: bool) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("PAIRSR_BENCH_DIR")) as tmp:
        tmp = Path(tmp)
        model = make_model(method, tmp / "model")
        mpix = 4 * size * size / 1e6
        print(f"{method}, LR {size}², tile {tile}, output {mpix:.0f} MPix, "
              f"{psutil.cpu_count()} CPUs{', workers pinned' if pin else ''}")
        print(f"{'workers':>7} {'seconds':>8} {'MPix/s':>7} {'speed-up':>8} {'cores used':>10} "
              f"{'busy':>5} {'peak RSS GiB':>12}")
        lr, first = make_lr(tmp / "lr.zarr", size) if workers else None, None
        for count in workers:
            run = run_cluster(model, lr, tmp / "sr.zarr", count, tile, pin)
            seconds = run["seconds"]
            first = first or seconds
            print(f"{count:>7} {seconds:>8.1f} {mpix / seconds:>7.2f} {first / seconds:>8.2f} "
                  f"{run['cpu'] / seconds:>10.2f} {run['busy'] / count / seconds:>5.0%} "
                  f"{run['peak'] / 2**30:>12.2f}")

        if overhead_size < 1:
            return
        small = make_lr(tmp / "small.zarr", overhead_size)
        values = to_float32(read_image(small).values)
        predictor = load_model(model)
        wall, cpu = best_of(2, lambda: predictor.predict(values))
        print(f"\noverhead on {overhead_size}² LR, best of 2: in-memory predict {wall:.2f} s "
              f"wall, {cpu:.2f} s CPU")
        outputs = (tmp / f"small-sr{i}.zarr" for i in itertools.count())  # fresh: no deleting
        for engine_tile in sorted({overhead_size, 1024}, reverse=True):
            tiled_wall, tiled_cpu = best_of(2, lambda t=engine_tile: apply_tiled(
                model, small, next(outputs), tile=t, progress=False))
            print(f"  apply_tiled, tile {engine_tile:>5}: {tiled_wall:.2f} s wall "
                  f"({tiled_wall / wall - 1:+.0%}), {tiled_cpu:.2f} s CPU "
                  f"({tiled_cpu / cpu - 1:+.0%})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="LR edge in px (default 16384)")
    parser.add_argument("--method", choices=("lbnlm", "bicubic"), default="lbnlm")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2],
                        help="worker counts to run, the first is the speed-up baseline "
                             "(none: only the overhead comparison)")
    parser.add_argument("--tile", type=int, default=2048, help="LR px per task (default 2048)")
    parser.add_argument("--overhead-size", type=int, default=2048,
                        help="LR edge of the overhead comparison (default 2048; 0: none)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin each worker to its own core")
    parser.add_argument("--quick", action="store_true", help="--size 4096 --method bicubic")
    args = parser.parse_args()
    if args.quick:
        args.size, args.method = 4096, "bicubic"
    main(args.size, args.method, args.workers, args.tile, args.overhead_size, args.pin)
