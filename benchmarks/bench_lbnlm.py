"""Speed of the paired LB-NLM filter: exact path, the default, scikit-image's NLM and matmul.

Prints one row per case: SR image size, library size, σ, the best wall time of 3 in seconds per
output megapixel of the exact path (``exact=True``, the paper's algorithm) and of the default
(reduced attention), their ratio, scikit-image's ``denoise_nl_means`` (fast mode, 7×7 patches,
9-pixel search) on the same upsampled image and the default's speed-up over it, the exact
path's achieved GFLOP/s, numpy's float32 matmul GFLOP/s, the peak memory that numpy allocated
during one more run of the default (tracemalloc), and the two speed-ups again in CPU seconds
(all threads of the process), which other processes on a shared machine disturb less than wall
time. All timings of a row are interleaved, so that they see the same machine load. The exact
path's work is counted as matrix products only: per patch ``2·k·n²`` for the nearest category
and ``4·(n²+2)·L/k`` for the logits and the weighted sums over its category; exp and the
overlap-add come on top. σ = 0.02 is what fitting picks on most evaluation pairs of
``benchmarks/reproduce_paper.py``; the reduced path's ranks grow as σ shrinks.

Run: ``.venv/bin/python benchmarks/bench_lbnlm.py [--quick] [--device cuda]`` (``--device``
times the torch path too, in a column of its own).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from skimage import data, filters, restoration, transform

from pairsr.grid import bicubic
from pairsr.lbnlm import lbnlm_filter
from pairsr.library import build_library

REPEATS = 3


def matmul_gflops(size: int = 2048) -> float:
    """GFLOP/s of one float32 ``size³`` numpy matrix product (BLAS default threads)."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    a @ a
    start = time.perf_counter()
    a @ a
    return 2 * size**3 / (time.perf_counter() - start) / 1e9


def training_pair(side: int) -> tuple[np.ndarray, np.ndarray]:
    """An aligned ``(up, hr)`` pair of ``side × side`` SR pixels from skimage's camera image."""
    hr = transform.resize(data.camera(), (side, side), anti_aliasing=True).astype(np.float32)
    lr = transform.downscale_local_mean(filters.gaussian(hr, 0.8), (2, 2))
    noise = np.random.default_rng(0).normal(0, 0.01, lr.shape)
    return bicubic((lr + noise).astype(np.float32)), hr


def seconds(run: Callable[[], object]) -> np.ndarray:
    """Wall and CPU seconds (all threads of this process) of ``run()``."""
    start = time.perf_counter(), time.process_time()
    run()
    return np.array([time.perf_counter(), time.process_time()]) - start


def contenders(image: np.ndarray, library, sigma: float, device: str | None) -> dict:
    """The runs a row times: the exact path, the default, skimage's NLM (and the device)."""
    runs = {
        "exact": lambda: lbnlm_filter(image, library, sigma=sigma, exact=True),
        "default": lambda: lbnlm_filter(image, library, sigma=sigma),
        "skimage": lambda: restoration.denoise_nl_means(
            image, patch_size=7, patch_distance=9, h=sigma, fast_mode=True),
    }  # fmt: skip
    if device is not None:
        runs["device"] = lambda: lbnlm_filter(image, library, sigma=sigma, device=device)
    return runs


def main(quick: bool = False, device: str | None = None) -> None:
    up, hr = training_pair(512)
    cases = [(1024, 20000, 0.05), (1024, 20000, 0.02), (512, 20000, 0.02), (1024, 5000, 0.02)]
    if quick:
        cases = [(512, 20000, 0.02)]
    print(f"{'image':>11} {'library':>8} {'σ':>5} {'exact':>6} {'default':>7} {'×':>5} "
          f"{'skimage':>7} {'×':>5} {'device':>6} {'GFLOP/s':>8} {'matmul':>7} {'peak MiB':>9}"
          f" {'×cpu':>5} {'×cpu':>5}")  # fmt: skip
    for side, size, sigma in cases:
        library = build_library([(up, hr)], n=9, k=50, K=10, L=size)
        image = np.tile(up, (side // 512, side // 512))
        n2, k = library.n**2, library.k
        flops = image.size * (2 * k * n2 + 4 * (n2 + 2) * len(library) / k)
        runs = contenders(image, library, sigma, device)
        best = {name: np.full(2, np.inf) for name in runs}
        peak = 0.0
        for _ in range(REPEATS):
            peak = max(peak, matmul_gflops())
            for name, run in runs.items():
                best[name] = np.minimum(best[name], seconds(run))
        cpu = {name: t[1] for name, t in best.items()}
        best = {name: t[0] for name, t in best.items()}
        tracemalloc.start()
        runs["default"]()
        memory = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        per = {name: t / image.size * 1e6 for name, t in best.items()}
        rate = flops / best["exact"] / 1e9
        on_device = f"{per['device']:>6.3f}" if device is not None else f"{'-':>6}"
        print(f"{side:>5}×{side:<5} {len(library):>8} {sigma:>5.2f} {per['exact']:>6.2f} "
              f"{per['default']:>7.2f} {best['exact'] / best['default']:>5.2f} "
              f"{per['skimage']:>7.2f} {best['skimage'] / best['default']:>5.2f} {on_device} "
              f"{rate:>8.1f} {peak:>7.1f} {memory:>9.0f} {cpu['exact'] / cpu['default']:>5.2f} "
              f"{cpu['skimage'] / cpu['default']:>5.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the smallest case")
    parser.add_argument("--device", default=None, help="also time the torch path there")
    args = parser.parse_args()
    main(quick=args.quick, device=args.device)
