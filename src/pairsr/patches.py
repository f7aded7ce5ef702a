"""Patch grids shared by the patch-based methods (paired library, LB-NLM, ScSR, SRSW).

A patch is an ``n × n`` window vectorised row-major to ``n*n`` values. Training samples windows
free of invalid pixels (:func:`valid_corners`, :func:`sample_corners`, :func:`sample_windows`);
inference takes the window centred on every ``stride``-th pixel of an image, maps each to an HR
patch estimate and averages the overlapping estimates per pixel (:func:`overlap_average`), in
parallel threads.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from pairsr.region import window_sums
from pairsr.threads import one_thread_per_worker

#: ``estimate(q)``: HR estimates ``(M, n*n)`` of the windows ``q`` ``(M, C, n*n)``.
Estimate = Callable[[np.ndarray], np.ndarray]
#: ``channels(padded)``: the ``(C, H, W)`` maps a window is read from (default ``padded[None]``).
Channels = Callable[[np.ndarray], np.ndarray]
#: ``keep(band)``: which windows of a band of the padded maps, ``(C, R + n - 1, W + n - 1)``, to
#: estimate off the lattice: bool ``(R, W)``, the windows' top-left corners.
Keep = Callable[[np.ndarray], np.ndarray]


class Scratch(threading.local):
    """Reusable float32 work arrays, one set per thread, that only grow: ``scratch(name, shape)``.

    Temporaries of megabytes allocated and freed at every step cost a page fault per 4 KiB where
    malloc hands freed memory back to the system at once, as in Dask workers (which set
    ``MALLOC_TRIM_THRESHOLD_``): it made LB-NLM 1.8× slower there. A view of a kept buffer costs
    nothing. Make one per call of a filter, so that its buffers go with it.
    """

    def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = math.prod(shape)
        buffer = self.__dict__.get(name)
        if buffer is None or buffer.size < size:
            buffer = self.__dict__[name] = np.empty(size, dtype=np.float32)
        return buffer[:size].reshape(shape)


def cpus() -> int:
    """CPUs this process may run on: the default ``threads`` of pairsr's functions (a caller
    that runs several at once, such as a Dask worker, passes its share: :mod:`pairsr.cluster`)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_grid(n: int, stride: int, zoom: int) -> None:
    """``ValueError`` unless ``n × n`` patches every ``stride`` SR pixels suit the tile engine:
    ``n >= 2`` and ``stride`` a divisor of ``zoom`` (tiles start on even SR pixels for ×2, so
    their patch grids line up) and at most ``n`` (patches cover every pixel)."""
    if n < 2:
        raise ValueError(f"patch size n must be >= 2, got {n}")
    if stride < 1 or zoom % stride or stride > n:
        raise ValueError(f"stride must divide zoom={zoom} (tiles start on its grid) and be at "
                         f"most n={n}, got {stride}")  # fmt: skip


def valid_corners(invalid: np.ndarray, n: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Top-left ``(rows, cols)`` of the ``n × n`` windows on a ``stride`` grid free of ``invalid``.

    ``invalid`` is a boolean ``(H, W)`` image; a summed-area table counts the invalid pixels of
    every window in ``O(H·W)``. Returns two int arrays of equal length, in row-major order.
    """
    bad = window_sums(np.asarray(invalid, dtype=bool), (n, n))
    rows, cols = np.nonzero(bad[::stride, ::stride] == 0)
    return rows * stride, cols * stride


def gather_patches(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    """The ``n × n`` windows of ``image`` with top-left corners ``(rows, cols)``: ``(M, n*n)``."""
    windows = sliding_window_view(image, (n, n))
    return windows[rows, cols].reshape(len(rows), n * n).astype(np.float32, copy=False)


def sample_corners(
    invalid: Sequence[np.ndarray], n: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """``size`` random ``n × n`` windows (all if fewer) free of ``invalid`` pixels.

    ``invalid`` are boolean ``(H_i, W_i)`` images (one per training pair). The windows are drawn
    without replacement, uniformly over every stride-1 window of every image, and returned in
    image and row-major order as ``(M, 3)`` int64 rows ``(image, row, col)`` (top-left corners),
    with the number of valid windows there were. ``ValueError`` if none is valid.
    """
    corners = [valid_corners(mask, n) for mask in invalid]
    counts = np.array([len(r) for r, _ in corners])
    if counts.sum() == 0:
        raise ValueError(f"no fully valid {n}×{n} patch in the {len(invalid)} training pair(s)")
    pick = np.sort(rng.choice(counts.sum(), size=min(size, counts.sum()), replace=False))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    image = np.searchsorted(bounds, pick, side="right") - 1
    rows = np.concatenate([r for r, _ in corners])[pick]
    cols = np.concatenate([c for _, c in corners])[pick]
    return np.stack([image, rows, cols], axis=1).astype(np.int64), int(counts.sum())


def sample_windows(
    stacks: Sequence[np.ndarray], n: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """``size`` random ``n × n`` windows (all if fewer) free of non-finite values in any channel.

    ``stacks`` are ``(C, H_i, W_i)`` float32 images (one per training pair, same ``C``); windows
    as drawn by :func:`sample_corners`. Returns ``(M, C, n*n)`` float32 with the number of valid
    windows there were.
    """
    where, total = sample_corners([~np.isfinite(s).all(axis=0) for s in stacks], n, size, rng)
    out = []
    for i, stack in enumerate(stacks):
        _, rows, cols = where[where[:, 0] == i].T
        out.append(np.stack([gather_patches(c, rows, cols, n) for c in stack], 1))
    return np.concatenate(out), total


def ordered_map(fn: Callable, items: Sequence, workers: int) -> Iterator:
    """``map(fn, items)`` on ``workers`` threads, in order, with at most ``2·workers`` pending;
    BLAS on one thread per call meanwhile (:func:`pairsr.threads.one_thread_per_worker`)."""
    if workers == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool, one_thread_per_worker(workers):
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def axis_grid(length: int, n: int, stride: int) -> tuple[int, int]:
    """Patch positions per axis (every ``stride``-th pixel from 0, one more if the last pixel
    would be uncovered) and the padding after the image they need."""
    count = (length - 1) // stride + 1
    if (length - 1) % stride > n // 2:
        count += 1
    return count, max(n // 2, (count - 1) * stride + n // 2 - (length - 1))


def _coverage(count: int, padded: int, n: int, stride: int) -> np.ndarray:
    """How many patches of a ``count``-long ``stride`` grid cover each of ``padded`` pixels."""
    cover = np.zeros(padded, dtype=np.float32)
    for offset in range(n):
        cover[offset : offset + (count - 1) * stride + 1 : stride] += 1
    return cover


def on_lattice(index: np.ndarray, count: int, lattice: int) -> np.ndarray:
    """Which grid positions ``index`` (a numpy or torch integer array) lie on the lattice: every
    ``lattice``-th from 0, and the last one (``count - 1``), so that the lattice's patches cover
    every pixel whatever the image size."""
    return (index % lattice == 0) | (index == count - 1)


def zoom_lattice(n: int, zoom: int) -> int:
    """The largest lattice (SR px) of at most ``n`` that divides ``zoom``: the windows of a tiled
    ×``zoom`` method start on it whatever LR pixel they start on."""
    return max(d for d in range(1, min(n, zoom) + 1) if zoom % d == 0)


def ordered_window_sums(image: np.ndarray, n: int) -> np.ndarray:
    """Sums of ``image`` (H, W) over every ``n × n`` window: ``(H - n + 1, W - n + 1)``, by
    top-left corner. Every window's sum is the same sequence of additions wherever it lies
    (no running sums), so a tile's windows agree bit for bit with the whole image's."""
    rows = image[: len(image) - n + 1].copy()
    for i in range(1, n):
        rows += image[i : i + len(rows)]
    out = rows[:, : rows.shape[1] - n + 1].copy()
    for j in range(1, n):
        out += rows[:, j : j + out.shape[1]]
    return out


def _box_sum(mask: np.ndarray, n: int) -> np.ndarray:
    """Sums of ``mask`` (R, C) over every ``n × n`` window that overlaps it: ``(R+n-1, C+n-1)``."""
    rows = np.zeros((mask.shape[0] + n - 1, mask.shape[1]), dtype=np.float32)
    for i in range(n):
        rows[i : i + len(mask)] += mask
    out = np.zeros((rows.shape[0], mask.shape[1] + n - 1), dtype=np.float32)
    for j in range(n):
        out[:, j : j + mask.shape[1]] += rows
    return out


#: The overlap-add of chosen estimates (``keep``) works on about this many patches at a time, so
#: that its full-grid copy (``n²`` float32 each, 4 MiB for ``n = 9``) stays near a core's cache.
_OVERLAP_PATCHES = 12288
#: Patches per strided copy into the overlap-add's planes (a 324 KiB source for n = 9, in cache).
_TRANSPOSE_BLOCK = 1024


def _transpose(src: np.ndarray, dst: np.ndarray, block: int = 256) -> None:
    """``dst[...] = src.T`` for ``src`` ``(M, D)``, ``block`` rows at a time: each block's
    strided writes stay in cache (about 3× faster than one strided copy for D = 81)."""
    for start in range(0, len(src), block):
        np.copyto(dst[:, start : start + block], src[start : start + block].T)


def _bands(chosen: np.ndarray, step: int, most: int) -> list[int]:
    """Bounds ``[0, r1, ..., len(chosen)]`` of bands of consecutive grid rows that each hold
    about ``step`` of the ``chosen`` (per row) windows, with at most ``most`` rows, at least one."""
    bounds, held = [0], 0
    for row, count in enumerate(chosen.tolist()):
        if row > bounds[-1] and (held + count > step or row - bounds[-1] >= most):
            bounds.append(row)
            held = 0
        held += count
    return [*bounds, len(chosen)]


def _add_estimates(sums: np.ndarray, est: np.ndarray, row: int, cols: int, stride: int,
                   scratch: Scratch) -> None:
    """Add the ``(R·cols, n²)`` patch estimates ``est`` of ``R`` grid rows from grid row ``row``
    (row-major) to ``sums``, each at its place: pixel ``(i, j)`` of the patch at grid ``(r, c)``
    goes to ``sums[(row + r)·stride + i, c·stride + j]``."""
    n = math.isqrt(est.shape[1])
    count = len(est) // cols
    top = row * stride
    if stride > 1:
        planes = scratch("transposed", (n * n, len(est)))
        _transpose(est, planes)
        planes = planes.reshape(n, n, count, cols)
        span = (count - 1) * stride + 1, (cols - 1) * stride + 1
        for i in range(n):
            for j in range(n):
                sums[top + i : top + i + span[0] : stride, j : j + span[1] : stride] += planes[i, j]
        return
    # Stride 1: the planes, each row zero-padded by n - 1 on both sides, so that a view with a
    # diagonal stride reads plane (i, j) shifted by j: one sum over j per i adds the n
    # column-shifted planes of row i of every patch (n calls, not n²).
    width = cols + 2 * (n - 1)
    planes = scratch("transposed", (n, n, count, width))
    planes[..., : n - 1] = 0
    planes[..., n - 1 + cols :] = 0
    flat = planes.reshape(n * n, count, width)
    for r in range(count):
        for c in range(0, cols, _TRANSPOSE_BLOCK):
            part = est[r * cols + c : r * cols + min(cols, c + _TRANSPOSE_BLOCK)]
            np.copyto(flat[:, r, n - 1 + c : n - 1 + c + len(part)], part.T)
    shifted = scratch("shifted", (n, count, cols + n - 1))
    s_i, s_j, s_r, s_c = planes.strides
    view = as_strided(planes[:, :, :, n - 1 :], shape=(n, n, count, cols + n - 1),
                      strides=(s_i, s_j - s_c, s_r, s_c), writeable=False)  # fmt: skip
    np.add.reduce(view, axis=1, out=shifted)
    for i in range(n):
        sums[top + i : top + i + count, : cols + n - 1] += shifted[i]


def overlap_average(
    image: np.ndarray,
    n: int,
    stride: int,
    estimate: Estimate,
    *,
    channels: Channels | None = None,
    step: int = 4096,
    workers: int = 1,
    keep: Keep | None = None,
    lattice: int = 2,
) -> np.ndarray:
    """Overlap-averaged HR patch estimates of every ``stride``-th window of an image.

    ``image`` (H, W) is padded half-sample symmetrically by ``(n-1)//2`` before (and as needed
    after); the ``n × n`` windows centred on every ``stride``-th pixel from ``(0, 0)`` (one more
    per axis where the last pixels would be uncovered) are read from ``channels(padded)`` and go
    to ``estimate`` a step at a time: the windows of ``max(1, step // patches per row)`` rows
    (with ``keep``: of as many rows as hold about ``step`` chosen windows, and at most
    ``step·n²`` float32 of the band's output).
    ``workers`` threads run the steps (``estimate`` must be thread-safe; numpy releases the GIL
    in its array work). Returns the float32 (H, W) image whose pixels are the means of the
    estimates covering them.

    With ``keep`` (``stride`` 1 only), a window is estimated if it lies on the lattice of every
    ``lattice``-th row and column (counted from the image's first pixel, plus the last row and
    column; ``lattice <= n``, so that these cover every pixel) or ``keep`` marks it, and the
    pixels average the estimates that cover them. Tiles of one image agree where their lattices
    do: they must start on multiples of ``lattice`` pixels.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or not np.isfinite(image).all():
        raise ValueError(f"image must be a finite 2-D array, got shape {image.shape}")
    if not 1 <= stride <= n:
        raise ValueError(f"stride must be in [1, n={n}] for patches to cover, got {stride}")
    if keep is not None and (stride != 1 or not 1 <= lattice <= n):
        raise ValueError(f"keep needs stride 1 and a lattice in [1, n={n}], got stride {stride} "
                         f"and lattice {lattice}")  # fmt: skip
    (rows, pad_r), (cols, pad_c) = (axis_grid(length, n, stride) for length in image.shape)
    before = (n - 1) // 2
    padded = np.pad(image, ((before, pad_r), (before, pad_c)), mode="symmetric")
    stack = padded[None] if channels is None else channels(padded)
    windows = sliding_window_view(stack, (n, n), axis=(1, 2))[:, ::stride, ::stride]
    scratch = Scratch()
    if keep is None:
        chosen = None
        bounds = [*range(0, rows, max(1, step // cols)), rows]
    else:
        grid = on_lattice(np.arange(rows), rows, lattice)[:, None]
        part = max(1, -(-rows // workers))  # keep's windows are position-independent: in parts
        kept = ordered_map(lambda r: keep(stack[:, r : r + part + n - 1]), range(0, rows, part),
                           workers)  # fmt: skip
        chosen = (grid & on_lattice(np.arange(cols), cols, lattice)) | np.concatenate(list(kept))
        bounds = _bands(np.count_nonzero(chosen, axis=1), step, max(1, step * n * n // cols))

    def band(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The summed estimates of the patches of grid rows ``r0 .. r1`` (a band of ``padded``
        from row ``r0·stride`` on) and, with ``keep``, how many cover each pixel."""
        count = r1 - r0
        counts = None
        if chosen is None:
            part = np.moveaxis(windows[:, r0 : r0 + count], 0, 2)
            q = scratch("windows", part.shape)
            np.copyto(q, part)
            est = estimate(q.reshape(-1, len(stack), n * n))
        else:
            at_r, at_c = np.nonzero(chosen[r0:r1])
            if len(at_r):
                picked = np.moveaxis(windows[:, r0 + at_r, at_c], 0, 1)
                done = estimate(picked.reshape(len(at_r), len(stack), n * n))
            counts = _box_sum(chosen[r0:r1].astype(np.float32), n)
        span = (count - 1) * stride + 1, (cols - 1) * stride + 1
        sums = np.zeros((span[0] + n - 1, padded.shape[1]), dtype=np.float32)
        if chosen is None:
            _add_estimates(sums, est, 0, cols, stride, scratch)
            return sums, counts
        # The chosen estimates, a few rows of patches at a time (kept in cache), as a full grid.
        sub = max(1, _OVERLAP_PATCHES // cols)
        bounds = np.searchsorted(at_r, np.arange(0, count + sub, sub))
        for k, s0 in enumerate(range(0, count, sub)):
            s1, (lo, hi) = min(count, s0 + sub), bounds[k : k + 2]
            if lo == hi:
                continue
            full = scratch("estimates", ((s1 - s0) * cols, n * n))
            full.fill(0)
            full[(at_r[lo:hi] - s0) * cols + at_c[lo:hi]] = done[lo:hi]
            _add_estimates(sums, full, s0, cols, stride, scratch)
        return sums, counts

    sums = np.zeros_like(padded)
    covered = None if keep is None else np.zeros_like(padded)
    starts = bounds[:-1]
    parts = ordered_map(lambda r: band(*r), list(zip(starts, bounds[1:])), workers)
    for r0, (part, counts) in zip(starts, parts, strict=True):
        sums[r0 * stride : r0 * stride + len(part)] += part
        if counts is not None:
            covered[r0 : r0 + len(counts), : counts.shape[1]] += counts
    h, w = image.shape
    inner_r, inner_c = slice(before, before + h), slice(before, before + w)
    out = sums[inner_r, inner_c]
    if covered is not None:
        out /= covered[inner_r, inner_c]
        return out
    out /= _coverage(rows, padded.shape[0], n, stride)[inner_r, None]
    out /= _coverage(cols, padded.shape[1], n, stride)[None, inner_c]
    return out
