"""Physical-pair simulator: two independent scans of one specimen.

A physical LR image is *not* a blurred, downsampled HR image. Each simulated scan has its own

* geometry: pixel pitch, rotation and origin on the specimen (the HR scan covers a sub-area, about
  ``hr_fraction`` of the LR field, at ``zoom``× the pixel density, rotated by up to
  ``max_rotation_deg``, with a small magnification calibration error);
* scan distortion: a smooth random drift of every scan line (mostly along the slow-scan axis)
  plus fast-axis line jitter, in scan pixels;
* probe blur (Gaussian, wider along the fast axis for the dwell) and shot noise at its own dose
  (Poisson counts per pixel at signal 1);
* detector response: optionally inverted (a transmission or backscatter detector that counts
  what a secondary-electron one does not: signal ``1 - s``), then gain, offset and gamma, then
  8-bit quantisation.

Specimen coordinates are pixels of the specimen image ``S`` (row, col). Scan ``k`` samples pixel
``(r, c)`` at ``X = origin_k + pitch_k * R(theta_k) @ ((r, c) + drift_k(r))``, where
``drift_k(r) = (dy_k[r], dx_k[r])`` is stored per line. :func:`true_lr_coords` inverts the LR
scan to give the exact LR coordinate of every HR pixel centre; ``truth["matrix"]`` and
``truth["offset"]`` are its least-squares affine fit (``lr = matrix @ hr + offset``), the global
mapping a registration should find; the residual is the local distortion field.

``gt`` is the ideal noise-free rendering of the whole LR field on its ×``zoom`` SR output grid
(see :mod:`pairsr.grid`), with the HR scan's probe and detector response, without drift (or, with
``gt_drift``, following the LR scan's drift), so a method can be scored where no HR exists.

Specimens: a 2-D image (e.g. a real HR micrograph; one LR pixel is ``zoom / 2 · REAL_SCALE``
specimen pixels, so the HR pitch is one specimen pixel, unless the specimen is too small for an
LR field of :data:`MIN_LR_SIDE` px), or a built-in one by name
(:data:`BUILTIN`): ``"nanocomposite"`` (the default), ``"lattice"`` (a crystal lattice of atomic
columns or a nanowire-like array of discs, with aperiodic content: a precipitate, vacancies, a
thickness gradient) and ``"lattice-perfect"`` (the same lattice without any aperiodic content:
its position is ambiguous by one period, a negative control for registration).
:func:`load_specimen` reads a real micrograph as a specimen, its brightest pixel full signal
(the doses are counts at signal 1).

:func:`draw_acquisition` draws the keywords of :func:`simulate_pair` from the wide acquisition
ranges of :data:`WIDE_RANGES` that users meet.

:func:`simulate_pair` holds everything in memory. :func:`write_simulation` writes a pair of any
size: in memory as TIFF when small (:data:`MEMORY_BOUND`), else tile by tile into OME-Zarr, each
tile rendered from a window of a specimen that is evaluable by region (the built-ins procedurally,
every random value drawn per block of a fixed grid from a generator seeded by the block; a real
specimen read by window and mirrored beyond its edges) with the probes' halo, and with shot noise
seeded per :data:`NOISE_BLOCK` block, so that the result does not depend on the tiling.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pairsr.grid import sr_shape, sr_to_lr

#: Specimen pixels per LR pixel for the built-in specimens (the ×2 HR pitch is 2 specimen px).
SYNTHETIC_SCALE = 4.0
#: Specimen pixels per LR pixel for a real HR micrograph given as specimen, at zoom 2 (it scales
#: with the zoom, so that the HR pitch is one specimen pixel).
REAL_SCALE = 2.0
#: Shorter LR side, px, that a real specimen's default scale keeps when the specimen is small
#: (the scale drops below ``zoom / 2 · REAL_SCALE``, to no less than 1, to reach it).
MIN_LR_SIDE = 128
#: Specimen pixels kept around the LR field for drift and blur.
MARGIN = 16.0
#: LR pixels kept between the HR footprint and the LR field's edge for drift, when it fits.
ROOM = 4.0
#: Scan pixels a side of the blocks whose shot noise :func:`write_simulation` seeds on its own:
#: its tiles are multiples of it, so the noise does not depend on the tiling.
NOISE_BLOCK = 64
#: Largest in-memory simulation (bytes, :func:`in_memory_bytes`) that :func:`write_simulation`
#: writes as TIFF by default; larger ones are written to zarr tile by tile.
MEMORY_BOUND = 2**30
#: Names of the built-in specimens.
BUILTIN = ("nanocomposite", "lattice", "lattice-perfect")
#: Wide acquisition ranges for :func:`draw_acquisition` (log-uniform where marked).
WIDE_RANGES = {
    "zoom": (2, 3, 4),  # nominal HR/LR pixel-density ratio, one of
    "hr_side": (128, 4096),  # HR longer side, px, log-uniform
    "hr_fraction": (0.10, 1.0),  # HR field area / LR field area, log-uniform
    "rotation_deg": 8.0,  # HR scan rotation, uniform in ±
    "dose": (2.0, 200.0),  # counts per pixel at signal 1, per scan, log-uniform
    "gamma": (0.6, 1.7),  # detector gamma, per scan, log-uniform
    "inverted": 0.2,  # probability that one of the two scans (either) has an inverted detector
    "lr_side": (256, 1024),  # LR longer side when the HR size is not drawn, px, log-uniform
}
#: The parameter groups :func:`draw_acquisition` can draw from :data:`WIDE_RANGES`.
VARIABLES = ("zoom", "size", "fraction", "rotation", "dose", "gamma", "inversion")


@dataclass
class SimulatedPair:
    """One simulated physical pair.

    ``lr``: uint8 (H, W); ``hr``: uint8 (h, w); ``gt``: float32 (2H, 2W) in [0, 1] HR-detector
    units; ``truth``: JSON-serialisable geometry, scan and detector parameters; ``hr_clean``:
    float32 (h, w) in [0, 1], the HR scan as its detector saw it without shot and read noise
    (what no method can beat in expectation when scored against ``hr``); None in a pair built
    by hand.
    """

    lr: np.ndarray
    hr: np.ndarray
    gt: np.ndarray
    truth: dict = field(default_factory=dict)
    hr_clean: np.ndarray | None = None


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def nanocomposite(
    shape: tuple[int, int], rng: np.random.Generator, scale: float = 4.0
) -> np.ndarray:
    """Built-in specimen: clustered nanoparticles of varied size in a textured host matrix.

    ``shape`` in specimen pixels; ``scale`` specimen pixels per LR pixel sets the feature sizes.
    Returns float32 in [0, 1].
    """
    h, w = shape
    # Host matrix: low-contrast texture at two scales, generated coarse and zoomed up (cheap).
    coarse = (max(h // 8, 4), max(w // 8, 4))
    tex = ndi.gaussian_filter(rng.standard_normal(coarse), 3) * 4.0
    tex += ndi.gaussian_filter(rng.standard_normal(coarse), 0.8) * 1.0
    tex = ndi.zoom(tex, (h / coarse[0], w / coarse[1]), order=1)[:h, :w]
    spec = (0.22 + 0.08 * tex / (np.abs(tex).max() + 1e-6)).astype(np.float32)

    # Particles: Poisson clusters of soft spheres with log-normal radii (1-12 LR px).
    n_clusters = max(1, int(h * w / (scale**2 * 6000)))
    centres = rng.uniform((0, 0), (h, w), size=(n_clusters, 2))
    per_cluster = rng.poisson(14, n_clusters) + 1
    spread = rng.uniform(3, 25, n_clusters) * scale
    pos = np.concatenate(
        [c + rng.standard_normal((m, 2)) * s for c, m, s in zip(centres, per_cluster, spread)]
    )
    loners = rng.uniform((0, 0), (h, w), size=(n_clusters * 4, 2))
    pos = np.concatenate([pos, loners])
    radii = np.clip(rng.lognormal(np.log(2.5 * scale), 0.55, len(pos)), 0.8 * scale, 12 * scale)
    levels = rng.uniform(0.55, 0.95, len(pos))
    _draw_particles(spec, (0, 0), pos, radii, levels)
    grain = ndi.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 0.7 * scale / 4)
    spec += 0.015 * grain
    return np.clip(spec, 0.0, 1.0)


def _draw_particles(spec: np.ndarray, origin: tuple[int, int], pos: np.ndarray,
                    radii: np.ndarray, levels: np.ndarray) -> None:
    """Draw soft spheres (centres ``pos`` (n, 2), radii and grey levels (n,), specimen px) into
    ``spec`` by maximum, in place; ``spec[0, 0]`` is specimen pixel ``origin``."""
    (oy, ox), (h, w) = origin, spec.shape
    for (y, x), r, lev in zip(pos, radii, levels):
        y0, y1 = max(int(y - r - 2), oy), min(int(y + r + 3), oy + h)
        x0, x1 = max(int(x - r - 2), ox), min(int(x + r + 3), ox + w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        d2 = ((yy - y) ** 2 + (xx - x) ** 2) / r**2
        # Sphere thickness profile, 1-px soft edge, brighter rim (secondary-electron contrast).
        inside = np.clip(1.0 - d2, 0.0, 1.0)
        edge = np.clip((1.0 - np.sqrt(d2)) * r, 0.0, 1.0)
        val = lev * (0.75 + 0.25 * np.sqrt(inside) + 0.15 * (1 - inside) * edge)
        box = spec[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        np.maximum(box, (val * edge).astype(np.float32), out=box)


def _site_hash(i: np.ndarray, j: np.ndarray, salt: int) -> np.ndarray:
    """A deterministic, aperiodic value in [0, 1) per lattice site ``(i, j)`` (integer arrays)."""
    v = i.astype(np.int64).astype(np.uint64) * np.uint64(73856093)
    v ^= j.astype(np.int64).astype(np.uint64) * np.uint64(19349663)
    v ^= np.uint64(salt)
    v *= np.uint64(0x9E3779B97F4A7C15)
    return ((v >> np.uint64(40)) & np.uint64(0xFFFFFF)).astype(np.float32) / np.float32(2**24)


def _nearest_site(rows: np.ndarray, cols: np.ndarray, basis: np.ndarray, origin: np.ndarray):
    """Distance (specimen px) to the nearest site of the lattice ``origin + basis @ (i, j)``
    (``basis`` columns are the lattice vectors, in (row, col)), and that site's ``(i, j)``."""
    inv = np.linalg.inv(basis)
    y, x = rows - origin[0], cols - origin[1]
    fi, fj = np.floor(inv[0, 0] * y + inv[0, 1] * x), np.floor(inv[1, 0] * y + inv[1, 1] * x)
    best = np.full(y.shape, np.inf, dtype=np.float32)
    bi, bj = np.zeros(y.shape, np.int64), np.zeros(y.shape, np.int64)
    for di in (0, 1):
        for dj in (0, 1):
            i, j = fi + di, fj + dj
            d2 = ((y - basis[0, 0] * i - basis[0, 1] * j) ** 2
                  + (x - basis[1, 0] * i - basis[1, 1] * j) ** 2)
            closer = d2 < best
            best = np.where(closer, d2, best)
            bi, bj = np.where(closer, i, bi), np.where(closer, j, bj)
    return np.sqrt(best), bi, bj


def _lattice_basis(period: float, angle: float, hexagonal: bool) -> np.ndarray:
    second = angle + (np.pi / 3 if hexagonal else np.pi / 2)
    return period * np.array([[np.sin(angle), np.sin(second)], [np.cos(angle), np.cos(second)]])


def _lattice_image(rows, cols, basis, origin, profile, amplitude=None) -> np.ndarray:
    d, i, j = _nearest_site(rows, cols, basis, origin)
    out = profile(d)
    return out if amplitude is None else out * amplitude(i, j)


class _Lattice:
    """A lattice specimen as :func:`lattice` draws it, evaluable on any window of specimen px.

    ``tiled``: the thickness gradient is a seeded smooth field defined everywhere
    (:func:`_smooth_noise`) instead of one drawn for the field ``shape``.
    """

    def __init__(self, shape: tuple[int, int], rng: np.random.Generator, scale: float,
                 perfect: bool, tiled: bool = False):
        h, w = shape
        self.wires = rng.random() < 0.4
        period = rng.uniform(10.0, 24.0) if self.wires else rng.uniform(4.0, 8.0)
        period *= scale
        hexagonal = bool(rng.random() < 0.5)
        self.basis = _lattice_basis(period, rng.uniform(0, np.pi), hexagonal)
        self.origin = rng.uniform(0, period, 2)
        self.size = period * (rng.uniform(0.25, 0.35) if self.wires else rng.uniform(0.12, 0.2))
        self.salt = int(rng.integers(2**32))
        self.perfect = perfect
        if perfect:
            return
        if tiled:
            key = int(rng.integers(2**63))
            # The in-memory field's maximum is about 3 of its standard deviations.
            self.thickness = lambda rows, cols: _smooth_noise(key, 4, rows, cols, 64, (1.0,),
                                                              (1.0,)) / 3.0
        else:
            coarse = (max(h // 64, 4), max(w // 64, 4))
            field = ndi.zoom(ndi.gaussian_filter(rng.standard_normal(coarse), 1.0),
                             (h / coarse[0], w / coarse[1]), order=1)[:h, :w]
            field = field / (np.abs(field).max() + 1e-6)
            self.thickness = lambda rows, cols: field[rows[0]:rows[1], cols[0]:cols[1]]
        # Precipitate: another lattice inside a soft-edged ellipse.
        self.semi = rng.uniform(0.04, 0.1, 2) * min(h, w)
        reach = self.semi.max()
        self.centre = rng.uniform((reach, reach), (h - reach, w - reach))
        self.tilt = rng.uniform(0, np.pi)
        self.box = (int(self.centre[0] - reach - 2), int(self.centre[0] + reach + 3),
                    int(self.centre[1] - reach - 2), int(self.centre[1] + reach + 3))
        self.other = _lattice_basis(period * rng.uniform(1.1, 1.4), rng.uniform(0, np.pi),
                                    not hexagonal)
        self.scale = scale

    def profile(self, d: np.ndarray) -> np.ndarray:
        if self.wires:  # soft disc, 1 specimen px edge, brighter rim
            inside = np.clip(self.size - d + 0.5, 0.0, 1.0)
            return inside * (0.7 + 0.3 * np.clip(d / self.size, 0, 1) ** 4)
        return np.exp(-0.5 * (d / self.size) ** 2)  # Gaussian column

    def amplitude(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        u = _site_hash(i, j, self.salt)
        return np.where(_site_hash(j, i, self.salt ^ 0x5A5A) < 0.015, 0.0, 0.92 + 0.16 * u)

    def __call__(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """The specimen on pixels ``rows[0]:rows[1]`` × ``cols[0]:cols[1]``, float32 in [0, 1]."""
        (y0, y1), (x0, x1) = rows, cols
        r, c = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        if self.perfect:
            spec = 0.12 + 0.6 * _lattice_image(r, c, self.basis, self.origin, self.profile)
            return np.clip(spec, 0.0, 1.0).astype(np.float32)
        thickness = self.thickness(rows, cols)
        spec = (0.12 + 0.04 * thickness
                + 0.6 * (1 + 0.1 * thickness) * _lattice_image(r, c, self.basis, self.origin,
                                                               self.profile, self.amplitude))
        by0, by1 = max(self.box[0], y0), min(self.box[1], y1)
        bx0, bx1 = max(self.box[2], x0), min(self.box[3], x1)
        if by0 < by1 and bx0 < bx1:
            part = (slice(by0 - y0, by1 - y0), slice(bx0 - x0, bx1 - x0))
            ry, rx = r[part] - self.centre[0], c[part] - self.centre[1]
            cos, sin = np.cos(self.tilt), np.sin(self.tilt)
            ell = np.hypot((ry * cos + rx * sin) / self.semi[0],
                           (-ry * sin + rx * cos) / self.semi[1])
            mask = np.clip((1.0 - ell) * self.semi.min() / self.scale, 0.0, 1.0)  # 1 LR px edge
            inner = 0.2 + 0.7 * _lattice_image(r[part], c[part], self.other, self.origin,
                                               self.profile)
            spec[part] = (1 - mask) * spec[part] + mask * inner
        return np.clip(spec, 0.0, 1.0).astype(np.float32)


def lattice(
    shape: tuple[int, int], rng: np.random.Generator, scale: float = 4.0, *, perfect: bool = False
) -> np.ndarray:
    """Built-in periodic specimen: atomic columns (HAADF-STEM-like, period 4-8 LR px) or a
    nanowire-like array of discs with a bright rim (period 10-24 LR px), on a square or
    hexagonal lattice of random orientation.

    Unless ``perfect``: a site-to-site intensity spread of ±8 %, 1.5 % vacancies, a precipitate
    (an ellipse 8-20 % of the field across with a rotated lattice of another period, brighter)
    and a slow thickness gradient: the aperiodic content that fixes the position. ``shape`` in
    specimen pixels, ``scale`` specimen pixels per LR pixel. Returns float32 in [0, 1].
    """
    return _Lattice(shape, rng, scale, perfect)((0, shape[0]), (0, shape[1]))


def builtin_specimen(
    name: str, shape: tuple[int, int], rng: np.random.Generator, scale: float = SYNTHETIC_SCALE
) -> np.ndarray:
    """The built-in specimen ``name`` (one of :data:`BUILTIN`), ``shape`` in specimen pixels,
    ``scale`` specimen pixels per LR pixel; float32 in [0, 1]."""
    if name == "nanocomposite":
        return nanocomposite(shape, rng, scale)
    if name in ("lattice", "lattice-perfect"):
        return lattice(shape, rng, scale, perfect=name == "lattice-perfect")
    raise ValueError(f"unknown built-in specimen {name!r}; choose one of {', '.join(BUILTIN)}")


# ----------------------------------------------------------------------------- by region
# The tiled writer evaluates the specimen on windows: every random value is drawn per block of a
# fixed grid from a generator seeded by the block's index, so a pixel's value does not depend on
# the window that contains it.


def _seeded(key: int, *words: int) -> np.random.Generator:
    """A generator seeded by ``key`` and integer ``words`` (block indices, possibly negative)."""
    return np.random.default_rng([key, *(w % 2**32 for w in words)])


def _block_normals(key: int, stream: int, rows: tuple[int, int], cols: tuple[int, int],
                   block: int) -> np.ndarray:
    """Standard normals (float32) on grid points ``rows[0]:rows[1]`` × ``cols[0]:cols[1]``,
    drawn per ``block`` × ``block`` points from :func:`_seeded` ``(key, stream, block index)``."""
    (r0, r1), (c0, c1) = rows, cols
    out = np.empty((r1 - r0, c1 - c0), np.float32)
    for bi in range(r0 // block, (r1 - 1) // block + 1):
        for bj in range(c0 // block, (c1 - 1) // block + 1):
            values = _seeded(key, stream, bi, bj).standard_normal((block, block), np.float32)
            y0, y1 = max(r0, bi * block), min(r1, (bi + 1) * block)
            x0, x1 = max(c0, bj * block), min(c1, (bj + 1) * block)
            out[y0 - r0:y1 - r0, x0 - c0:x1 - c0] = values[y0 - bi * block:y1 - bi * block,
                                                           x0 - bj * block:x1 - bj * block]
    return out


def _filtered_std(sigma: float, truncate: float = 4.0) -> float:
    """Standard deviation of unit white noise after ndimage's 2-D Gaussian filter ``sigma``."""
    x = np.arange(-int(truncate * sigma + 0.5), int(truncate * sigma + 0.5) + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return float(((k / k.sum()) ** 2).sum())


def _smooth_noise(key: int, stream: int, rows: tuple[int, int], cols: tuple[int, int],
                  spacing: int, sigmas: tuple[float, ...], weights: tuple[float, ...]
                  ) -> np.ndarray:
    """A smooth random field (float32, unit standard deviation at the nodes) on specimen pixels
    ``rows`` × ``cols``: white noise on nodes every ``spacing`` px, one field per Gaussian
    ``sigmas`` (in nodes) summed with ``weights``, interpolated bilinearly between nodes."""
    nodes = [(a // spacing, (b - 1) // spacing + 2) for a, b in (rows, cols)]
    halo = max(int(4.0 * s + 0.5) for s in sigmas)
    size = tuple(n1 - n0 for n0, n1 in nodes)
    field = np.zeros(size, np.float32)
    for k, (sigma, weight) in enumerate(zip(sigmas, weights, strict=True)):
        white = _block_normals(key, stream + k, *((n0 - halo, n1 + halo) for n0, n1 in nodes),
                               64)
        field += weight * ndi.gaussian_filter(white, sigma)[halo:halo + size[0],
                                                             halo:halo + size[1]]
    field /= np.sqrt(sum((w * _filtered_std(s)) ** 2 for s, w in zip(sigmas, weights)))
    for axis, ((a, b), (n0, _)) in enumerate(zip((rows, cols), nodes)):
        f = np.arange(a, b) / spacing - n0
        i = np.floor(f).astype(np.intp)
        t = (f - i).astype(np.float32).reshape((-1, 1) if axis == 0 else (1, -1))
        field = (np.take(field, i, axis) * (1 - t) + np.take(field, i + 1, axis) * t)
    return field


class _Nanocomposite:
    """The built-in nanocomposite (:func:`nanocomposite`'s texture, particles and grain), drawn
    by region: particles per cell of 128 LR px, noise per block, all seeded from ``rng``."""

    def __init__(self, rng: np.random.Generator, scale: float):
        self.key, self.scale = int(rng.integers(2**63)), float(scale)

    def _particles(self, rows: tuple[int, int], cols: tuple[int, int]):
        s = self.scale
        cell, reach = 128 * s, 87 * s + 3  # a cluster's spread is cut at 3 of its 3-25 LR px
        found = []
        for ci in range(int(np.floor((rows[0] - reach) / cell)),
                        int(np.floor((rows[1] + reach) / cell)) + 1):
            for cj in range(int(np.floor((cols[0] - reach) / cell)),
                            int(np.floor((cols[1] + reach) / cell)) + 1):
                rng = _seeded(self.key, 3, ci, cj)
                lo = np.array([ci, cj]) * cell
                n = rng.poisson(cell**2 / (s**2 * 6000))
                centres = rng.uniform(lo, lo + cell, size=(n, 2))
                per_cluster = rng.poisson(14, n) + 1
                spread = np.repeat(rng.uniform(3, 25, n) * s, per_cluster)[:, None]
                offsets = rng.standard_normal((per_cluster.sum(), 2))
                pos = (np.repeat(centres, per_cluster, axis=0) + offsets * spread)[
                    np.abs(offsets).max(1, initial=0) <= 3]
                pos = np.concatenate([pos, rng.uniform(lo, lo + cell, size=(n * 4, 2))])
                radii = np.clip(rng.lognormal(np.log(2.5 * s), 0.55, len(pos)), 0.8 * s, 12 * s)
                levels = rng.uniform(0.55, 0.95, len(pos))
                found.append((pos, radii, levels))
        pos, radii, levels = (np.concatenate(x) for x in zip(*found))
        near = ((pos[:, 0] + radii + 3 > rows[0]) & (pos[:, 0] - radii - 2 < rows[1])
                & (pos[:, 1] + radii + 3 > cols[0]) & (pos[:, 1] - radii - 2 < cols[1]))
        return pos[near], radii[near], levels[near]

    def __call__(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """The specimen on pixels ``rows[0]:rows[1]`` × ``cols[0]:cols[1]``, float32 in [0, 1]."""
        tex = _smooth_noise(self.key, 0, rows, cols, 8, (3.0, 0.8), (4.0, 1.0))
        spec = 0.22 + 0.02 * tex  # 0.08 / 4: the in-memory field's maximum is about 4 std
        _draw_particles(spec, (rows[0], cols[0]), *self._particles(rows, cols))
        # Grain: white noise with the in-memory grain's variance (its 0.7·scale/4 px filter is
        # left to the probe blurs, which are wider).
        grain = _block_normals(self.key, 2, rows, cols, 256)
        grain *= 0.015 * _filtered_std(0.7 * self.scale / 4)
        spec += grain
        return np.clip(spec, 0.0, 1.0)


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """``index`` folded into ``0..n-1`` by half-sample reflections (ndimage's ``"reflect"``),
    repeating with period ``2n``."""
    m = np.mod(index, 2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


class _ArraySource:
    """A specimen image (numpy, dask or DataArray) read by window, mirrored beyond its edges;
    integer images are scaled to [0, 1] by their dtype (:func:`pairsr.io.to_float32`)."""

    def __init__(self, image):
        self.image = image
        self.shape = tuple(int(n) for n in np.shape(image))

    def __call__(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        from pairsr.io import to_float32

        (iy, ix) = (_mirror(np.arange(a, b), n) for (a, b), n in zip((rows, cols), self.shape))
        block = self.image[iy.min():iy.max() + 1, ix.min():ix.max() + 1]
        return to_float32(block)[np.ix_(iy - iy.min(), ix - ix.min())]


def _region_specimen(name: str, shape: tuple[int, int], rng: np.random.Generator,
                     scale: float):
    """The built-in specimen ``name`` as a callable ``(rows, cols) -> window``."""
    if name == "nanocomposite":
        return _Nanocomposite(rng, scale)
    return _Lattice(shape, rng, scale, perfect=name == "lattice-perfect", tiled=True)


def _drift(n_lines: int, rng: np.random.Generator, amplitude: float, jitter: float) -> np.ndarray:
    """Per-line scan distortion (2, n_lines) in scan px: smooth random drift + fast-axis jitter."""
    t = np.linspace(0.0, 1.0, n_lines)
    out = np.zeros((2, n_lines))
    for axis, amp in ((0, amplitude), (1, 0.6 * amplitude)):
        # A random smooth curve: a few low-frequency sinusoids plus a linear creep.
        k = np.arange(1, 5)
        coef = rng.standard_normal(4) / k**1.5
        phase = rng.uniform(0, 2 * np.pi, 4)
        curve = (coef[:, None] * np.sin(2 * np.pi * k[:, None] * t / 2 + phase[:, None])).sum(0)
        curve += rng.standard_normal() * t
        curve -= curve.mean()
        out[axis] = amp * curve / (np.abs(curve).max() + 1e-12)
    out[1] += jitter * rng.standard_normal(n_lines)
    return out


def _to_specimen(scan: dict, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Specimen coordinates (2, ...) of scan pixel coordinates ``rows``, ``cols``."""
    a = scan["pitch"] * _rotation(scan["rotation_deg"])
    x = np.tensordot(a, np.stack([rows, cols]), axes=1)
    return x + np.asarray(scan["origin"], dtype=float).reshape(2, *([1] * rows.ndim))


def _scan_positions(scan: dict, shape: tuple[int, int],
                    region: tuple[slice, slice] = (slice(None), slice(None))) -> np.ndarray:
    """Specimen coordinates (2, h, w) sampled by a scan's pixel centres, drift included: the
    scan's ``shape`` field, or its pixels ``region`` (rows, cols slices, steps allowed)."""
    dy, dx = np.asarray(scan["drift"])
    lines = np.arange(shape[0])[region[0]]
    cols = np.arange(shape[1], dtype=float)[region[1]]
    rows = lines.astype(float)[:, None] + dy[lines, None] + np.zeros((1, len(cols)))
    return _to_specimen(scan, rows, cols[None, :] + dx[lines, None])


def _gt_positions(lr_scan: dict, lr_shape: tuple[int, int], z: int, gt_drift: bool,
                  region: tuple[slice, slice] = (slice(None), slice(None))) -> np.ndarray:
    """Specimen coordinates (2, ...) of the ×``z`` SR grid's pixel centres (``region``: SR pixel
    slices), following the LR scan's drift if ``gt_drift``."""
    gshape = sr_shape(lr_shape, z)
    g_rows, g_cols = np.meshgrid(sr_to_lr(np.arange(gshape[0])[region[0]], z),
                                 sr_to_lr(np.arange(gshape[1])[region[1]], z), indexing="ij")
    if gt_drift:
        dy, dx = np.asarray(lr_scan["drift"])
        lines = np.arange(lr_shape[0], dtype=float)
        g_rows, g_cols = g_rows + np.interp(g_rows, lines, dy), g_cols + np.interp(g_rows, lines,
                                                                                    dx)
    return _to_specimen(lr_scan, g_rows, g_cols)


def _render(blurred: np.ndarray, coords: np.ndarray) -> np.ndarray:
    return ndi.map_coordinates(blurred, coords, order=1, mode="nearest").astype(np.float32)


def _blur_sigma(scan: dict) -> tuple[float, float]:
    """A scan's probe blur (rows, cols) in specimen px."""
    sy, sx = scan["blur_sigma"]
    return sy * scan["pitch"], sx * scan["pitch"]


def _blur(spec: np.ndarray, scan: dict) -> np.ndarray:
    return ndi.gaussian_filter(spec, _blur_sigma(scan), truncate=3.0)


def _render_window(source, views: list[tuple[dict, np.ndarray]]) -> list[np.ndarray]:
    """Render each ``(scan, coords)`` of ``views`` (coords: specimen (2, ...)) through that scan's
    probe from one window of ``source`` (a callable ``(rows, cols) -> window``) that holds them
    all with the blur's halo: equal to :func:`_render` of the whole blurred specimen."""
    halo = max(int(3.0 * s + 0.5) for scan, _ in views for s in _blur_sigma(scan)) + 2
    lo = np.min([c.reshape(2, -1).min(1) for _, c in views], axis=0)
    hi = np.max([c.reshape(2, -1).max(1) for _, c in views], axis=0)
    start = np.floor(lo).astype(int) - halo
    stop = np.ceil(hi).astype(int) + halo + 1
    window = source((start[0], stop[0]), (start[1], stop[1]))
    shift = start.astype(float).reshape(2, *([1] * (views[0][1].ndim - 1)))
    return [_render(_blur(window, scan), coords - shift) for scan, coords in views]


def _shot_noise(signal: np.ndarray, scan: dict, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts at ``dose`` per unit signal, plus Gaussian read noise."""
    signal = rng.poisson(np.clip(signal, 0, None) * scan["dose"]) / scan["dose"]
    return signal + scan["read_noise"] * rng.standard_normal(signal.shape)


def _block_noise(key: int, stream: int, origin: tuple[int, int]):
    """Shot noise for a scan region whose pixel (0, 0) is scan pixel ``origin`` (multiples of
    :data:`NOISE_BLOCK`), drawn per block of :data:`NOISE_BLOCK` px from :func:`_seeded`
    ``(key, stream, block)``: the same whatever the tiling. A ``noise`` for :func:`_detect`."""
    b = NOISE_BLOCK
    if origin[0] % b or origin[1] % b:
        raise ValueError(f"tile origin {origin} is not on the {b}-px noise grid")

    def noise(signal: np.ndarray, scan: dict) -> np.ndarray:
        out = np.empty(signal.shape)
        for i in range(0, signal.shape[0], b):
            for j in range(0, signal.shape[1], b):
                rng = _seeded(key, stream, (origin[0] + i) // b, (origin[1] + j) // b)
                out[i:i + b, j:j + b] = _shot_noise(signal[i:i + b, j:j + b], scan, rng)
        return out

    return noise


def _detect(signal: np.ndarray, scan: dict, noise=None) -> np.ndarray:
    """Detector: optional inversion, ``noise(signal, scan)`` (e.g. :func:`_shot_noise` with a
    generator; None: noise-free), gamma, gain and offset."""
    if scan.get("inverted", False):
        signal = 1.0 - np.clip(signal, 0.0, 1.0)
    if noise is not None:
        signal = noise(signal, scan)
    signal = np.clip(signal, 0.0, None) ** scan["gamma"]
    return (scan["gain"] * signal + scan["offset"]).astype(np.float32)


def _random_scan(rng: np.random.Generator, pitch: float, rotation_deg: float, n_lines: int) -> dict:
    blur = rng.uniform(0.45, 0.8)
    return {
        "pitch": pitch,
        "rotation_deg": rotation_deg,
        "blur_sigma": [blur, blur * rng.uniform(1.0, 1.25)],  # scan pixels; wider along fast axis
        "dose": float(rng.uniform(15.0, 60.0)),  # counts per pixel at signal 1
        "read_noise": float(rng.uniform(0.005, 0.02)),
        "gain": float(rng.uniform(0.65, 0.95)),
        "offset": float(rng.uniform(0.02, 0.12)),
        "gamma": float(rng.uniform(0.8, 1.25)),
        "drift": _drift(n_lines, rng, rng.uniform(0.3, 1.2), rng.uniform(0.03, 0.12)).tolist(),
        "inverted": False,
    }


def load_specimen(path: str | Path, *, crop: str | tuple[slice, slice] | None = None,
                  auto_crop: bool = True):
    """A real micrograph as a specimen: :func:`pairsr.io.read_image` (``crop``, ``auto_crop``
    as there), float32, scaled so that its brightest pixel is full signal (1).

    The simulated doses are counts per pixel at signal 1, so a specimen's brightest structure
    must be near it: a 16-bit file's counts may fill a small part of its range (a low-dose TEM
    frame about 1.7 %), which would simulate a blank field of read noise. Returns a
    ``("y", "x")`` DataArray; a zarr store stays lazy (only its maximum is computed).
    """
    from pairsr.io import read_image, to_float32

    image = read_image(path, crop=crop, auto_crop=auto_crop)
    data = image.data
    if hasattr(data, "map_blocks"):  # dask
        data = data.map_blocks(to_float32, dtype=np.float32)
    else:
        data = to_float32(data)
    peak = float(data.max())
    if not peak > 0:
        raise ValueError(f"{path}: the specimen has no signal (its brightest pixel is {peak:g})")
    return image.copy(data=data / np.float32(peak))


def default_scale(specimen_shape: tuple[int, int] | None, zoom: float) -> float:
    """Specimen pixels per LR pixel that :func:`simulate_pair` uses by default: 4 for a built-in
    specimen (``specimen_shape`` None); for a real one ``zoom / 2 · REAL_SCALE`` (an HR pitch of
    one specimen pixel), less (down to 1) where that would leave the LR field's shorter side under
    :data:`MIN_LR_SIDE` px."""
    if specimen_shape is None:
        return SYNTHETIC_SCALE
    room = (min(specimen_shape) - 2 * MARGIN) / MIN_LR_SIDE
    return float(max(1.0, min(REAL_SCALE * zoom / 2, room)))


def _hr_from_fraction(lr_shape: tuple[int, int], hr_fraction: float, zoom: float):
    side = np.sqrt(hr_fraction)
    return (int(round(lr_shape[0] * side * zoom)), int(round(lr_shape[1] * side * zoom)))


def _fits(lr_shape, hr_shape, zoom: float, rotation_deg: float) -> bool:
    """Whether an HR field rotated by up to ``rotation_deg`` fits inside the LR field with
    :data:`ROOM` LR px to spare on every side (for any magnification error under 1 %)."""
    c, s = abs(np.cos(np.deg2rad(rotation_deg))), abs(np.sin(np.deg2rad(rotation_deg)))
    h, w = (n / (0.99 * zoom) for n in hr_shape)
    spare = 1 + 2 * ROOM
    return h * c + w * s <= lr_shape[0] - spare and w * c + h * s <= lr_shape[1] - spare


def _overhang_pad(lr_shape, hr_shape, zoom: float, scale: float, rotation_deg: float,
                  inside: float | None) -> float:
    """Specimen px by which the HR field can reach beyond the LR field (plus :data:`ROOM` LR
    px): ``(1 - inside)`` of its extent when placed partly outside, else half its excess over the
    LR field when centred on it."""
    t = np.deg2rad(min(abs(rotation_deg), 45.0))
    h, w = (n * scale / (0.99 * zoom) for n in hr_shape)
    extent = np.array([h * np.cos(t) + w * np.sin(t), w * np.cos(t) + h * np.sin(t)])
    if inside is None:
        reach = float(np.max(extent - np.asarray(lr_shape) * scale)) / 2
    else:
        reach = (1.0 - inside) * float(extent.max())
    return float(np.ceil(max(reach, 0.0) + ROOM * scale))


def _inside_fraction(origin, a_hr, hr_shape, lr_origin, lr_pitch, lr_shape) -> float:
    """Fraction of the HR field (drift ignored) that lies inside the LR field."""
    rows, cols = np.meshgrid(np.linspace(-0.5, hr_shape[0] - 0.5, 33),
                             np.linspace(-0.5, hr_shape[1] - 0.5, 33), indexing="ij")
    x = np.tensordot(a_hr, np.stack([rows, cols]), axes=1) + np.asarray(origin)[:, None, None]
    p = (x - np.asarray(lr_origin)[:, None, None]) / lr_pitch
    inside = [(p[k] >= -0.5) & (p[k] <= n - 0.5) for k, n in enumerate(lr_shape)]
    return float(np.mean(inside[0] & inside[1]))


def _place_partly_outside(a_hr, hr_shape, lr_origin, lr_pitch, lr_shape, inside: float | None,
                          rng: np.random.Generator) -> list[float]:
    """HR origin putting the fraction ``inside`` of the HR field inside the LR field, shifted
    from the centre along a random direction (``None``, or more than the centred HR allows:
    centred)."""
    centre = np.asarray(lr_origin) + (np.asarray(lr_shape) - 1) / 2 * lr_pitch
    centred = centre - a_hr @ ((np.asarray(hr_shape) - 1) / 2)
    args = (a_hr, hr_shape, lr_origin, lr_pitch, lr_shape)
    if inside is None or _inside_fraction(centred, *args) <= inside:
        return centred.tolist()
    angle = rng.uniform(0, 2 * np.pi)
    u = np.array([np.sin(angle), np.cos(angle)])
    lo, hi = 0.0, float(np.abs(a_hr).sum() * max(hr_shape) + lr_pitch * max(lr_shape))
    for _ in range(40):  # bisection: the inside fraction falls as the HR moves out
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _inside_fraction(centred + mid * u, *args) > inside else (lo, mid)
    return (centred + 0.5 * (lo + hi) * u).tolist()


def simulate_pair(
    specimen: np.ndarray | str | None = None,
    *,
    lr_shape: tuple[int, int] | None = None,
    seed: int = 0,
    zoom: float = 2.0,
    hr_fraction: float = 0.25,
    max_rotation_deg: float = 2.0,
    zoom_error: float = 0.005,
    scale: float | None = None,
    specimen_pixel_nm: float = 1.0,
    hr_shape: tuple[int, int] | None = None,
    rotation_deg: float | None = None,
    hr_inside: float | None = None,
    lr_dose: float | None = None,
    hr_dose: float | None = None,
    lr_gamma: float | None = None,
    hr_gamma: float | None = None,
    lr_inverted: bool = False,
    hr_inverted: bool = False,
    gt_drift: bool = False,
) -> SimulatedPair:
    """Simulate an LR scan of a whole field and an independent HR scan of a sub-area.

    Keywords left at their defaults are drawn from the seed (scan parameters) or take the
    documented default; the draws do not depend on which keywords are given, so a keyword changes
    only what it names.

    Parameters
    ----------
    specimen
        2-D float image in [0, 1] (e.g. a real HR micrograph), a built-in specimen's name
        (:data:`BUILTIN`), or None for the built-in nanocomposite.
    lr_shape
        LR field (rows, cols); default (944, 1280) for a built-in specimen, else the largest
        field the specimen covers at ``scale``.
    zoom
        Nominal HR/LR pixel-density ratio ≥ 1.5; the true one differs by up to ``zoom_error``
        (relative). ``gt`` is on the SR grid of its nearest integer (halves rounded up, as
        :func:`pairsr.api.pair_zoom` rounds a pixel-size ratio), so a fractional zoom simulates
        a pair whose SR factor differs from its pixel-size ratio.
    hr_fraction
        HR field area as a fraction of the LR field (ignored when ``hr_shape`` is given).
    max_rotation_deg
        The HR scan's rotation is drawn uniformly in ± this (ignored when ``rotation_deg`` is
        given).
    scale
        Specimen pixels per LR pixel (default: :func:`default_scale`).
    specimen_pixel_nm
        Specimen pixel size; sets the LR and HR pixel sizes written with the images.
    hr_shape
        HR image (rows, cols) in HR pixels.
    rotation_deg
        The HR scan's rotation, degrees.
    hr_inside
        Fraction of the HR field's area to place inside the LR field (the HR lies partly
        outside it, on a specimen that extends beyond it). Default: all of it, anywhere in the
        field, when the HR fits with :data:`ROOM` LR px to spare, else centred on the field.
    lr_dose, hr_dose
        Each scan's dose, counts per pixel at signal 1 (default drawn in 15-60).
    lr_gamma, hr_gamma
        Each scan's detector gamma (default drawn in 0.8-1.25).
    lr_inverted, hr_inverted
        The scan's detector sees the inverted signal ``1 - s`` (e.g. a transmission or
        backscatter LR against a secondary-electron HR).
    gt_drift
        Render ``gt`` where the LR scan actually sampled the specimen (its drift included,
        interpolated between scan lines): the reference for a super-resolution of that very scan.
        Default: the drift-free geometry of the LR field.
    """
    keywords = {k: v for k, v in locals().items() if k != "specimen"}
    plan = _plan(specimen, keywords, tiled=False)
    spec, lr_scan, hr_scan, t = plan.specimen, plan.lr_scan, plan.hr_scan, plan.truth
    lr_shape, hr_shape = tuple(t["lr_shape"]), tuple(t["hr_shape"])
    noise = partial(_shot_noise, rng=plan.rng)
    lr_blur = _blur(spec, lr_scan)
    lr = _detect(_render(lr_blur, _scan_positions(lr_scan, lr_shape)), lr_scan, noise)
    del lr_blur
    hr_blur = _blur(spec, hr_scan)
    hr_signal = _render(hr_blur, _scan_positions(hr_scan, hr_shape))
    hr, hr_clean = _detect(hr_signal, hr_scan, noise), _detect(hr_signal, hr_scan)
    del hr_signal
    # Ground truth on the SR grid of the LR field: HR probe and detector, no drift, no noise.
    gt = _detect(_render(hr_blur, _gt_positions(lr_scan, lr_shape, plan.z, gt_drift)), hr_scan)
    return SimulatedPair(lr=_to_u8(lr), hr=_to_u8(hr), gt=np.clip(gt, 0, 1), truth=t,
                         hr_clean=np.clip(hr_clean, 0, 1))


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


@dataclass
class _Plan:
    """A drawn acquisition: the specimen (an array, or a callable ``(rows, cols) -> window``),
    both scans, the SR factor ``z`` and the truth; ``rng`` continues the seed's draws."""

    specimen: object
    lr_scan: dict
    hr_scan: dict
    z: int
    truth: dict
    rng: np.random.Generator


def _layout(specimen, kw: dict, tiled: bool) -> dict:
    """Field sizes (no draws): ``lr_shape``, ``hr_shape``, ``pad`` (specimen px the HR may reach
    beyond the LR field), ``scale``, the specimen's ``shape``, ``name`` (built-in) or None, and
    ``mirrored``: why a real specimen is mirrored (``tiled`` only; else refused), or None."""
    zoom, hr_inside = kw["zoom"], kw["hr_inside"]
    if not zoom >= 1.5:
        raise ValueError(f"zoom must be at least 1.5 (an SR factor of 2 or more), got {zoom}")
    if hr_inside is not None and not 0.0 < hr_inside <= 1.0:
        raise ValueError(f"hr_inside must be in (0, 1], got {hr_inside}")
    builtin = specimen is None or isinstance(specimen, str)
    scale = kw["scale"]
    if scale is None:
        scale = default_scale(None if builtin else np.shape(specimen), zoom)
    rotation_bound = (kw["max_rotation_deg"] if kw["rotation_deg"] is None
                      else abs(kw["rotation_deg"]))

    def shapes(lr):
        hr = (tuple(int(n) for n in kw["hr_shape"]) if kw["hr_shape"]
              else _hr_from_fraction(lr, kw["hr_fraction"], zoom))
        if hr_inside is None and _fits(lr, hr, zoom, rotation_bound):
            return hr, 0.0
        return hr, _overhang_pad(lr, hr, zoom, scale, rotation_bound, hr_inside)

    lr_shape, name, mirrored = kw["lr_shape"], None, None
    if builtin:
        name = specimen or "nanocomposite"
        if name not in BUILTIN:
            raise ValueError(f"unknown built-in specimen {name!r}; choose one of "
                             f"{', '.join(BUILTIN)}")
        lr_shape = tuple(lr_shape or (944, 1280))
        hr_shape, pad = shapes(lr_shape)
        spec_shape = tuple(int(np.ceil(n * scale + 2 * (MARGIN + pad))) for n in lr_shape)
    else:
        spec_shape = tuple(int(n) for n in np.shape(specimen))
        if len(spec_shape) != 2:
            raise ValueError(f"specimen must be a 2-D image, got shape {spec_shape}")
        fit = tuple(int((n - 2 * MARGIN) // scale) for n in spec_shape)
        if lr_shape is None:
            lr_shape = fit
            hr_shape, pad = shapes(lr_shape)
            if pad:  # shrink the field so that the HR's overhang is on the specimen too
                lr_shape = tuple(max(int((n - 2 * (MARGIN + pad)) // scale), 0)
                                 for n in spec_shape)
                hr_shape = shapes(lr_shape)[0]  # smaller than before: the pad still holds it
        else:
            hr_shape, pad = shapes(tuple(lr_shape))
        room = tuple(int((n - 2 * (MARGIN + pad)) // scale) for n in spec_shape)
        if lr_shape[0] > room[0] or lr_shape[1] > room[1] or min(lr_shape) < 32:
            message = (
                f"specimen of shape {spec_shape} covers at most an LR field of {room} at "
                f"scale {scale}"
                + (f" with {pad:.0f} px around it for the HR to lie partly outside" if pad
                   else "") + f"; asked for {tuple(lr_shape)}"
            )
            if min(lr_shape) < 32:
                raise ValueError(message)
            if not tiled:
                raise ValueError(f"{message} (`pairsr simulate --format zarr` mirrors it beyond "
                                 "its edges)")
            mirrored = (f"{message}: mirrored beyond its edges (the field repeats every "
                        f"{2 * spec_shape[0] / scale:.0f} x {2 * spec_shape[1] / scale:.0f} LR px)")
    lr_shape = (int(lr_shape[0]), int(lr_shape[1]))
    if min(hr_shape) < 16:
        raise ValueError(f"the HR image would be {hr_shape} px; raise hr_fraction or hr_shape")
    return {"lr_shape": lr_shape, "hr_shape": hr_shape, "pad": pad, "scale": scale,
            "shape": spec_shape, "name": name, "mirrored": mirrored}


def _plan(specimen, kw: dict, tiled: bool) -> _Plan:
    """Draw the specimen and both scans from ``kw["seed"]`` (:func:`simulate_pair`'s keywords);
    ``tiled``: a specimen evaluable by region, mirrored (real) or procedural (built-in)."""
    rng = np.random.default_rng(kw["seed"])
    lay = _layout(specimen, kw, tiled)
    if lay["mirrored"]:
        warnings.warn(lay["mirrored"], stacklevel=3)
    lr_shape, hr_shape, pad, scale = lay["lr_shape"], lay["hr_shape"], lay["pad"], lay["scale"]
    zoom = kw["zoom"]
    if lay["name"] is not None:
        make = _region_specimen if tiled else builtin_specimen
        spec = make(lay["name"], lay["shape"], rng, scale)
        source = f"built-in {lay['name']}"
    else:
        spec = _ArraySource(specimen) if tiled else np.asarray(specimen, dtype=np.float32)
        source = "user specimen"

    true_zoom = zoom * (1.0 + rng.uniform(-kw["zoom_error"], kw["zoom_error"]))
    theta = float(rng.uniform(-kw["max_rotation_deg"], kw["max_rotation_deg"]))
    if kw["rotation_deg"] is not None:
        theta = float(kw["rotation_deg"])

    lr_scan = _random_scan(rng, scale, 0.0, lr_shape[0])
    lr_origin = [MARGIN + pad, MARGIN + pad]
    lr_scan["origin"] = lr_origin
    hr_scan = _random_scan(rng, scale / true_zoom, theta, hr_shape[0])
    for scan, which in ((lr_scan, "lr"), (hr_scan, "hr")):
        dose, gamma = kw[f"{which}_dose"], kw[f"{which}_gamma"]
        scan["dose"] = scan["dose"] if dose is None else float(dose)
        scan["gamma"] = scan["gamma"] if gamma is None else float(gamma)
        scan["inverted"] = bool(kw[f"{which}_inverted"])
    # Place the HR field anywhere its rotated footprint (plus drift room) fits inside the LR field.
    a_hr = hr_scan["pitch"] * _rotation(theta)
    corners = np.array([[0, 0], [0, hr_shape[1] - 1], [hr_shape[0] - 1, 0],
                        [hr_shape[0] - 1, hr_shape[1] - 1]], dtype=float)
    extent = corners @ a_hr.T  # specimen offsets of the corners from the HR origin
    lo = np.asarray(lr_origin) + ROOM * scale - extent.min(0)
    hi = np.asarray(lr_origin) + (np.array(lr_shape) - 1) * scale - ROOM * scale - extent.max(0)
    if kw["hr_inside"] is None and np.all(hi >= lo):
        hr_scan["origin"] = rng.uniform(lo, hi).tolist()
    else:
        hr_scan["origin"] = _place_partly_outside(a_hr, hr_shape, lr_origin, scale, lr_shape,
                                                  kw["hr_inside"], rng)
    truth = {
        "seed": kw["seed"],
        "specimen": source,
        "scale": scale,
        "lr_shape": list(lr_shape),
        "hr_shape": list(hr_shape),
        "nominal_zoom": zoom,
        "lr_pixel_size_nm": scale * kw["specimen_pixel_nm"],
        "hr_pixel_size_nm": scale * kw["specimen_pixel_nm"] / true_zoom,
        "lr_scan": lr_scan,
        "hr_scan": hr_scan,
    }
    truth.update(_affine_truth(truth))
    truth["hr_inside"] = _inside_fraction(hr_scan["origin"], a_hr, hr_shape, lr_origin, scale,
                                          lr_shape)
    return _Plan(spec, lr_scan, hr_scan, int(np.floor(zoom + 0.5)), truth, rng)


def true_lr_coords(truth: dict, hr_shape: tuple[int, int] | None = None,
                   region: tuple[slice, slice] = (slice(None), slice(None))) -> np.ndarray:
    """Exact LR (row, col) coordinate of every HR pixel centre (or of the HR pixels ``region``:
    row and column slices, steps allowed), both scans' drift included.

    Returns float64 of shape (2, h, w).
    """
    hr_shape = tuple(hr_shape or truth["hr_shape"])
    lr_scan = truth["lr_scan"]
    x = _scan_positions(truth["hr_scan"], hr_shape, region)
    a_inv = np.linalg.inv(lr_scan["pitch"] * _rotation(lr_scan["rotation_deg"]))
    nominal = np.tensordot(a_inv, x - np.asarray(lr_scan["origin"])[:, None, None], axes=1)
    dy, dx = np.asarray(lr_scan["drift"])
    lines = np.arange(len(dy), dtype=float)
    p = nominal.copy()
    for _ in range(6):  # fixed point: p = nominal - drift(p_row); the drift is smooth and small
        p[0] = nominal[0] - np.interp(p[0], lines, dy)
        p[1] = nominal[1] - np.interp(p[0], lines, dx)
    return p


def _affine_truth(truth: dict) -> dict:
    """Least-squares affine fit ``lr = matrix @ hr + offset`` of the exact correspondence."""
    h, w = truth["hr_shape"]
    step = max(1, min(h, w) // 64)
    sub = true_lr_coords(truth, region=(slice(None, None, step),) * 2)
    rows, cols = np.meshgrid(np.arange(0, h, step, dtype=float), np.arange(0, w, step, dtype=float),
                             indexing="ij")
    design = np.stack([rows.ravel(), cols.ravel(), np.ones(rows.size)], axis=1)
    coef, *_ = np.linalg.lstsq(design, sub.reshape(2, -1).T, rcond=None)
    matrix, offset = coef[:2].T, coef[2]
    scale = np.sqrt(abs(np.linalg.det(matrix)))
    rotation = np.rad2deg(np.arctan2(matrix[1, 0] - matrix[0, 1], matrix[0, 0] + matrix[1, 1]))
    return {
        "matrix": matrix.tolist(),
        "offset": offset.tolist(),
        "zoom": float(1.0 / scale),
        "rotation_deg": float(rotation),
    }


#: What a simulation writes into its folder, per format.
OUTPUTS = {"tiff": ("lr.tif", "hr.tif", "gt.tif", "truth.json"),
           "zarr": ("lr.zarr", "hr.tif", "gt.zarr", "truth.json")}


def _claim_outputs(outdir: Path, overwrite: bool) -> None:
    """Refuse a folder holding simulation outputs (of either format) unless ``overwrite``; then
    remove them, so that no stale ``lr.*``/``gt.*`` of the other format stays beside the new."""
    from pairsr.io import OutputExistsError, _claim

    names = sorted({n for names in OUTPUTS.values() for n in names})
    existing = [n for n in names if (outdir / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{outdir}: {', '.join(existing)} exist; pass overwrite=True")
    for name in existing:
        _claim(outdir / name, overwrite=True)
    outdir.mkdir(parents=True, exist_ok=True)


def save_pair(pair: SimulatedPair, outdir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``lr.tif``, ``hr.tif``, ``gt.tif`` (float32) and ``truth.json`` into ``outdir``."""
    from pairsr.io import write_image

    outdir = Path(outdir)
    _claim_outputs(outdir, overwrite)
    t = pair.truth
    write_image(outdir / "lr.tif", pair.lr, pixel_size_nm=t["lr_pixel_size_nm"], overwrite=True)
    write_image(outdir / "hr.tif", pair.hr, pixel_size_nm=t["hr_pixel_size_nm"], overwrite=True)
    write_image(outdir / "gt.tif", pair.gt,
                pixel_size_nm=t["lr_pixel_size_nm"] / np.floor(t["nominal_zoom"] + 0.5),
                overwrite=True)
    (outdir / "truth.json").write_text(json.dumps(t, indent=1))
    return outdir


def _keywords(specimen, keywords: dict) -> dict:
    """:func:`simulate_pair`'s keywords, defaults filled in; a TypeError names an unknown one."""
    bound = inspect.signature(simulate_pair).bind(specimen, **keywords)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k != "specimen"}


def in_memory_bytes(specimen=None, **keywords) -> int:
    """Bytes :func:`simulate_pair` holds at its peak for these arguments (estimated: 12 per
    specimen pixel for the specimen and its blurs, 52 per SR-grid pixel for ``gt`` and its
    coordinates). ``specimen`` may be lazy (only its shape is used)."""
    kw = _keywords(specimen, keywords)
    return _in_memory_bytes(_layout(specimen, kw, tiled=True), kw["zoom"])


def _in_memory_bytes(layout: dict, zoom: float) -> int:
    z = int(np.floor(zoom + 0.5))
    return int(12 * np.prod(layout["shape"]) + 52 * z * z * np.prod(layout["lr_shape"]))


def _tiles(shape: tuple[int, int], tile: int):
    """Row and column slices of ``tile`` × ``tile`` tiles covering ``shape``, row by row."""
    for r in range(0, shape[0], tile):
        for c in range(0, shape[1], tile):
            yield slice(r, min(r + tile, shape[0])), slice(c, min(c + tile, shape[1]))


def write_simulation(
    outdir: str | Path,
    specimen=None,
    *,
    format: str = "auto",
    chunk: int = 1024,
    overwrite: bool = False,
    progress=None,
    **keywords,
) -> tuple[dict, str]:
    """Simulate a pair (:func:`simulate_pair`'s ``keywords``) and write it into ``outdir``.

    ``format="tiff"``: :func:`simulate_pair` in memory and :func:`save_pair` (``lr.tif``,
    ``hr.tif``, ``gt.tif``, ``truth.json``). ``"zarr"``: ``lr.zarr`` (uint8) and ``gt.zarr``
    (float32, the SR grid's NGFF scale and translation) as OME-Zarr with ``chunk`` px chunks,
    rendered tile by tile (``chunk`` LR px, a multiple of :data:`NOISE_BLOCK`) with the probe's
    halo, so memory stays bounded whatever the field; ``hr.tif`` rendered the same way;
    ``truth.json`` as for TIFF. ``"auto"``: zarr when :func:`in_memory_bytes` exceeds
    :data:`MEMORY_BOUND` or a real specimen does not cover the field, else TIFF.

    The zarr path draws the same geometry, scans and truth from the seed, but not the same
    pixels as :func:`simulate_pair`: built-in specimens are procedural by region (the same
    kind of specimen, another realisation), a real ``specimen`` (numpy, or a lazy DataArray
    from :func:`pairsr.io.read_image`, read by window; integers scaled by their dtype) is
    mirrored beyond its edges when the field needs more (with a warning), and the shot noise is
    seeded per :data:`NOISE_BLOCK` block. For a real specimen the noise-free LR, HR and the
    whole ``gt`` equal :func:`simulate_pair`'s; every output is the same at any ``chunk``.
    ``progress(rows_done, rows)`` follows the LR rows. Returns (truth, format written).
    Raises :class:`~pairsr.io.OutputExistsError` when outputs exist and not ``overwrite``.
    """
    from pairsr.io import create_ome_zarr, set_display_window, to_float32, write_image

    if format not in ("auto", "tiff", "zarr"):
        raise ValueError(f"format must be auto, tiff or zarr, got {format!r}")
    if chunk < NOISE_BLOCK or chunk % NOISE_BLOCK:
        raise ValueError(f"chunk must be a multiple of {NOISE_BLOCK} px, got {chunk}")
    builtin = specimen is None or isinstance(specimen, str)
    kw = _keywords(specimen, keywords)
    if format == "auto":
        lay = _layout(specimen, kw, tiled=True)
        large = _in_memory_bytes(lay, kw["zoom"]) > MEMORY_BOUND
        format = "zarr" if large or lay["mirrored"] else "tiff"
    outdir = Path(outdir)
    _claim_outputs(outdir, overwrite)
    if format == "tiff":
        pair = simulate_pair(specimen if builtin else to_float32(specimen), **kw)
        save_pair(pair, outdir, overwrite=True)
        return pair.truth, format

    plan = _plan(specimen, kw, tiled=True)
    t, lr_scan, hr_scan, z = plan.truth, plan.lr_scan, plan.hr_scan, plan.z
    t["noise_block"] = NOISE_BLOCK
    lr_shape, hr_shape = tuple(t["lr_shape"]), tuple(t["hr_shape"])
    key = int(plan.rng.integers(2**63))
    pixel = t["lr_pixel_size_nm"]
    provenance = {"source": f"pairsr simulate, seed {kw['seed']}"}
    lr_zarr = create_ome_zarr(outdir / "lr.zarr", lr_shape, np.uint8, chunks=chunk,
                              pixel_size_nm=pixel, name="lr", attrs=provenance)
    gt_zarr = create_ome_zarr(outdir / "gt.zarr", sr_shape(lr_shape, z), np.float32,
                              chunks=chunk, pixel_size_nm=pixel / z,
                              translation_nm=(-pixel * (z - 1) / (2 * z),) * 2, name="gt",
                              attrs=provenance)
    for rows, cols in _tiles(lr_shape, chunk):
        sr = (slice(z * rows.start, z * rows.stop), slice(z * cols.start, z * cols.stop))
        lr, gt = _render_window(plan.specimen, [
            (lr_scan, _scan_positions(lr_scan, lr_shape, (rows, cols))),
            (hr_scan, _gt_positions(lr_scan, lr_shape, z, kw["gt_drift"], sr))])
        noise = _block_noise(key, 0, (rows.start, cols.start))
        lr_zarr["0"][rows, cols] = _to_u8(_detect(lr, lr_scan, noise))
        gt_zarr["0"][sr] = np.clip(_detect(gt, hr_scan), 0, 1)
        if progress is not None and cols.stop == lr_shape[1]:
            progress(rows.stop, lr_shape[0])
    hr = np.empty(hr_shape, np.uint8)
    for region in _tiles(hr_shape, chunk):
        (signal,) = _render_window(plan.specimen,
                                   [(hr_scan, _scan_positions(hr_scan, hr_shape, region))])
        noise = _block_noise(key, 1, (region[0].start, region[1].start))
        hr[region] = _to_u8(_detect(signal, hr_scan, noise))
    for group in (lr_zarr, gt_zarr):
        set_display_window(group)
    write_image(outdir / "hr.tif", hr, pixel_size_nm=t["hr_pixel_size_nm"], overwrite=True)
    (outdir / "truth.json").write_text(json.dumps(t, indent=1))
    return t, format


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def draw_acquisition(
    rng: np.random.Generator,
    *,
    vary: Collection[str] = VARIABLES,
    specimen_shape: tuple[int, int] | None = None,
    lr_max: int = 1024,
    ranges: dict | None = None,
) -> dict:
    """Draw :func:`simulate_pair` keywords (all but ``specimen`` and ``seed``) for one acquisition.

    Parameters
    ----------
    rng
        Source of the draws; the same state gives the same keywords.
    vary
        Which of :data:`VARIABLES` to draw from ``ranges``; the others keep the simulator's
        defaults (×2, 25 % HR fraction, rotation within ±2°, doses 15-60, gammas 0.8-1.25, no
        inversion). ``"size"`` draws the HR's longer side; without it the LR's longer side is
        drawn from ``ranges["lr_side"]``.
    specimen_shape
        Shape of a real specimen image (None: a built-in specimen): it bounds the LR field and
        sets its aspect ratio.
    lr_max
        Longest LR side allowed, px (a cost bound; the drawn HR shrinks to respect it).
    ranges
        The ranges, :data:`WIDE_RANGES` by default.

    Returns
    -------
    dict with ``zoom``, ``lr_shape`` and ``hr_shape`` always, and ``rotation_deg``, ``lr_dose``,
    ``hr_dose``, ``lr_gamma``, ``hr_gamma``, ``lr_inverted``, ``hr_inverted`` as drawn. The LR's
    longer side is kept in [128, ``lr_max``] and the HR fraction at most what lets the rotated HR
    fit inside the LR field.
    """
    ranges = {**WIDE_RANGES, **(ranges or {})}
    unknown = set(vary) - set(VARIABLES)
    if unknown:
        raise ValueError(f"unknown acquisition variables {sorted(unknown)}; use {VARIABLES}")
    out: dict = {}
    zoom = int(rng.choice(ranges["zoom"])) if "zoom" in vary else 2
    out["zoom"] = float(zoom)
    rotation = 2.0
    if "rotation" in vary:
        out["rotation_deg"] = float(rng.uniform(-ranges["rotation_deg"], ranges["rotation_deg"]))
        rotation = abs(out["rotation_deg"])
    fraction = _log_uniform(rng, *ranges["hr_fraction"]) if "fraction" in vary else 0.25
    if specimen_shape is None:
        aspect = (rng.uniform(0.6, 1.0), 1.0)  # rows : cols of the LR field
        cap = lr_max
    else:
        scale = default_scale(specimen_shape, zoom)
        fit = [(n - 2 * MARGIN) / scale for n in specimen_shape]
        aspect = (fit[0] / max(fit), fit[1] / max(fit))
        cap = min(lr_max, max(fit))
    if "size" in vary:
        lr_long = _log_uniform(rng, *ranges["hr_side"]) / (zoom * np.sqrt(fraction))
    else:
        lr_long = _log_uniform(rng, min(ranges["lr_side"][0], cap), min(ranges["lr_side"][1], cap))
    lr_long = float(np.clip(lr_long, min(128, cap), cap))
    lr_shape = tuple(max(int(lr_long * a), 32) for a in aspect)
    # The largest HR side fraction whose rotated field fits with ROOM px (and drift) to spare.
    c, s = np.cos(np.deg2rad(rotation)), np.sin(np.deg2rad(rotation))
    (h, w), spare = lr_shape, 2 * ROOM + 3
    side = min(np.sqrt(fraction), 0.99 * (h - spare) / (h * c + w * s),
               0.99 * (w - spare) / (w * c + h * s))
    out["lr_shape"] = lr_shape
    out["hr_shape"] = tuple(int(n * side * zoom) for n in lr_shape)
    if "dose" in vary:
        out["lr_dose"] = _log_uniform(rng, *ranges["dose"])
        out["hr_dose"] = _log_uniform(rng, *ranges["dose"])
    if "gamma" in vary:
        out["lr_gamma"] = _log_uniform(rng, *ranges["gamma"])
        out["hr_gamma"] = _log_uniform(rng, *ranges["gamma"])
    if "inversion" in vary:
        inverted = rng.random() < ranges["inverted"]
        which = rng.random() < 0.5
        out["lr_inverted"], out["hr_inverted"] = bool(inverted and which), bool(inverted and
                                                                                not which)
    return out
