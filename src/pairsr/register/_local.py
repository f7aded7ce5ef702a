"""Local registration: the paper's patch search (its Eq. 1) with a sub-pixel step."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

import numpy as np
from scipy import fft
from scipy import ndimage as ndi

from pairsr.grid import BICUBIC_HALO, interpolate
from pairsr.patches import ordered_map
from pairsr.region import Region, window_sums
from pairsr.register._images import (
    _gauss_depth,
    _is_dask,
    _numpy,
    _quadratic,
)
from pairsr.register._mapping import _apply


@dataclass(frozen=True)
class _PatchSearch:
    """Parameters of the local patch search, in HR pixels and [0, 1]² intensity units."""

    size: int  # patch side
    step: int  # patch spacing
    radius: int  # search radius
    blur: float  # σ bringing HR to the LR resolution
    smooth: float = 1.0  # extra σ on both images against noise
    min_ncc: float = 0.5
    min_peak_ratio: float = 1.2
    texture_snr: float = 4.0  # texture: least signal/noise variance ratio of the blurred HR patch
    min_variance: float = 1e-6  # and least signal variance ([0, 1]² units): not flat

    def rows(self, height: int) -> int:
        """Rows of patch centres in an HR image of ``height`` px."""
        edge = self.size // 2 + self.radius
        return len(range(edge, height - edge, self.step))

    @property
    def halo(self) -> int:
        """HR pixels a window needs around its patch centres."""
        return self.size // 2 + self.radius + _gauss_depth(np.hypot(self.blur, self.smooth)) + 1


def _ncc_maps(search: np.ndarray, tmpl: np.ndarray, threads: int = 1) -> np.ndarray:
    """Batched :func:`skimage.feature.match_template`: (N, m, m) searched by (N, n, n) templates.

    Returns (N, m−n+1, m−n+1) NCC maps; 0 where the search window is flat. The FFTs run on
    ``threads`` threads.
    """
    m, n = search.shape[-1], tmpl.shape[-1]
    k = m - n + 1
    search = search.astype(np.float64)
    t0 = tmpl - tmpl.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
    # Circular cross-correlation at size m: exact for the k×k shifts that do not wrap. Float32
    # FFTs (twice as fast) suffice to place the peak; the window statistics stay in float64.
    spectrum = (fft.rfft2(search.astype(np.float32), workers=threads)
                * np.conj(fft.rfft2(t0.astype(np.float32), s=(m, m), workers=threads)))
    num = fft.irfft2(spectrum, s=(m, m), workers=threads)[:, :k, :k].astype(np.float64)
    sums = window_sums(np.stack([search, search**2]), (n, n))
    var = np.clip(sums[1] - sums[0] ** 2 / n**2, 0.0, None)
    den = np.sqrt(var * (t0**2).sum(axis=(1, 2))[:, None, None])
    return np.divide(num, den, out=np.zeros_like(num), where=den > 1e-12 * n**2)


def _peaks(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integer peak (N, 2) of each (N, k, k) map, its value, its ratio to the second-best local
    maximum (outside the peak's 3×3 neighbourhood), and whether it is off the map's border."""
    n, k, _ = maps.shape
    i, j = np.unravel_index(maps.reshape(n, -1).argmax(1), (k, k))
    peak = maps[np.arange(n), i, j]
    is_max = maps == ndi.maximum_filter(maps, size=(1, 3, 3), mode="nearest")
    rr, cc = np.ogrid[:k, :k]
    near = (np.abs(rr[None] - i[:, None, None]) <= 1) & (np.abs(cc[None] - j[:, None, None]) <= 1)
    second = np.where(is_max & ~near, maps, -np.inf).reshape(n, -1).max(1)
    ratio = np.where(second > 0, peak / np.where(second > 0, second, 1.0), np.inf)
    interior = (i > 0) & (i < k - 1) & (j > 0) & (j < k - 1)
    return np.stack([i, j], 1), peak, ratio, interior


def _patches(image: np.ndarray, top: np.ndarray, size: int) -> np.ndarray:
    """Stack (N, size, size) of the square patches of ``image`` with top-left pixels ``top``."""
    return np.lib.stride_tricks.sliding_window_view(image, (size, size))[top[:, 0], top[:, 1]]


def _batched_lstsq(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares coefficients (N, k) of (N, p, k) designs for (N, p, 1) data."""
    dt = design.transpose(0, 2, 1)
    return np.linalg.solve(dt @ design, dt @ y)[..., 0]


def _lucas_kanade(moving: np.ndarray, image: np.ndarray,
                  top: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-pixel shift δ of the n×n patches of ``image`` at ``top`` (N, 2) (top-left pixels)
    that best explains ``moving`` (N, n, n) as ``p(patch(x − δ))``, with ``p`` a quadratic
    intensity map (gain, offset, gamma): one Gauss-Newton (Lucas-Kanade) step from δ = 0, enough
    from the integer NCC peak (|δ| ≤ ½: bias < 0.01 px).

    Returns δ (N, 2), its inverse covariance (N, 2, 2) from the fit's residual, and where in
    ``image`` it applies (N, 2): the patch's centroid of gradient energy, since a shift that varies
    across the patch is measured where the patch has its texture.
    """
    n_patch, n = moving.shape[:2]
    tmpl = _patches(image, top, n).reshape(n_patch, -1).astype(float)
    grad = np.stack([_patches(g, top, n) for g in np.gradient(image)], -1).reshape(n_patch, -1, 2)
    y = moving.reshape(n_patch, -1, 1).astype(float)
    design = np.empty((n_patch, n * n, 5))
    design[..., :3] = _quadratic(tmpl)
    photo = _batched_lstsq(design[..., :3], y)  # p, to linearise p(patch(x − δ)) in δ
    design[..., 3:] = -(photo[:, 1:2] + 2 * photo[:, 2:3] * tmpl)[..., None] * grad
    coef = _batched_lstsq(design, y)
    resid_var = ((y[..., 0] - (design @ coef[..., None])[..., 0]) ** 2).sum(1) / (n * n - 5)
    cov = np.linalg.inv(design.transpose(0, 2, 1) @ design)[:, 3:, 3:] * resid_var[:, None, None]
    energy = (grad**2).sum(-1)
    cells = np.indices((n, n), dtype=float).reshape(2, -1)
    where = top + (energy @ cells.T) / energy.sum(1)[:, None]
    return coef[:, 3:], np.linalg.inv(cov), where


class _Patches(NamedTuple):
    """Results of the patch search, one row per patch."""

    position: np.ndarray  # (N, 2) HR coords a shift applies to (patch centre until searched)
    shift: np.ndarray  # (N, 2) HR px: LR coord of centre x is matrix @ (x + shift) + offset
    weight: np.ndarray  # (N, 2, 2) inverse covariance of shift, HR px⁻²
    ncc: np.ndarray  # (N,) NCC peak
    peak_ratio: np.ndarray  # (N,) best over second-best peak
    tried: np.ndarray  # (N,) bool: textured, inside the LR, searched
    accepted: np.ndarray  # (N,) bool: passed every test

    @classmethod
    def blank(cls, centres: np.ndarray) -> _Patches:
        """Results for ``centres`` with nothing tried yet."""
        n = len(centres)
        return cls(centres.astype(float), np.zeros((n, 2)), np.zeros((n, 2, 2)), np.zeros(n),
                   np.zeros(n), np.zeros(n, bool), np.zeros(n, bool))

    @classmethod
    def concatenate(cls, parts: list[_Patches]) -> _Patches:
        return cls(*(np.concatenate(column) for column in zip(*parts)))


def _search_window(
    hr_win: np.ndarray, origin: np.ndarray, lr_sub: np.ndarray, lr_origin: np.ndarray,
    matrix: np.ndarray, offset: np.ndarray, centres: np.ndarray, hr_noise: float,
    lr_shape: tuple[int, int], opts: _PatchSearch, threads: int = 1,
) -> _Patches:
    """Patch search in one HR window: the paper's Eq. 1 (NCC of an HR patch, blurred to the LR
    resolution, against the registered upsampled LR ``Ir`` around it), then a sub-pixel
    Lucas-Kanade step from the NCC peak, and the quality tests.

    ``hr_win`` starts at HR pixel ``origin``; ``lr_sub`` at LR pixel ``lr_origin`` covers the
    window's LR footprint plus the bicubic halo; ``centres`` (N, 2) are HR pixel indices whose
    patches and search regions lie inside the window. A dask ``hr_win`` is computed here; the
    FFTs run on ``threads`` threads.
    """
    n, r = opts.size, opts.radius
    hb = ndi.gaussian_filter(_numpy(hr_win, 1), np.hypot(opts.blur, opts.smooth))
    grid = np.indices(hr_win.shape, dtype=float) + origin.reshape(2, 1, 1)
    lr_coords = _apply(matrix, offset, grid) - lr_origin.reshape(2, 1, 1)
    ir = ndi.gaussian_filter(interpolate(lr_sub, lr_coords), opts.smooth)  # the paper's Ir
    top = centres - origin - n // 2
    tmpl = _patches(hb, top, n)
    # Texture: signal variance of the blurred HR patch over its (white, smoothed) noise.
    noise_var = hr_noise**2 / (4 * np.pi * (opts.blur**2 + opts.smooth**2))
    signal_var = tmpl.var(axis=(1, 2)) - noise_var
    textured = (signal_var >= opts.texture_snr * noise_var) & (signal_var >= opts.min_variance)
    # The whole search region must lie inside the LR image.
    ends = np.stack([top - r, top + n + r - 1])  # (2, N, 2): first and last pixel
    ly = np.stack([_apply(matrix, offset, np.stack([ends[a, :, 0], ends[b, :, 1]]))
                   for a in (0, 1) for b in (0, 1)])  # (4, 2, N)
    in_lr = np.all((ly >= 0) & (ly <= np.array(lr_shape)[None, :, None] - 1), axis=(0, 1))
    tried = textured & in_lr
    out = _Patches.blank(centres)
    out.tried[:] = tried
    if not tried.any():
        return out
    top = top[tried]
    search = _patches(ir, top - r, n + 2 * r)
    peak_at, peak, ratio, interior = _peaks(_ncc_maps(search, tmpl[tried], threads))
    moving = np.lib.stride_tricks.sliding_window_view(search, (n, n), axis=(1, 2))[
        np.arange(len(top)), peak_at[:, 0], peak_at[:, 1]]
    delta, weight, where = _lucas_kanade(moving, hb, top)
    out.position[tried] = where + origin
    out.shift[tried] = peak_at - r + delta
    out.weight[tried] = weight
    out.ncc[tried] = peak
    out.peak_ratio[tried] = ratio
    out.accepted[tried] = (interior & (peak >= opts.min_ncc) & (ratio >= opts.min_peak_ratio)
                           & np.all(np.abs(delta) <= 1.0, axis=1))
    return out


def _patch_results(lr: np.ndarray, hr, matrix: np.ndarray, offset: np.ndarray,
                   hr_noise: float, opts: _PatchSearch, threads: int = 1) -> _Patches:
    """Run the patch search over the HR image: one window (its FFTs on ``threads`` threads), or
    one per chunk of a dask ``hr`` (``threads`` chunks at a time, one thread each).

    Patch centres lie on a grid of step ``opts.step``; each chunk searches the centres it holds
    and reads the HR around them with a halo that covers their patches, search regions and
    blur, and the LR under that with the bicubic halo, so results do not depend on the chunking::

        +--------------------------+   read: hr[lo:hi] (halo around the centres)
        |   +------------------+   |
        |   | · · · · · · · ·  |   |   centres of this chunk (·)
        |   | · · · · · · · ·  |   |
        |   +------------------+   |   chunk
        +--------------------------+
    """
    h, w = hr.shape
    edge = opts.size // 2 + opts.radius
    axes = [np.arange(edge, n - edge, opts.step) for n in (h, w)]
    chunks = hr.chunks if _is_dask(hr) else ((h,), (w,))
    bounds = [np.cumsum((0, *c)) for c in chunks]
    jobs = []
    for r0, r1 in pairwise(bounds[0]):
        for c0, c1 in pairwise(bounds[1]):
            rows = axes[0][(axes[0] >= r0) & (axes[0] < r1)]
            cols = axes[1][(axes[1] >= c0) & (axes[1] < c1)]
            if not (len(rows) and len(cols)):
                continue
            centres = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)
            window = Region.covering(centres).pad(opts.halo, (h, w))
            (y0, x0), (y1, x1) = window.start, window.stop
            box = _apply(matrix, offset, np.array([[y0, y0, y1, y1], [x0, x1, x0, x1]], float))
            lr_window = Region.covering(box.T).pad(BICUBIC_HALO, lr.shape)
            jobs.append((window.crop(hr), np.array(window.start), lr_window.crop(lr),
                         np.array(lr_window.start), matrix, offset, centres, hr_noise, lr.shape,
                         opts))
    if not jobs:
        return _Patches.blank(np.zeros((0, 2), int))
    if _is_dask(hr):
        return _Patches.concatenate(list(ordered_map(lambda job: _search_window(*job), jobs,
                                                     threads)))
    return _Patches.concatenate([_search_window(*job, threads) for job in jobs])
