"""Speed of the paired LB-NLM filter against numpy's float32 matrix product on this machine.

Prints one row per case: SR image size, library size, best wall time of 3, seconds per output
megapixel, achieved GFLOP/s, numpy float32 matmul GFLOP/s measured in the same run (interleaved
with the filter, so both see the same machine load), their ratio, and the peak memory that numpy
allocated during one more run (tracemalloc). The filter's work is counted as matrix products
only: per patch, ``2·k·n²`` for the nearest category and ``4·(n²+2)·L/k`` for the logits and the
weighted sums over its category; exp and the overlap-add come on top.

Run: ``.venv/bin/python benchmarks/bench_lbnlm.py [--quick] [--device cuda]`` (``--device``
times the torch path instead of numpy).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from skimage import data, filters, transform

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


def main(quick: bool = False, device: str | None = None) -> None:
    up, hr = training_pair(512)
    cases = [(512, 20000), (1024, 20000), (1024, 5000)]
    if quick:
        cases = cases[:1]
    print(f"{'image':>11} {'library':>8} {'seconds':>8} {'s/MPix':>7} {'GFLOP/s':>8} "
          f"{'matmul':>7} {'ratio':>6} {'peak MiB':>9}")  # fmt: skip
    for side, size in cases:
        library = build_library([(up, hr)], n=9, k=50, K=10, L=size)
        image = np.tile(up, (side // 512, side // 512))
        n2, k = library.n**2, library.k
        flops = image.size * (2 * k * n2 + 4 * (n2 + 2) * len(library) / k)
        best, peak = np.inf, 0.0
        for _ in range(REPEATS):
            peak = max(peak, matmul_gflops())
            start = time.perf_counter()
            lbnlm_filter(image, library, sigma=0.05, device=device)
            best = min(best, time.perf_counter() - start)
        tracemalloc.start()
        lbnlm_filter(image, library, sigma=0.05, device=device)
        memory = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        rate = flops / best / 1e9
        print(f"{side:>5}×{side:<5} {len(library):>8} {best:>8.2f} {best / image.size * 1e6:>7.2f} "
              f"{rate:>8.1f} {peak:>7.1f} {rate / peak:>6.0%} {memory:>9.0f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the smallest case")
    parser.add_argument("--device", default=None, help="torch device (default: numpy path)")
    args = parser.parse_args()
    main(quick=args.quick, device=args.device)
