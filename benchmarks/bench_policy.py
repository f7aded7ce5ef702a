"""The execution policy (pairsr.cluster): 2 workers × 1 thread vs 1 worker × 2 threads on one
LB-NLM field, and the per-tile time of LB-NLM on a loaded model.

Part 1: a ``--size``² uint8 LR OME-Zarr (the texture of ``bench_tiles.py``) super-resolved ×2
with LB-NLM (library defaults, σ = 0.05) by ``apply_tiled`` on a local cluster of 2 worker
processes of 1 thread, then of 1 worker of 2 threads, ``--repeats`` times alternately; per
layout the best wall seconds (cluster start-up excluded), the BLAS/OpenMP/torch threads a task
sees (from inside one) and the ratio of the two layouts. Under the policy each task runs on one
thread either way, so the two should take the same time.

Part 2: the per-tile time of LB-NLM on a model loaded from its folder, as a worker's task runs it
(``threads=1``, BLAS limited to one thread here as the policy does in a worker): the first tile
(which prepares the per-category attention matrices, :func:`pairsr.lbnlm._prepared`), the next
``--tiles`` tiles (prepared state reused), and the same tiles with the prepared state dropped
before each (what a per-tile rebuild costs); ``--profile`` prints the top functions of one
reused-state tile.

Run: ``.venv/bin/python benchmarks/bench_policy.py`` (2048² LR, a few minutes on 2 cores);
``--size 1024 --repeats 1`` (quick).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_tiles import make_lr, make_model
from threadpoolctl import threadpool_info, threadpool_limits

from pairsr import lbnlm
from pairsr.cluster import get_client
from pairsr.io import read_image, to_float32
from pairsr.methods import load_model
from pairsr.tiles import apply_tiled

LAYOUTS = ((2, 1), (1, 2))  # (workers, threads per worker)


def _task_threads() -> dict:
    """The thread counts a task sees, from inside it."""
    import torch

    return {"blas/openmp": sorted({p["num_threads"] for p in threadpool_info()}),
            "torch": torch.get_num_threads()}


def run_layout(model: str, lr: Path, out: Path, workers: int, threads: int,
               tile: int) -> tuple[float, dict]:
    """Wall seconds of one ``apply_tiled`` on ``workers`` × ``threads``, and a task's threads."""
    with get_client(workers=workers, threads_per_worker=threads) as client:
        client.wait_for_workers(workers)
        seen = client.submit(_task_threads, pure=False).result()
        start = time.perf_counter()
        apply_tiled(model, lr, out, tile=tile, client=client, overwrite=True, progress=False)
        return time.perf_counter() - start, seen


def per_tile(model: str, lr: Path, tile: int, count: int, profile: bool) -> None:
    method = load_model(model)
    method.threads = 1  # as the tiled engine sets it on a worker
    image = to_float32(read_image(lr).values)
    h = method.halo
    corners = [(r, c) for r in range(0, image.shape[0] - tile - 2 * h + 1, tile)
               for c in range(0, image.shape[1] - tile - 2 * h + 1, tile)][: count + 1]
    windows = [image[r : r + tile + 2 * h, c : c + tile + 2 * h] for r, c in corners]

    def timed(window: np.ndarray, drop: bool) -> float:
        if drop:
            lbnlm._PREPARED.clear()
        start = time.perf_counter()
        method.predict(window)
        return time.perf_counter() - start

    with threadpool_limits(1):  # the policy's BLAS threads in a worker
        lbnlm._PREPARED.clear()
        first = timed(windows[0], False)
        reused = [timed(w, False) for w in windows[1:]]
        rebuilt = [timed(w, True) for w in windows[1:]]
        if profile:
            timed(windows[0], False)
            profiler = cProfile.Profile()
            profiler.runcall(method.predict, windows[1])
    mpix = (2 * (tile + 2 * h)) ** 2 / 1e6
    print(f"\nper-tile LB-NLM on a loaded model, {tile}² LR tiles (+{h} px halo, {mpix:.2f} "
          f"output MPix), threads=1, {len(reused)} tiles:")
    print(f"  first tile (prepares):         {first:6.2f} s")
    print(f"  prepared state reused:         {np.median(reused):6.2f} s median "
          f"({min(reused):.2f}-{max(reused):.2f})")
    print(f"  prepared state rebuilt per tile: {np.median(rebuilt):6.2f} s median "
          f"({min(rebuilt):.2f}-{max(rebuilt):.2f}): reuse saves "
          f"{1 - np.median(reused) / np.median(rebuilt):.0%}")
    if profile:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(8)
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[-1800:])


def main(size: int, tile: int, repeats: int, tiles: int, profile: bool) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("PAIRSR_BENCH_DIR")) as tmp:
        tmp = Path(tmp)
        model = make_model("lbnlm", tmp / "model")
        lr = make_lr(tmp / "lr.zarr", size)
        print(f"LB-NLM, LR {size}², tile {tile}, output {4 * size * size / 1e6:.0f} MPix, "
              f"{len(os.sched_getaffinity(0))} CPUs, best of {repeats}")
        best, seen = {}, {}
        for _ in range(repeats):
            for workers, threads in LAYOUTS:
                seconds, seen[workers, threads] = run_layout(model, lr, tmp / "sr.zarr",
                                                             workers, threads, tile)
                best[workers, threads] = min(seconds, best.get((workers, threads), np.inf))
        print(f"{'layout':>18} {'seconds':>8} {'task threads (BLAS/OpenMP, torch)':>34}")
        for (workers, threads), seconds in best.items():
            s = seen[workers, threads]
            print(f"{f'{workers} worker × {threads} thr':>18} {seconds:>8.1f} "
                  f"{str(s['blas/openmp']) + ', ' + str(s['torch']):>34}")
        ratio = best[LAYOUTS[1]] / best[LAYOUTS[0]]
        print(f"1×2 / 2×1 wall time: {ratio:.3f} ({abs(ratio - 1):.1%} apart)")
        per_tile(model, lr, tile, tiles, profile)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="LR edge in px (default 2048)")
    parser.add_argument("--tile", type=int, default=512, help="LR px per task (default 512)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per layout (default 2)")
    parser.add_argument("--tiles", type=int, default=4, help="tiles of part 2 (default 4)")
    parser.add_argument("--profile", action="store_true", help="profile one tile of part 2")
    args = parser.parse_args()
    main(args.size, args.tile, args.repeats, args.tiles, args.profile)
