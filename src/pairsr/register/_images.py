"""Image helpers shared by the registration stages: input checks, reduction, noise."""

from __future__ import annotations

import sys
from itertools import pairwise
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi
from scipy import signal
from skimage.util import img_as_float32

from pairsr.patches import ordered_map


def _is_dask(a) -> bool:
    dask = sys.modules.get("dask")  # a dask array exists only if dask was imported
    return dask is not None and dask.is_dask_collection(a)


def _as_image(image, name: str, allow_dask: bool = False):
    """2-D float32 image in [0, 1] units (integers scaled by their dtype); dask stays lazy."""
    if allow_dask and _is_dask(image):
        out = image.map_blocks(img_as_float32, dtype=np.float32)
    else:
        out = img_as_float32(np.asarray(image))
    if out.ndim != 2 or min(out.shape) < 16:
        raise ValueError(f"{name} must be a 2-D image of at least 16×16 pixels, got {out.shape}")
    return out


def _numpy(image, threads: int) -> np.ndarray:
    """``image`` as float32 numpy; a dask array computed on ``threads`` threads of this process
    (never on an ambient scheduler or client)."""
    if _is_dask(image):
        image = image.compute(scheduler="sync") if threads == 1 else image.compute(
            scheduler="threads", num_workers=threads)
    return np.asarray(image, dtype=np.float32)


def _gauss_depth(sigma: float) -> int:
    """Pixels a Gaussian of ``sigma`` reads on each side (scipy's default truncate=4)."""
    return int(4.0 * sigma + 0.5)


def _reduce(image, f: int, threads: int = 1) -> np.ndarray:
    """Gaussian anti-alias (σ = f/2) and decimate by ``f``: output pixel k ↔ input pixel f·k.
    A dask ``image`` is computed on ``threads`` threads."""
    if f == 1:
        return _numpy(image, threads)
    sigma = 0.5 * f
    if _is_dask(image):
        blurred = image.map_overlap(ndi.gaussian_filter, depth=_gauss_depth(sigma) + 1,
                                    boundary="reflect", sigma=sigma, mode="reflect")
        return _numpy(blurred[::f, ::f], threads)
    return ndi.gaussian_filter(image, sigma, mode="reflect")[::f, ::f]


def _decimate_block(block: np.ndarray, f: int, pads: tuple[int, int, int, int]) -> np.ndarray:
    """Every ``f``-th pixel of ``block`` Gaussian-filtered (σ = f/2), computing those only.

    ``block`` holds the kept pixels' neighbourhoods: a kept pixel every ``f`` rows and columns
    from ``radius`` (:func:`_gauss_depth`) in, ``radius`` beyond the last, less ``pads`` (top,
    bottom, left, right) pixels mirrored in at the image's edges (scipy's 'reflect'). Float64
    sums of the same taps in the same order wherever the block starts, so a field computed block
    by block equals the whole computed at once.
    """
    radius = _gauss_depth(0.5 * f)
    x = np.pad(np.asarray(block, dtype=np.float64), ((pads[0], pads[1]), (pads[2], pads[3])),
               mode="symmetric")
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / (0.5 * f)) ** 2)
    taps /= taps.sum()
    first = 2 * radius // f  # full-convolution index 2·radius holds the first kept pixel
    for axis in (0, 1):
        n = (x.shape[axis] - 2 * radius - 1) // f + 1
        x = np.take(signal.upfirdn(taps, x, down=f, axis=axis), np.arange(first, first + n),
                    axis=axis)
    return x.astype(np.float32)


def _decimate(image, f: int, threads: int = 1) -> np.ndarray:
    """:func:`_reduce` computed at the kept pixels only (equal up to float32 rounding): the
    image Gaussian-anti-aliased (σ = f/2) at every ``f``-th pixel, float32 (⌈H/f⌉, ⌈W/f⌉).

    A dask image is reduced block by block (one task per chunk, reading the chunk and a halo of
    :func:`_gauss_depth` pixels) on ``threads`` threads of this process, never whole at full
    resolution.
    """
    if f == 1:
        return np.asarray(image, dtype=np.float32)
    radius = _gauss_depth(0.5 * f)
    chunks = image.chunks if _is_dask(image) else tuple((n,) for n in image.shape)
    spans = []  # per axis: (read start, read stop, pad before, pad after) of each chunk's pixels
    for n, sizes in zip(image.shape, chunks):
        axis = []
        for start, stop in pairwise(np.cumsum((0, *sizes))):
            k0, k1 = -(-start // f), -(-stop // f)  # kept pixels k·f in [start, stop)
            if k1 > k0:
                lo, hi = k0 * f - radius, (k1 - 1) * f + radius + 1
                axis.append((max(lo, 0), min(hi, n), max(-lo, 0), max(hi - n, 0)))
        spans.append(axis)
    if not _is_dask(image):
        (r,), (c,) = spans
        return _decimate_block(image, f, (r[2], r[3], c[2], c[3]))

    def block(job: tuple) -> np.ndarray:
        r, c = job
        return _decimate_block(_numpy(image[r[0] : r[1], c[0] : c[1]], 1), f,
                               (r[2], r[3], c[2], c[3]))

    blocks = list(ordered_map(block, [(r, c) for r in spans[0] for c in spans[1]], threads))
    width = len(spans[1])
    return np.block([blocks[i : i + width] for i in range(0, len(blocks), width)])


class _Window(NamedTuple):
    """The pixels ``image`` of a larger image (or pyramid level) of ``shape``, from its pixel
    ``origin`` (row, col)."""

    image: np.ndarray
    origin: tuple[int, int]
    shape: tuple[int, int]


def _level_window(image, c: int, lo, hi) -> _Window:
    """The pixels of :func:`_reduce` ``(image, c)`` whose full-resolution positions lie in the
    box ``[lo, hi)`` (full-resolution (row, col), clipped to the image), computed from that box
    and a filter halo only (of a dask image, just those chunks are read); equal to the whole
    level's there."""
    shape = tuple(-(-n // c) for n in image.shape)
    k0 = [int(np.clip(-(-np.ceil(a) // c), 0, m)) for a, m in zip(lo, shape)]
    k1 = [int(np.clip(-(-np.ceil(b) // c), k, m)) for b, k, m in zip(hi, k0, shape)]
    if k1[0] == k0[0] or k1[1] == k0[1]:
        return _Window(np.zeros((0, 0), np.float32), (k0[0], k0[1]), shape)
    radius = _gauss_depth(0.5 * c) if c > 1 else 0
    start = [max(k * c - radius, 0) for k in k0]
    stop = [min((k - 1) * c + radius + 1, n) for k, n in zip(k1, image.shape)]
    read = _numpy(image[start[0] : stop[0], start[1] : stop[1]], 1)
    if c > 1:
        read = ndi.gaussian_filter(read, 0.5 * c, mode="reflect")
    first = [k * c - a for k, a in zip(k0, start)]
    return _Window(read[first[0] :: c, first[1] :: c][: k1[0] - k0[0], : k1[1] - k0[1]],
                   (k0[0], k0[1]), shape)


def _noise_sigma(image: np.ndarray) -> float:
    """Std of white noise in ``image`` (Immerkær 1996: mean |Laplacian-difference| response)."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    resp = ndi.convolve(np.asarray(image, dtype=np.float64), kernel)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(resp).mean() / 6.0)


def _texture_ratio(image: np.ndarray) -> float:
    """Band-pass (DoG σ 1–4 px) variance of ``image`` over what its own white noise would give."""
    s1, s2 = 1.0, 4.0
    band = ndi.gaussian_filter(image, s1) - ndi.gaussian_filter(image, s2)
    # Variance of G1*n − G2*n for white noise of unit variance.
    gain = 1 / (4 * np.pi * s1**2) + 1 / (4 * np.pi * s2**2) - 1 / (np.pi * (s1**2 + s2**2))
    noise = _noise_sigma(image) ** 2 * gain
    return float(band.var() / max(noise, 1e-12))


def _texture_note(lr_c: np.ndarray, hr_c: np.ndarray) -> str:
    """Why a match may be missing: names an image whose structure at the search scale is at its
    noise level (band-pass variance under 1.5× the noise's), or ''."""
    flat = [name for name, im in (("LR", lr_c), ("HR", hr_c)) if _texture_ratio(im) < 1.5]
    if not flat:
        return ""
    return (f"; the {' and '.join(flat)} image{'s are' if len(flat) > 1 else ' is'} textureless "
            "at the scale of the search (structure at the noise level)")


def _grid_samples(window: _Window, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (2, N), in the whole image, and values (N,) of the pixels of a window
    at every ``stride``-th row and column of the whole image."""
    first = [-o % stride for o in window.origin]
    image = window.image[first[0] :: stride, first[1] :: stride]
    coords = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(float) * stride
    coords += (np.array(window.origin) + first).reshape(2, 1, 1)
    return coords.reshape(2, -1), image.ravel().astype(float)


def _quadratic(w: np.ndarray) -> np.ndarray:
    """Design (..., 3) of the quadratic intensity map ``p(w) = c0 + c1 w + c2 w²``."""
    return np.stack([np.ones_like(w), w, w * w], axis=-1)


def _central(image, size: int = 2048, threads: int = 1) -> np.ndarray:
    """Central crop of at most ``size``² pixels, as a numpy array (computes a dask crop only,
    on ``threads`` threads)."""
    lo = [max(0, (n - size) // 2) for n in image.shape]
    return _numpy(image[lo[0] : lo[0] + size, lo[1] : lo[1] + size], threads)


def _block_ids(ys: np.ndarray, block: float) -> np.ndarray:
    """Index (N,) of the ``block``-px square of L that each of the coordinates (2, N) is in."""
    cell = np.floor((ys - ys.min(1, keepdims=True)) / block).astype(np.int64)
    return np.unique(cell[0] * (cell[1].max() + 1) + cell[1], return_inverse=True)[1].ravel()


def _paired_significance(values: np.ndarray, best: np.ndarray, other: np.ndarray,
                         ys: np.ndarray, block: float) -> float:
    """Significance (σ) by which the prediction ``best`` (N,) explains ``values`` (N,) (LR pixels
    at ``ys`` (2, N)) better than ``other`` (N,): the sum of the difference of their squared
    residuals over its std, cluster-robust over ``block``-px blocks. The LR's noise enters the
    difference only where the two predictions differ, so what both explain alike adds nothing
    but the noise of that difference."""
    resid = values - best
    delta = other - best
    # (L − p₂)² − (L − p₁)² = Δ² − 2Δ(L − p₁): its noise is −2Δ times the best fit's residual
    # (the LR's noise, if the best is right), summed in blocks over which that is correlated.
    noise = np.bincount(_block_ids(ys, block), weights=2 * delta * resid)
    return float(np.sum(delta**2 - 2 * delta * resid) / max(np.sqrt(np.sum(noise**2)), 1e-300))
