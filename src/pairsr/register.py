"""Register a physical LR/HR image pair (the paper's Sec. III-A, with sub-pixel accuracy).

Mapping convention (README, :mod:`pairsr.grid`): ``lr = matrix @ hr + offset`` for ``(row, col)``
pixel-centre coordinates. With the local field ``disp`` (2, h, w), in HR pixels, the LR coordinate
of HR pixel ``x`` is ``matrix @ (x + disp[:, x]) + offset``.

Pipeline of :func:`register_pair`:

1. **Coarse global search**: the HR image, reduced to a coarse LR scale, is found anywhere in the
   (equally reduced) LR image by an FFT normalised-cross-correlation template search
   (:func:`skimage.feature.match_template`) over a sweep of rotations, for both signs of the
   correlation (an inverted detector contrast). A peak well above the map's own chance level and
   well above the second-best peak is the match; otherwise the best few peaks are candidates.
2. **Fine global fit**: Gauss-Newton (ECC-style) on a pyramid of the LR image against the HR image
   blurred and reduced to the same scale (the LR scan is the blurrier one), through a similarity
   and then an affine transform, with a quadratic intensity model (gain, offset, gamma) fitted
   jointly, so that contrast, brightness and gamma differences do not bias it. The extra blur that
   brings the HR to the LR resolution is estimated on the way. The decision rests on this fit:
   it must explain most of the LR's variance that the noise of both images lets any fit explain,
   and, among several candidates (one period apart on a periodic specimen), one fit must be
   better than the others by more than the noise allows.
3. **Local field**: the paper's patch search (its Eq. 1): NCC of HR patches (blurred to the LR
   resolution) against the LR resampled on the HR grid through the global mapping (``Ir``), on
   textured patches (signal variance well above the noise), then a sub-pixel Lucas-Kanade step
   with the same intensity model, quality tests (peak NCC, best/second peak, peak off the search
   border), and a smooth field fitted to the accepted shifts, each weighted by its inverse
   covariance, with robust (Tukey) outlier rejection. The field is the sum of a per-line shift
   of each scan, a P-spline in the HR row plus one in the LR row, since scan drift moves whole
   scan lines. The global affine is then refitted as the least-squares affine of the whole
   HR→LR correspondence, so ``disp`` holds only the non-affine rest; it is kept only if it
   improves the fine fit. Patch sizes, search radius and knots scale with the zoom, the HR's
   size and the patches accepted. For a chunked dask HR the patch search runs chunk by chunk
   (with a halo); the global step reads the HR reduced.

Failure modes raise :class:`RegistrationError` (a ``ValueError``) with the reason and what to
do, in command-line terms, or warn (HR partly outside the LR; inverted contrast; local field
skipped).
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field, fields
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import fft, linalg, optimize
from scipy import ndimage as ndi
from scipy.interpolate import BSpline
from skimage import draw, transform
from skimage.feature import match_template, peak_local_max
from skimage.util import img_as_float32

from pairsr.grid import BICUBIC_HALO, interpolate, lr_to_sr, sr_shape, sr_to_lr


class RegistrationError(ValueError):
    """The pair cannot be registered reliably; the message says why and what to change."""


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def _zoom(matrix: np.ndarray) -> float:
    """HR/LR pixel-density ratio of an HR→LR matrix."""
    return float(1.0 / np.sqrt(abs(np.linalg.det(matrix))))


def _apply(matrix: np.ndarray, offset: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``matrix @ coords + offset`` for coordinates of shape (2, ...)."""
    coords = np.asarray(coords, dtype=float)
    return np.tensordot(matrix, coords, axes=1) + offset.reshape(2, *([1] * (coords.ndim - 1)))


@dataclass
class Registration:
    """HR→LR mapping of a registered pair: ``lr = matrix @ (hr + disp(hr)) + offset``.

    Attributes
    ----------
    matrix, offset
        Global affine (2, 2) and (2,), HR→LR pixel coordinates; with a local field it is the
        least-squares affine of the whole correspondence and ``disp`` has no affine part.
    lr_shape, hr_shape
        Shapes of the registered images.
    ncc, peak_ratio
        Peak normalised cross-correlation of the coarse search (both images smoothed to the coarse
        scale) and its ratio to the second-best peak: the evidence that the HR is in the LR.
    fit_ncc
        NCC of the LR against the HR blurred to the LR resolution at the fitted mapping.
    blur_sigma
        Gaussian σ (HR pixels) that brings the HR image to the LR resolution.
    inverted
        The HR contrast was found inverted with respect to the LR (accepted with a warning
        under ``allow_inversion=True``); the mapping holds for the HR as acquired.
    patches_tried, patches_accepted
        Textured patches searched by the local step, and those that passed every test.
    disp
        Local displacement field, float32 (2, h, w) in HR pixels, or None.
    """

    matrix: np.ndarray
    offset: np.ndarray
    lr_shape: tuple[int, int]
    hr_shape: tuple[int, int]
    ncc: float = float("nan")
    peak_ratio: float = float("nan")
    significance: float = float("nan")
    fit_ncc: float = float("nan")
    blur_sigma: float = 0.0
    inverted: bool = False
    patches_tried: int = 0
    patches_accepted: int = 0
    disp: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=float).reshape(2, 2)
        self.offset = np.asarray(self.offset, dtype=float).reshape(2)
        self.lr_shape = tuple(int(n) for n in self.lr_shape)
        self.hr_shape = tuple(int(n) for n in self.hr_shape)
        if self.disp is not None:
            self.disp = np.asarray(self.disp, dtype=np.float32)
            if self.disp.shape != (2, *self.hr_shape):
                raise ValueError(
                    f"disp must have shape (2, *hr_shape) = {(2, *self.hr_shape)}, "
                    f"got {self.disp.shape}"
                )

    @property
    def rms_displacement(self) -> float:
        """RMS length of the local displacements over the HR image, HR pixels (0 without)."""
        return 0.0 if self.disp is None else float(np.sqrt(np.mean(np.sum(self.disp**2, 0))))

    @property
    def zoom(self) -> float:
        """HR/LR pixel-density ratio of the global mapping."""
        return _zoom(self.matrix)

    @property
    def rotation_deg(self) -> float:
        """Rotation of the HR scan in the LR frame, degrees (as ``pairsr.simulate``'s truth)."""
        m = self.matrix
        return float(np.rad2deg(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))

    @property
    def footprint(self) -> np.ndarray:
        """LR (row, col) of the HR image's 4 outer corners (pixel edges), (4, 2), in order."""
        h, w = self.hr_shape
        corners = np.array([[-0.5, -0.5], [-0.5, w - 0.5], [h - 0.5, w - 0.5], [h - 0.5, -0.5]])
        return _apply(self.matrix, self.offset, corners.T).T

    @property
    def inside_fraction(self) -> float:
        """Fraction of the HR image's area that the global mapping puts inside the LR image."""
        h, w = self.hr_shape
        rows, cols = np.meshgrid(np.linspace(-0.5, h - 0.5, 65), np.linspace(-0.5, w - 0.5, 65),
                                 indexing="ij")
        y = _apply(self.matrix, self.offset, np.stack([rows, cols]))
        inside = [(y[k] >= -0.5) & (y[k] <= n - 0.5) for k, n in enumerate(self.lr_shape)]
        return float(np.mean(inside[0] & inside[1]))

    def _disp_at(self, hr_coords: np.ndarray) -> np.ndarray:
        """Local field sampled (linearly, mirrored beyond the HR edges) at HR coords (2, ...)."""
        return np.stack([interpolate(d, hr_coords, order=1) for d in self.disp])

    def hr_to_lr(self, coords: np.ndarray, local: bool = True) -> np.ndarray:
        """LR (row, col) of HR coordinates ``coords`` (2, ...); with the local field if any."""
        x = np.asarray(coords, dtype=float)
        if local and self.disp is not None:
            x = x + self._disp_at(x)
        return _apply(self.matrix, self.offset, x)

    def lr_to_hr(self, coords: np.ndarray, local: bool = True, tol: float = 1e-5) -> np.ndarray:
        """HR (row, col) of LR coordinates ``coords`` (2, ...): the inverse of :meth:`hr_to_lr`.

        With the local field, solves ``x + disp(x) = matrix⁻¹ (y − offset)`` by fixed-point
        iteration (it contracts: the field's gradient is far below 1) to ``tol`` HR pixels.
        """
        inv = np.linalg.inv(self.matrix)
        x0 = _apply(inv, -inv @ self.offset, coords)
        if not local or self.disp is None:
            return x0
        x = x0
        for _ in range(100):
            x_new = x0 - self._disp_at(x)
            step = np.max(np.abs(x_new - x), initial=0.0)
            x = x_new
            if step < tol:
                break
        return x

    def to_dict(self) -> dict:
        """JSON-ready record of everything but ``disp``, derived values included."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "disp"}
        record.update(matrix=self.matrix.tolist(), offset=self.offset.tolist(),
                      lr_shape=list(self.lr_shape), hr_shape=list(self.hr_shape))
        # Derived values, written for the reader; load() recomputes them.
        record.update(zoom=self.zoom, rotation_deg=self.rotation_deg,
                      footprint=self.footprint.tolist(), inside_fraction=self.inside_fraction,
                      rms_displacement=self.rms_displacement)
        return json.loads(json.dumps(record, default=lambda v: v.item()))  # numpy scalars

    def save(self, path: str | Path) -> Path:
        """Write the scalars as JSON to ``path`` and ``disp`` to ``<stem>_disp.npy`` beside it."""
        path = Path(path)
        record = self.to_dict()
        disp_path = path.with_name(f"{path.stem}_disp.npy")
        record["disp_file"] = disp_path.name if self.disp is not None else None
        path.write_text(json.dumps(record, indent=1))
        if self.disp is not None:
            np.save(disp_path, self.disp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Registration:
        """Read a registration written by :meth:`save`."""
        path = Path(path)
        record = json.loads(path.read_text())
        kwargs = {f.name: record[f.name] for f in fields(cls) if f.name in record}
        if record.get("disp_file"):
            kwargs["disp"] = np.load(path.with_name(record["disp_file"]))
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# Image helpers
# --------------------------------------------------------------------------------------------


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


def _gauss_depth(sigma: float) -> int:
    """Pixels a Gaussian of ``sigma`` reads on each side (scipy's default truncate=4)."""
    return int(4.0 * sigma + 0.5)


def _reduce(image, f: int) -> np.ndarray:
    """Gaussian anti-alias (σ = f/2) and decimate by ``f``: output pixel k ↔ input pixel f·k."""
    if f == 1:
        return np.asarray(image, dtype=np.float32)
    sigma = 0.5 * f
    if _is_dask(image):
        blurred = image.map_overlap(ndi.gaussian_filter, depth=_gauss_depth(sigma) + 1,
                                    boundary="reflect", sigma=sigma, mode="reflect")
        return np.asarray(blurred[::f, ::f].compute(), dtype=np.float32)
    return ndi.gaussian_filter(image, sigma, mode="reflect")[::f, ::f]


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


# --------------------------------------------------------------------------------------------
# Global registration
# --------------------------------------------------------------------------------------------

#: Extra Gaussian pre-smoothing (coarse px) of both images for the coarse search, against noise.
COARSE_SMOOTH = 1.0
#: Candidate positions of the coarse search refined when its best match is not unique.
MAX_CANDIDATES = 5
#: Least significance (σ of the statistic) of a fine-scale difference between two candidates.
MIN_SEPARATION = 3.0
#: Least fraction of the LR's variance that the fit must explain, relative to the most that
#: the noise of both images allows (:meth:`_Fit.explained`).
MIN_EXPLAINED = 0.5
#: Least signal fraction of the LR's and of the HR's variance at the LR's resolution: below
#: it an image is textureless there (:meth:`_Fit.reliabilities`).
MIN_RELIABILITY = (0.05, 0.25)


@dataclass
class _Match:
    """Result of the coarse search for one sign of the correlation, at its best angle."""

    angle: float  # degrees, refined between the sweep's steps
    centres: np.ndarray  # (K, 2) coarse-LR (row, col) of the template centre at the K best peaks
    scores: np.ndarray  # (K,) their scores (NCC·√overlap), best first
    ncc: float  # NCC (of the signed correlation) at the best peak
    null: tuple[float, float]  # median and robust std of the score over the map: chance
    n_tests: float  # effectively independent positions searched (over every angle)
    at_edge: bool  # the best angle is the first or last of the sweep

    @property
    def peak_ratio(self) -> float:
        """Best peak over the second-best local maximum."""
        if len(self.scores) < 2 or self.scores[1] <= 0:
            return float("inf")
        return float(self.scores[0] / self.scores[1])

    @property
    def significance(self) -> float:
        """Best score above the map's median, in units of its robust std."""
        return float((self.scores[0] - self.null[0]) / max(self.null[1], 1e-12))

    @property
    def min_significance(self) -> float:
        """What the best of ``n_tests`` unrelated positions reaches (√(2 ln n)), plus 1."""
        return float(np.sqrt(2 * np.log(max(self.n_tests, 2))) + 1.0)


def _null_stats(score: np.ndarray) -> tuple[float, float, float]:
    """Median, robust std (MAD) and effective number of independent values of a score map:
    what unrelated positions give. The number is ``(Σ P)² / Σ P²`` over the map's power
    spectrum ``P`` (N / Σ ρ², ρ its autocorrelation), so a smooth or periodic map counts few."""
    med = float(np.median(score))
    spread = 1.4826 * float(np.median(np.abs(score - med)))
    power = np.abs(fft.rfft2(score - score.mean())) ** 2
    power[..., 1 : (score.shape[1] + 1) // 2] *= 2  # the half-spectrum's mirrored columns
    n_eff = float(power.sum() ** 2 / max((power**2).sum(), 1e-300))
    return med, spread, n_eff


def _box_sums(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Sums of ``a`` over every ``shape`` window of its last two axes (valid positions only)."""
    c = np.pad(a.cumsum(-2).cumsum(-1), [(0, 0)] * (a.ndim - 2) + [(1, 0), (1, 0)])
    h, w = shape
    return c[..., h:, w:] - c[..., :-h, w:] - c[..., h:, :-w] + c[..., :-h, :-w]


#: LR pixels (at the coarse level) from which the coarse search's angles run as dask tasks.
PARALLEL_SEARCH_PIXELS = 1024**2


def _angle_search(lr_c: np.ndarray, tmpl: np.ndarray, angle: float,
                  pad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The search at one angle: NCC map, score map (NCC·√overlap) and the rotated grid's origin.

    The LR image is resampled on a grid rotated by ``angle`` (degrees), padded by ``pad`` with
    its mean (so an HR sticking out of the LR can still be found), and searched.
    """
    rot = _rotation(angle)
    corners = np.array([[0, 0], [0, lr_c.shape[1] - 1], [lr_c.shape[0] - 1, 0],
                        np.array(lr_c.shape) - 1], dtype=float)
    v = corners @ rot  # rotated-grid coords u of the LR corners (y = rot @ u)
    umin = v.min(0) - pad
    shape = tuple(np.ceil(v.max(0) + pad - umin).astype(int) + 1)
    image, inside = (ndi.affine_transform(im, rot, offset=rot @ umin, output_shape=shape,
                                          order=1, cval=cval)
                     for im, cval in ((lr_c, float(lr_c.mean())), (np.ones_like(lr_c), 0.0)))
    ncc = match_template(image, tmpl)
    return ncc, ncc * np.sqrt(np.clip(_box_sums(inside, tmpl.shape) / tmpl.size, 0, 1)), umin


def _angle_peaks(lr_c: np.ndarray, tmpl: np.ndarray, angle: float,
                 pad: np.ndarray) -> tuple[float, float]:
    """The best positive and negative (inverted-contrast) score at one angle."""
    score = _angle_search(lr_c, tmpl, angle, pad)[1]
    return float(score.max()), float(-score.min())


def _coarse_search(lr_c: np.ndarray, tmpl: np.ndarray,
                   max_rotation_deg: float) -> dict[int, _Match]:
    """NCC template search of ``tmpl`` in ``lr_c`` over a sweep of rotations.

    Each angle is searched by :func:`_angle_search`. Positions are scored by NCC·√overlap (the
    overlap: the template's fraction inside the LR), the significance of a correlation over
    that many pixels, so that a small overlap that happens to correlate does not compete with a
    full one. The angles run as dask tasks (on the current scheduler: threads, or a
    distributed cluster) when ``lr_c`` has :data:`PARALLEL_SEARCH_PIXELS` or more, and only
    their best scores come back. Returns, for the positive (key 1) and negative (key −1:
    inverted contrast) correlation, the :data:`MAX_CANDIDATES` best peaks at the best angle.
    """
    half_diag = 0.5 * np.hypot(*tmpl.shape)
    step = float(np.clip(np.rad2deg(1.0 / half_diag), 0.1, 2.0))  # ≤ 1 px at the corners
    n = int(np.ceil(max_rotation_deg / step)) + 1  # one step beyond the range: edge test
    angles = np.linspace(-n * step, n * step, 2 * n + 1)
    pad = 3 * np.array(tmpl.shape) // 4
    if lr_c.size >= PARALLEL_SEARCH_PIXELS:
        import dask

        lazy_lr, lazy_tmpl = dask.delayed(lr_c), dask.delayed(tmpl)  # one task each, not per angle
        peaks = dask.compute(*[dask.delayed(_angle_peaks)(lazy_lr, lazy_tmpl, a, pad)
                               for a in angles])  # fmt: skip
    else:
        peaks = [_angle_peaks(lr_c, tmpl, a, pad) for a in angles]
    scores = np.array(peaks).T  # (sign, angle): best score per sign and angle
    matches = {}
    for k, sign in enumerate((1, -1)):
        i = int(np.argmax(scores[k]))
        ncc, score, umin = _angle_search(lr_c, tmpl, angles[i], pad)
        ncc, score = sign * ncc, sign * score
        at_edge = i in (0, len(angles) - 1)
        angle = angles[i]
        if not at_edge:  # parabola through the neighbouring angles' scores
            s = scores[k, i - 1 : i + 2]
            curv = s[0] - 2 * s[1] + s[2]
            angle += 0.5 * step * (s[0] - s[2]) / curv if curv < 0 else 0.0
        at = peak_local_max(score, min_distance=max(3, min(tmpl.shape) // 10),
                            num_peaks=MAX_CANDIDATES, exclude_border=False)
        centres = (_rotation(angles[i]) @ (at + (np.array(tmpl.shape) - 1) / 2 + umin).T).T
        med, spread, n_eff = _null_stats(score)
        matches[sign] = _Match(float(angle), centres, score[tuple(at.T)].astype(float),
                               float(ncc[tuple(at[0])]), (med, spread), n_eff * len(angles),
                               at_edge)
    return matches


def _choose_sign(matches: dict[int, _Match], *, allow_inversion: bool) -> int:
    """The sign of the correlation to follow: −1 where the best match is an inverted-contrast
    one that is significant (an error if ``allow_inversion`` is False)."""
    pos, neg = matches[1], matches[-1]
    if not (neg.scores[0] > pos.scores[0] and neg.significance >= neg.min_significance):
        return 1
    if not allow_inversion:
        raise RegistrationError(
            f"the contrast seems inverted: the best match is a negative correlation (NCC "
            f"{-neg.ncc:.2f}, vs {pos.ncc:+.2f} for the best positive one); pass "
            "--allow-inversion if the HR detector's contrast is reversed (e.g. a BSE or "
            "transmission LR and a secondary-electron HR)"
        )
    return -1


def _grid_samples(image: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (2, N) and values (N,) of every ``stride``-th pixel of ``image``."""
    coords = np.mgrid[0 : image.shape[0] : stride, 0 : image.shape[1] : stride].astype(float)
    return coords.reshape(2, -1), image[::stride, ::stride].ravel().astype(float)


def _quadratic(w: np.ndarray) -> np.ndarray:
    """Design (..., 3) of the quadratic intensity map ``p(w) = c0 + c1 w + c2 w²``."""
    return np.stack([np.ones_like(w), w, w * w], axis=-1)


#: Rise of the fraction of the LR's variance left, over the least reached so far, beyond which
#: a global refinement step is halved (the compared pixels change with the map).
TOLERANCE = 1e-3


def _refine(
    lr_l: np.ndarray, hr_l: np.ndarray, a: np.ndarray, t: np.ndarray, *, affine: bool,
    max_iter: int = 30, max_points: int = 100_000,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Gauss-Newton fit of the LR→HR map ``x = a @ y + t`` between two pyramid-level images.

    Minimises Σ (L(y) − p(H(a y + t)))² over LR pixels ``y`` whose ``x`` falls inside H, with
    ``p`` a quadratic intensity map fitted jointly (ECC-style), over a similarity (4 parameters)
    or affine (6) transform. A step that raises the fraction of L's variance left by more than
    :data:`TOLERANCE` over the least reached is halved, down to 1/64, then the fit stops: on a
    pattern near the level's resolution (a lattice) the linearisation can point far off.
    Returns the new ``a``, ``t`` and the NCC of L and H at the fit.
    """
    ys, values = _grid_samples(lr_l, max(1, int(np.ceil(np.sqrt(lr_l.size / max_points)))))
    centre = ys.mean(1)
    yc = ys - centre[:, None]
    span = np.abs(yc).max()
    tc = t + a @ centre  # translation in centred coordinates
    grad = np.gradient(hr_l)
    hi = np.array(hr_l.shape, dtype=float)[:, None] - 2.0

    def evaluate(a, tc):
        """Fraction of variance left, NCC, and the Gauss-Newton step at the map ``a``, ``tc``."""
        x = a @ yc + tc[:, None]
        ok = np.all((x >= 1.0) & (x <= hi), axis=0)
        if ok.sum() < 64:
            raise RegistrationError(
                "global refinement lost the overlap between LR and HR (fewer than 64 pixels)"
            )
        xv, yv, lv = x[:, ok], yc[:, ok], values[ok]
        w = interpolate(hr_l, xv).astype(float)
        g = np.stack([interpolate(gk, xv, order=1) for gk in grad]).astype(float)
        photo = _quadratic(w)
        coef, *_ = np.linalg.lstsq(photo, lv, rcond=None)
        slope = coef[1] + 2 * coef[2] * w
        g0, g1 = slope * g[0], slope * g[1]
        if affine:
            geom = [g0 * yv[0], g0 * yv[1], g1 * yv[0], g1 * yv[1], g0, g1]
        else:  # a = [[s, -r], [r, s]]
            geom = [g0 * yv[0] + g1 * yv[1], g1 * yv[0] - g0 * yv[1], g0, g1]
        jac = np.stack([*geom, *photo.T], axis=1)
        resid = lv - photo @ coef
        delta = np.linalg.solve(jac.T @ jac, jac.T @ resid)
        if affine:
            da, dt = delta[:4].reshape(2, 2), delta[4:6]
        else:
            da, dt = np.array([[delta[0], -delta[1]], [delta[1], delta[0]]]), delta[2:4]
        left = float(resid @ resid / max(lv.var() * lv.size, 1e-30))
        return left, float(np.corrcoef(w, lv)[0, 1]), da, dt

    left, ncc, da, dt = evaluate(a, tc)
    least, step = left, 1.0
    for _ in range(max_iter):
        try:
            trial = evaluate(a + step * da, tc + step * dt)
        except RegistrationError:
            trial = None
        if trial is None or trial[0] > least + TOLERANCE:
            step *= 0.5
            if step < 1 / 64:
                break
            continue
        change = step * (np.abs(dt).max() + np.abs(da).sum(1).max() * span)  # largest of x
        a, tc = a + step * da, tc + step * dt
        left, ncc, da, dt = trial
        least, step = min(least, left), 1.0
        if change < 1e-3:
            break
    return a, tc - a @ centre, ncc


def _fit_residual(lr_l: np.ndarray, hr_l: np.ndarray, a: np.ndarray, t: np.ndarray,
                  sigma: float, stride: int = 3) -> tuple[float, int, float, float]:
    """Fraction of L's variance left by the quadratic intensity fit to H blurred by ``sigma``,
    at the map ``x = a @ y + t``; also the number of L pixels compared, and the variances of L
    and of the blurred H over them."""
    ys, values = _grid_samples(lr_l, stride)
    x = a @ ys + t[:, None]
    ok = np.all((x >= 1.0) & (x <= np.array(hr_l.shape)[:, None] - 2.0), axis=0)
    if ok.sum() < 16:
        return 1.0, int(ok.sum()), 0.0, 0.0
    w = interpolate(ndi.gaussian_filter(hr_l, sigma), x[:, ok]).astype(float)
    _, res, *_ = np.linalg.lstsq(_quadratic(w), values[ok], rcond=None)
    var = float(values[ok].var())
    return float(res[0] / max(var * ok.sum(), 1e-30)) if len(res) else 1.0, int(ok.sum()), var, \
        float(w.var())


class _Fit(NamedTuple):
    """A candidate of the global fit: LR→HR map ``x = a @ y + t`` at full resolution."""

    a: np.ndarray
    t: np.ndarray
    sigma: float  # extra blur (LR px) of the HR reduced to the LR scale
    fit_ncc: float
    residual: float  # fraction of the LR's variance the fit leaves, over all ``n`` LR pixels
    n: int
    lr_var: float  # variance of those LR pixels
    hr_var: float  # and of the HR (reduced, blurred by ``sigma``) at them

    def reliabilities(self, lr_noise: float, hr_noise: float, f: int) -> tuple[float, float]:
        """Fractions of the compared LR's and HR's variances that are signal, not white noise
        (``lr_noise``, ``hr_noise``: noise std of the full-resolution images; ``f``: the HR's
        reduction to the LR scale, after which the fit blurred it by ``sigma`` LR px)."""
        blur = np.hypot(0.5 * f if f > 1 else 0.0, f * self.sigma)  # HR px
        hr_gain = min(1.0, 1 / (4 * np.pi * blur**2)) if blur > 0 else 1.0
        return tuple(float(max(1 - noise / max(var, 1e-30), 0.0))
                     for noise, var in ((lr_noise**2, self.lr_var),
                                        (hr_noise**2 * hr_gain, self.hr_var)))

    def explained(self, reliabilities: tuple[float, float]) -> float:
        """Fraction of the LR's variance explained, over the most that the noise of both images
        lets a perfect fit explain (Spearman's correction for attenuation)."""
        return float((1 - self.residual) / max(reliabilities[0] * reliabilities[1], 1e-6))


def _fit_candidate(lr_lev: dict, hr_lev: dict, f_of: dict, a: np.ndarray, t: np.ndarray, *,
                   affine: bool) -> _Fit:
    """Refine the map ``x = a @ y + t`` down the pyramid, then the HR→LR blur and a last fit
    with it, at the finest level."""
    for c in sorted(lr_lev, reverse=True):
        f = f_of[c]
        a_l, t_l, _ = _refine(lr_lev[c], hr_lev[c], a * c / f, t / f, affine=affine and c == 1)
        a, t = a_l * f / c, t_l * f
    # The blur (LR px) that best brings the reduced HR to the LR, then a last refinement with it.
    f1, lr, hr1 = f_of[1], lr_lev[1], hr_lev[1]
    a1, t1 = a / f1, t / f1
    sigma = optimize.minimize_scalar(lambda s: _fit_residual(lr, hr1, a1, t1, s)[0],
                                     bounds=(0, 3), method="bounded", options={"xatol": 0.1}).x
    a1, t1, fit_ncc = _refine(lr, ndi.gaussian_filter(hr1, sigma), a1, t1, affine=affine)
    # Every LR pixel for the comparison of candidates: the LR's noise is white per pixel.
    return _Fit(a1 * f1, t1 * f1, float(sigma), fit_ncc,
                *_fit_residual(lr, hr1, a1, t1, sigma, stride=1))


def _candidate_fits(match: _Match, keep: list[int], lr_lev: dict, hr_lev: dict, f_of: dict,
                    tmpl_shape: tuple[int, int], zoom: float, affine: bool) -> list[_Fit]:
    """The fits from the coarse peaks ``keep``, best (least residual) first, one per distinct
    mapping (the HR centre more than 1 LR px apart); peaks whose fit loses the overlap drop."""
    c = max(lr_lev)
    a0 = zoom * _rotation(match.angle).T
    fits = []
    for k in keep:
        t0 = f_of[c] * (np.array(tmpl_shape) - 1) / 2 - a0 @ (c * match.centres[k])
        try:
            fits.append(_fit_candidate(lr_lev, hr_lev, f_of, a0, t0, affine=affine))
        except (RegistrationError, np.linalg.LinAlgError):
            continue
    fits.sort(key=lambda fit: fit.residual)
    centre = np.array(hr_lev[1].shape) * f_of[1] / 2
    where = [np.linalg.solve(fit.a, centre - fit.t) for fit in fits]
    return [fit for i, fit in enumerate(fits)
            if all(np.hypot(*(where[i] - where[j])) > 1.0 for j in range(i))]


def _global(lr: np.ndarray, hr, zoom: float, *, max_rotation_deg: float, affine: bool,
            allow_inversion: bool, min_ncc: float | None, min_peak_ratio: float) -> Registration:
    """Coarse search, then pyramid refinement and the HR→LR blur; the global registration.

    The coarse match decides alone when it is significant (its NCC well above what chance gives
    for the template's effectively independent pixels, over that many positions) and unique
    (``min_peak_ratio``). Otherwise its best peaks are each refined to the finest level and the
    fits compared: the best must explain the LR better than every other by
    :data:`MIN_SEPARATION` σ of the residual's noise (aperiodic content, such as a defect, an
    edge or the HR's border, tells one period of a regular pattern from the next), and, where
    the coarse match is not significant, explain :data:`MIN_EXPLAINED` of the LR's signal.
    """
    # Levels c: LR reduced by c, HR by f ≈ zoom·c; the coarsest keeps the template ≥ 48 px.
    levels = [1]
    while levels[-1] < 8 and min(hr.shape) / (zoom * levels[-1] * 2) >= 48:
        levels.append(2 * levels[-1])
    f_of = {c: max(1, round(zoom * c)) for c in levels}
    f1 = f_of[1]
    hr_fine = _reduce(hr, f1)  # the one pass over the full-resolution HR
    hr_lev = {c: _reduce(hr_fine, f // f1) if f % f1 == 0 else _reduce(hr, f)
              for c, f in f_of.items()}
    lr_lev = {c: _reduce(lr, c) for c in levels}

    c = levels[-1]
    lr_c = ndi.gaussian_filter(lr_lev[c], COARSE_SMOOTH)
    tmpl = ndi.gaussian_filter(hr_lev[c], COARSE_SMOOTH)
    matches = _coarse_search(lr_c, tmpl, max_rotation_deg)
    sign = _choose_sign(matches, allow_inversion=allow_inversion)
    match = matches[sign]
    significant = match.significance >= match.min_significance

    def not_found(reason: str) -> RegistrationError:
        return RegistrationError(
            f"HR image not found in the LR image: {reason} (best coarse match NCC "
            f"{match.ncc:.2f}, {match.significance:.1f}σ above chance){_texture_note(lr_c, tmpl)}"
            f"; {_zoom_hint(lr_c, hr, zoom, c, max_rotation_deg)}"
        )

    if min_ncc is not None and match.ncc < min_ncc:
        raise not_found(f"coarse NCC {match.ncc:.2f} < {min_ncc:g}")
    unique = significant and match.peak_ratio >= min_peak_ratio
    keep = [0] if unique else [k for k, s in enumerate(match.scores)
                               if s >= match.scores[0] / min_peak_ratio]
    hr_signed = {c: sign * h for c, h in hr_lev.items()}
    fits = _candidate_fits(match, keep, lr_lev, hr_signed, f_of, tmpl.shape, zoom, affine)
    if not fits:
        raise not_found("no candidate position kept an overlap when refined")
    best = fits[0]
    reliability = best.reliabilities(_noise_sigma(lr), _noise_sigma(_central(hr)), f1)
    flat = [(name, rel, least) for name, rel, least
            in zip(("LR", "HR"), reliability, MIN_RELIABILITY) if rel < least]
    if flat:
        raise not_found(" and ".join(
            f"the {name} image is textureless at the LR's resolution (signal "
            f"{np.floor(100 * rel):.0f} % "
            f"of its variance, need {100 * least:.0f} %, the rest noise)"
            for name, rel, least in flat)
            + ": rescan with more counts per pixel (a longer dwell time, a higher beam current "
              "or frame averaging)")
    explained = best.explained(reliability)
    if explained < MIN_EXPLAINED:
        raise not_found(f"the best fit explains {100 * explained:.0f} % of the LR's variance "
                        f"that the noise allows, need {100 * MIN_EXPLAINED:.0f} %")
    if match.at_edge and abs(_rotation_of(best.a)) > max_rotation_deg:
        raise RegistrationError(
            f"best match at the edge of the rotation search range ({match.angle:+.2f}°, NCC "
            f"{match.ncc:.2f}): the HR is rotated by more than {max_rotation_deg:g}°; widen the "
            "range with --max-rotation"
        )
    if len(fits) > 1:
        second = fits[1]
        separation = (second.residual - best.residual) * np.sqrt(best.n) / (2 * best.residual)
        if separation < MIN_SEPARATION:
            apart = np.hypot(*(np.linalg.solve(best.a, -best.t)
                               - np.linalg.solve(second.a, -second.t)))
            raise RegistrationError(
                f"the HR image matches the LR equally well at {len(fits)} places (fit NCC "
                f"{best.fit_ncc:.3f} and {second.fit_ncc:.3f}, {apart:.1f} LR px apart; "
                f"difference {separation:.1f}σ, need {MIN_SEPARATION:g}σ): the pair is "
                "ambiguous, by one period if the specimen is periodic; nothing in the HR field "
                "tells these places apart. Acquire an HR field that includes a defect, an edge "
                "or a particle, or crop the LR to the HR's neighbourhood (pairsr convert --crop)"
            )
    if sign < 0:
        warnings.warn(
            f"the HR contrast is inverted with respect to the LR (coarse NCC {match.ncc:.2f} "
            f"of the inverted HR): registered; a paired method learns the mapping from the HR "
            "as acquired (--refuse-inversion refuses such a pair)",
            stacklevel=3,
        )
    matrix = np.linalg.inv(best.a)
    return Registration(
        matrix, -matrix @ best.t, lr.shape, hr.shape, ncc=match.ncc,
        peak_ratio=match.peak_ratio, significance=match.significance, fit_ncc=best.fit_ncc,
        inverted=sign < 0,
        blur_sigma=float(np.hypot(0.5 * f1 if f1 > 1 else 0.0, f1 * best.sigma)),  # HR px
    )


def _rotation_of(a: np.ndarray) -> float:
    """Rotation (degrees) of the HR in the LR frame from an LR→HR matrix ``a``."""
    m = np.linalg.inv(a)
    return float(np.rad2deg(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))


def _zoom_hint(lr_c: np.ndarray, hr, zoom: float, c: int, max_rotation_deg: float) -> str:
    """What to try after a failed search: the zoom (of 1.5-8, or half or twice ``zoom``) at
    which the coarse search finds a significant, unique match, if there is one."""
    tried = []
    for other in sorted({1.5, 2.0, 3.0, 4.0, 6.0, 8.0, zoom / 2, zoom * 2}):
        f = round(other * c)
        if abs(other / zoom - 1) < 0.1 or f < 1 or min(hr.shape) / f < 16:
            continue
        tmpl = ndi.gaussian_filter(_reduce(hr, f), COARSE_SMOOTH)
        if min(tmpl.shape) > 0.9 * min(lr_c.shape):
            continue
        match = _coarse_search(lr_c, tmpl, max_rotation_deg)[1]
        tried.append((match.significance - match.min_significance, other, match))
    good = [t for t in tried if t[0] > 0 and t[2].peak_ratio >= 1.5]
    if good:
        _, other, match = max(good, key=lambda t: t[0])
        return (f"it matches at zoom {other:g} (NCC {match.ncc:.2f}): pass --zoom {other:g} if "
                f"that is the pair's ratio of pixel sizes (now {zoom:g})")
    return (f"check that the HR images a sub-area of the LR field and that the zoom is right "
            f"(--zoom, now {zoom:g})")


# --------------------------------------------------------------------------------------------
# Local registration
# --------------------------------------------------------------------------------------------


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

    @property
    def halo(self) -> int:
        """HR pixels a window needs around its patch centres."""
        return self.size // 2 + self.radius + _gauss_depth(np.hypot(self.blur, self.smooth)) + 1


def _ncc_maps(search: np.ndarray, tmpl: np.ndarray) -> np.ndarray:
    """Batched :func:`skimage.feature.match_template`: (N, m, m) searched by (N, n, n) templates.

    Returns (N, m−n+1, m−n+1) NCC maps; 0 where the search window is flat.
    """
    m, n = search.shape[-1], tmpl.shape[-1]
    k = m - n + 1
    search = search.astype(np.float64)
    t0 = tmpl - tmpl.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
    # Circular cross-correlation at size m: exact for the k×k shifts that do not wrap. Float32
    # FFTs (twice as fast) suffice to place the peak; the window statistics stay in float64.
    spectrum = (fft.rfft2(search.astype(np.float32), workers=-1)
                * np.conj(fft.rfft2(t0.astype(np.float32), s=(m, m), workers=-1)))
    num = fft.irfft2(spectrum, s=(m, m), workers=-1)[:, :k, :k].astype(np.float64)
    sums = _box_sums(np.stack([search, search**2]), (n, n))
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
    lr_shape: tuple[int, int], opts: _PatchSearch,
) -> _Patches:
    """Patch search in one HR window: the paper's Eq. 1 (NCC of an HR patch, blurred to the LR
    resolution, against the registered upsampled LR ``Ir`` around it), then a sub-pixel
    Lucas-Kanade step from the NCC peak, and the quality tests.

    ``hr_win`` starts at HR pixel ``origin``; ``lr_sub`` at LR pixel ``lr_origin`` covers the
    window's LR footprint plus the bicubic halo; ``centres`` (N, 2) are HR pixel indices whose
    patches and search regions lie inside the window.
    """
    n, r = opts.size, opts.radius
    hb = ndi.gaussian_filter(np.asarray(hr_win, dtype=np.float32), np.hypot(opts.blur, opts.smooth))
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
    peak_at, peak, ratio, interior = _peaks(_ncc_maps(search, tmpl[tried]))
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
                   hr_noise: float, opts: _PatchSearch) -> _Patches:
    """Run the patch search over the HR image: one window, or one per chunk of a dask ``hr``.

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
            lo = np.maximum(centres.min(0) - opts.halo, 0)
            hi = np.minimum(centres.max(0) + opts.halo + 1, (h, w))
            box = _apply(matrix, offset, np.array([[lo[0], lo[0], hi[0], hi[0]],
                                                   [lo[1], hi[1], lo[1], hi[1]]], float))
            lr_lo = np.clip(np.floor(box.min(1)).astype(int) - BICUBIC_HALO, 0, lr.shape)
            lr_hi = np.clip(np.ceil(box.max(1)).astype(int) + BICUBIC_HALO + 1, 0, lr.shape)
            jobs.append((hr[lo[0]:hi[0], lo[1]:hi[1]], lo,
                         lr[lr_lo[0]:lr_hi[0], lr_lo[1]:lr_hi[1]], lr_lo, matrix, offset,
                         centres, hr_noise, lr.shape, opts))
    if not jobs:
        return _Patches.blank(np.zeros((0, 2), int))
    if _is_dask(hr):
        import dask

        return _Patches.concatenate(
            dask.compute(*[dask.delayed(_search_window)(*job) for job in jobs]))
    return _Patches.concatenate([_search_window(*job) for job in jobs])


@dataclass
class _ScanLineField:
    """Smooth local field as per-line shifts of both scans: ``disp(x) = s_hr(row) + s_lr(lr_row)``.

    ``row`` is the HR row of ``x`` and ``lr_row`` the LR row the global affine maps it to; each
    ``s`` (2 components) is a cubic P-spline with uniform knots, ``knots`` intervals over the full
    height of its scan, and a second-difference penalty. Scan drift is a shift of each scan line
    that varies smoothly over the frame, so this is the field's form.
    """

    matrix: np.ndarray
    offset: np.ndarray
    hr_shape: tuple[int, int]
    lr_rows: int
    knots: int

    def _knots(self) -> list[np.ndarray]:
        """Uniform knot vectors of the HR-row and LR-row splines, covering the whole HR image."""
        h, w = self.hr_shape
        lr_rows = _apply(self.matrix, self.offset,
                         np.array([[-1, -1, h, h], [-1, w, -1, w]], float))[0]
        knots = []
        for start, extent, height in ((-1.0, h + 1.0, h), (lr_rows.min(), np.ptp(lr_rows),
                                                           self.lr_rows)):
            step = height / self.knots
            knots.append(start + step * np.arange(-3, np.ceil(extent / step) + 4))
        return knots

    @property
    def n_coef(self) -> int:
        """Number of spline coefficients per field component."""
        return sum(len(t) - 4 for t in self._knots())

    def _slow_coords(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HR row and LR row of HR coordinates (2, ...)."""
        return coords[0], _apply(self.matrix, self.offset, coords)[0]

    def design(self, coords: np.ndarray) -> np.ndarray:
        """B-spline design matrix (N, K) at HR coordinates (2, N)."""
        return np.hstack([BSpline.design_matrix(u, t, 3).toarray()
                          for u, t in zip(self._slow_coords(coords), self._knots())])

    def penalty(self) -> np.ndarray:
        """Second-difference penalty (K, K) on the coefficients of both splines."""
        return linalg.block_diag(*[
            (d := np.diff(np.eye(len(t) - 4), 2, axis=0)).T @ d for t in self._knots()
        ])

    def fit(self, patches: _Patches, smoothing: float) -> tuple[np.ndarray, np.ndarray]:
        """Robust penalised fit to the accepted patches' shifts, each weighted by its inverse
        covariance (so an edge constrains only the shift across it), Tukey-IRLS reweighted.

        ``smoothing`` scales the curvature penalty relative to the data's total weight. Returns
        the coefficients (K, 2) and the mask of accepted patches kept as inliers.
        """
        ok = patches.accepted
        shifts, weight = patches.shift[ok], patches.weight[ok]
        weight = weight / np.median(np.trace(weight, axis1=1, axis2=2) / 2)
        design = self.design(patches.position[ok].T)
        k = design.shape[1]
        penalty = np.kron(np.eye(2), self.penalty())
        robust = np.ones(len(shifts))
        for _ in range(5):
            rw = robust[:, None, None] * weight
            normal = np.einsum("ipq,ik,il->pkql", rw, design, design).reshape(2 * k, 2 * k)
            rhs = np.einsum("ik,ipq,iq->pk", design, rw, shifts).ravel()
            lam = smoothing * np.trace(normal) / np.trace(penalty)
            # A tiny ridge keeps knots that no accepted patch constrains well-posed.
            ridge = 1e-9 * np.trace(normal) / len(normal) * np.eye(len(normal))
            coef = np.linalg.solve(normal + lam * penalty + ridge, rhs).reshape(2, k).T
            err = shifts - design @ coef
            dist = np.sqrt(np.einsum("ip,ipq,iq->i", err, weight, err))  # ~px for a typical patch
            sigma = max(1.4826 * np.median(dist), 0.05)
            robust = np.clip(1 - (dist / (4.685 * sigma)) ** 2, 0, None) ** 2
        kept = np.zeros(len(ok), bool)
        kept[ok] = dist <= max(3 * sigma, 0.25)
        return coef, kept

    def dense(self, coef: np.ndarray) -> np.ndarray:
        """The field on every HR pixel, float32 (2, h, w)."""
        slow = self._slow_coords(np.indices(self.hr_shape, dtype=float))
        parts, start = [], 0
        for u, t in zip(slow, self._knots()):
            n = len(t) - 4
            parts.append(BSpline(t, coef[start : start + n], 3)(u))  # (..., 2)
            start += n
        return np.moveaxis(parts[0] + parts[1], -1, 0).astype(np.float32)


#: Least accepted patches per coefficient of the local field (it has fewer knots otherwise).
PATCHES_PER_COEF = 3


def _fine_residual(lr: np.ndarray, hr1: np.ndarray, f1: int, sigma: float,
                   reg: Registration, local: bool, stride: int = 3) -> float:
    """Fraction of the LR's variance left by the quadratic intensity fit to the HR reduced by
    ``f1`` (``hr1``) and blurred by ``sigma`` (its px), through ``reg`` with or without its
    local field, over every ``stride``-th LR pixel the HR covers."""
    ys, values = _grid_samples(lr, stride)
    x = reg.lr_to_hr(ys, local=local) / f1
    ok = np.all((x >= 1.0) & (x <= np.array(hr1.shape)[:, None] - 2.0), axis=0)
    w = interpolate(ndi.gaussian_filter(hr1, sigma), x[:, ok]).astype(float)
    _, res, *_ = np.linalg.lstsq(_quadratic(w), values[ok], rcond=None)
    return float(res[0] / max(values[ok].var() * ok.sum(), 1e-30)) if len(res) else 1.0


def _local_field(lr: np.ndarray, hr, matrix: np.ndarray, offset: np.ndarray, hr_noise: float,
                 opts: _PatchSearch, scan_knots: int,
                 smoothing: float) -> tuple[np.ndarray | None, int, int]:
    """Dense local field (2, h, w) from the patch search, or None if too few patches pass. The
    splines have at most ``scan_knots`` knot intervals, fewer than there are rows of patches,
    and few enough for :data:`PATCHES_PER_COEF` accepted patches per coefficient.
    Also returns the numbers of patches tried and accepted.
    """
    patches = _patch_results(lr, hr, matrix, offset, hr_noise, opts)
    tried, passed = int(patches.tried.sum()), int(patches.accepted.sum())
    edge = opts.size // 2 + opts.radius
    patch_rows = len(range(edge, hr.shape[0] - edge, opts.step))
    for knots in range(int(np.clip(patch_rows - 1, 1, scan_knots)), 0, -1):
        model = _ScanLineField(matrix, offset, tuple(hr.shape), lr.shape[0], knots)
        if passed >= PATCHES_PER_COEF * model.n_coef:
            break
    else:
        warnings.warn(
            f"local registration skipped: only {passed} of {tried} textured patches matched "
            f"reliably, fewer than {PATCHES_PER_COEF} per coefficient of the stiffest local "
            f"field ({model.n_coef}); the registration is global only",
            stacklevel=3,
        )
        return None, tried, 0
    for _ in range(4):  # stiffen the fit until the mapping has no folds (it almost never folds)
        coef, kept = model.fit(patches, smoothing)
        disp = model.dense(coef)
        (d00, d01), (d10, d11) = np.gradient(disp[0]), np.gradient(disp[1])
        if ((1 + d00) * (1 + d11) - d01 * d10).min() > 0:
            return disp, tried, int(kept.sum())
        smoothing *= 10
    warnings.warn("local registration skipped: the fitted field folds", stacklevel=3)
    return None, tried, 0


def _absorb_affine(matrix: np.ndarray, offset: np.ndarray, disp: np.ndarray,
                   lr_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refit the affine as the least-squares affine of ``x → matrix (x + disp) + offset`` over
    the HR pixels that land inside the LR field of ``lr_shape`` (where patches measured the
    field: outside it the field is only extrapolated; all pixels if under 3 rows and columns
    land inside); return it with the field re-expressed relative to it (no affine part left)."""
    grid = np.indices(disp.shape[1:], dtype=float)
    lr_coords = _apply(matrix, offset, grid + disp)
    inside = np.all((lr_coords >= -0.5)
                    & (lr_coords <= np.array(lr_shape, dtype=float).reshape(2, 1, 1) - 0.5),
                    axis=0)
    if inside.any(1).sum() < 3 or inside.any(0).sum() < 3:
        inside = np.ones_like(inside)
    # Normal equations over those pixel centres, basis (row, col, 1).
    basis = np.concatenate([grid, np.ones((1, *grid.shape[1:]))])
    gram = np.tensordot(basis * inside, basis, axes=([1, 2], [1, 2]))
    moments = np.tensordot(basis * inside, lr_coords, axes=([1, 2], [1, 2]))
    coef = np.linalg.solve(gram, moments)  # (3, 2)
    new_matrix, new_offset = coef[:2].T, coef[2]
    inv = np.linalg.inv(new_matrix)
    new_disp = _apply(inv, -inv @ new_offset, lr_coords) - grid
    return new_matrix, new_offset, new_disp.astype(np.float32)


def _central(image, size: int = 2048) -> np.ndarray:
    """Central crop of at most ``size``² pixels, as a numpy array (computes a dask crop only)."""
    lo = [max(0, (n - size) // 2) for n in image.shape]
    return np.asarray(image[lo[0] : lo[0] + size, lo[1] : lo[1] + size], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


#: LR pixels by which scan drift may stretch the HR's extent: widens the accepted zoom range.
DRIFT_ALLOWANCE = 1.0


def _patch_search(hr_shape: tuple[int, int], zoom: float, blur: float, size: int | None,
                  step: int | None, radius: int | None) -> _PatchSearch:
    """Local-search parameters scaled to the pair (HR px): patches of 24 LR px (at most a third
    of the HR's side, at least 16 px) spaced by half a patch, searched ±3 LR px; ``None``
    takes the scaled default."""
    if size is None:
        size = int(np.clip(round(24 * zoom), 16, max(16, min(hr_shape) // 3)))
    step = max(1, size // 2) if step is None else step
    radius = max(2, round(3 * zoom)) if radius is None else radius
    return _PatchSearch(size, step, radius, blur)


def register_pair(
    lr,
    hr,
    zoom: float = 2.0,
    *,
    max_rotation_deg: float = 10.0,
    zoom_tolerance: float = 0.03,
    affine: bool = True,
    local: bool = True,
    allow_inversion: bool = True,
    min_ncc: float | None = None,
    min_peak_ratio: float = 1.5,
    patch_size: int | None = None,
    patch_step: int | None = None,
    search_radius: int | None = None,
    scan_knots: int = 12,
    smoothing: float = 1.0,
) -> Registration:
    """Register an HR scan of a sub-area to the LR scan of the whole field.

    Parameters
    ----------
    lr, hr
        2-D images (integers are scaled to [0, 1] by their dtype). ``hr`` may be a chunked dask
        array: its global step reads it reduced, its local step chunk by chunk.
    zoom
        Nominal HR/LR pixel-density ratio; the found one must be within ``zoom_tolerance``
        (relative) of it, plus what :data:`DRIFT_ALLOWANCE` LR px of drift across the HR give.
    max_rotation_deg
        Rotation search range ±, degrees.
    affine
        Refine a full affine at the finest level (else a similarity).
    local
        Estimate the local displacement field (scan drift).
    allow_inversion
        Accept, with a warning, an HR whose contrast is inverted with respect to the LR (else
        it is an error).
    min_ncc
        Least coarse-search NCC peak, on top of the significance test (None: that test alone).
    min_peak_ratio
        Ratio of the best to the second-best coarse peak above which the coarse match is unique;
        below it, the peaks within that ratio are refined and compared at the finest level.
    patch_size, patch_step, search_radius
        Local patch search, HR pixels; None scales them with the zoom and the HR size (24, 12
        and 3 LR px).
    scan_knots, smoothing
        Local field: most knot intervals over each scan's height (fewer where fewer patch rows
        fit, or fewer patches are accepted), and relative penalty of its per-scan-line P-splines.

    Returns
    -------
    Registration

    Raises
    ------
    RegistrationError
        HR not found in the LR (coarse match within chance, and no candidate that explains the
        LR); ambiguous match (a periodic specimen with nothing aperiodic in the HR field);
        contrast inverted (with ``allow_inversion=False``); rotation at the edge of the search
        range; zoom out of range; less than half of the HR inside the LR. A warning is given
        when part of the HR lies outside the LR, when the contrast is inverted, and when the
        local field is skipped.
    """
    lr = _as_image(lr, "lr")
    hr = _as_image(hr, "hr", allow_dask=True)
    if not zoom > 0:
        raise ValueError(f"zoom must be positive, got {zoom}")
    reg = _global(lr, hr, zoom, max_rotation_deg=max_rotation_deg, affine=affine,
                  allow_inversion=allow_inversion, min_ncc=min_ncc,
                  min_peak_ratio=min_peak_ratio)
    # Scan drift of up to DRIFT_ALLOWANCE LR px across the HR's extent scales the global fit.
    tolerance = zoom_tolerance + DRIFT_ALLOWANCE * zoom / min(hr.shape)
    if abs(reg.zoom / zoom - 1) > tolerance:
        raise RegistrationError(
            f"found zoom {reg.zoom:.4f} is outside the accepted range {zoom:g} ± "
            f"{100 * tolerance:.3g} %: if that is the pair's zoom, pass --zoom "
            f"{reg.zoom:.3g}; else the match is wrong"
        )
    if abs(reg.rotation_deg) > max_rotation_deg:
        raise RegistrationError(
            f"found rotation {reg.rotation_deg:+.2f}° is at the edge of the search range "
            f"±{max_rotation_deg:g}°; widen it with --max-rotation"
        )
    inside = reg.inside_fraction
    if inside < 0.5:
        raise RegistrationError(
            f"only {100 * inside:.0f} % of the HR image lies inside the LR image (need 50 %): "
            "the HR must image a sub-area of the LR field; use the LR scan that contains it"
        )
    if inside < 0.999:
        warnings.warn(f"{100 * (1 - inside):.1f} % of the HR image lies outside the LR image",
                      stacklevel=2)
    if local:
        hr_signed = 1.0 - hr if reg.inverted else hr
        opts = _patch_search(hr.shape, reg.zoom, reg.blur_sigma, patch_size, patch_step,
                             search_radius)
        disp, reg.patches_tried, reg.patches_accepted = _local_field(
            lr, hr_signed, reg.matrix, reg.offset, _noise_sigma(_central(hr)), opts, scan_knots,
            smoothing,
        )
        if disp is not None:
            with_field = Registration(reg.matrix, reg.offset, reg.lr_shape, reg.hr_shape,
                                      disp=disp)
            f1 = max(1, round(reg.zoom))
            hr1 = _reduce(hr_signed, f1)
            sigma = np.sqrt(max(reg.blur_sigma**2 - (0.5 * f1 if f1 > 1 else 0.0) ** 2, 0)) / f1
            gain = [_fine_residual(lr, hr1, f1, sigma, with_field, local)
                    for local in (False, True)]
            if gain[1] < gain[0]:
                reg.matrix, reg.offset, reg.disp = _absorb_affine(reg.matrix, reg.offset, disp,
                                                                  lr.shape)
            else:
                reg.patches_accepted = 0
                warnings.warn(
                    f"local registration skipped: the local field from {reg.patches_tried} "
                    f"patches does not improve the fit (fraction of the LR's variance left "
                    f"{gain[1]:.4f} with it, {gain[0]:.4f} without); the registration is "
                    "global only", stacklevel=2)
    return reg


def warp_hr_to_sr(hr, reg: Registration, lr_shape: tuple[int, int] | None = None,
                  zoom: int = 2, local: bool = True) -> np.ndarray:
    """Resample the HR image onto the ×``zoom`` SR grid of the LR field (the training target).

    SR pixel ``p`` has LR coordinate ``(p + 0.5)/zoom − 0.5`` (:func:`pairsr.grid.sr_to_lr`); its
    value is the HR image's bicubic (:func:`pairsr.grid.interpolate`) at ``reg.lr_to_hr`` of it.
    Returns float32 (zoom·H, zoom·W), NaN outside the HR footprint.
    """
    hr = _as_image(hr, "hr")
    if hr.shape != reg.hr_shape:
        raise ValueError(f"hr has shape {hr.shape}, the registration was made for {reg.hr_shape}")
    lr_shape = tuple(reg.lr_shape if lr_shape is None else lr_shape)
    out = np.full(sr_shape(lr_shape, zoom), np.nan, dtype=np.float32)
    # SR bounding box of the footprint, widened by the local field and a pixel.
    margin = zoom * (1 + (np.abs(reg.disp).max() / reg.zoom if reg.disp is not None else 0))
    corners = lr_to_sr(reg.footprint, zoom)
    lo = np.clip(np.floor(corners.min(0) - margin).astype(int), 0, out.shape)
    hi = np.clip(np.ceil(corners.max(0) + margin).astype(int) + 1, 0, out.shape)
    if np.any(hi <= lo):
        return out
    p = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]].astype(float)
    x = reg.lr_to_hr(sr_to_lr(p, zoom), local=local)
    inside = np.all((x >= -0.5) & (x <= np.array(hr.shape).reshape(2, 1, 1) - 0.5), axis=0)
    out[lo[0] : hi[0], lo[1] : hi[1]] = np.where(inside, interpolate(hr, x), np.nan)
    return out


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """Grey image → uint8 RGB, contrast stretched between its 0.5 and 99.5 percentiles."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)


def _draw_line(rgb: np.ndarray, start: np.ndarray, end: np.ndarray, colour: tuple) -> None:
    """Line from ``start`` to ``end`` ((row, col)), clipped to ``rgb``."""
    rr, cc = draw.line(*np.round(start).astype(int), *np.round(end).astype(int))
    keep = (rr >= 0) & (rr < rgb.shape[0]) & (cc >= 0) & (cc < rgb.shape[1])
    rgb[rr[keep], cc[keep]] = colour


def _draw_arrow(rgb: np.ndarray, start: np.ndarray, end: np.ndarray, colour: tuple) -> None:
    """Arrow from ``start`` to ``end`` ((row, col)) with a two-stroke head, clipped to ``rgb``."""
    vec = end - start
    length = np.hypot(*vec)
    strokes = [(start, end)]
    if length > 1:
        back = -vec / length * min(6.0, 0.4 * length)
        for angle in (25, -25):
            strokes.append((end, end + _rotation(angle) @ back))
    for a, b in strokes:
        _draw_line(rgb, a, b, colour)


def plot_registration(lr, hr, reg: Registration, path: str | Path, n_arrows: int = 16) -> Path:
    """Write a PNG in the spirit of the paper's Fig. 4: the LR image with the HR footprint (red),
    beside the HR image with the local displacements as arrows (yellow, magnified so that the
    longest is 1/``n_arrows`` of the HR width)."""
    lr = _as_image(lr, "lr")
    hr = _as_image(hr, "hr")
    left = _to_rgb(lr)
    corners = np.vstack([reg.footprint, reg.footprint[:1]])
    for a, b in pairwise(corners):
        _draw_line(left, a, b, (255, 0, 0))
    scale = lr.shape[0] / hr.shape[0]  # the HR panel is shown at the LR image's height
    right = _to_rgb(transform.resize(hr, (lr.shape[0], round(hr.shape[1] * scale)),
                                     anti_aliasing=True))
    if reg.disp is not None:
        step = max(1, min(hr.shape) // n_arrows)
        rows, cols = np.mgrid[step // 2 : hr.shape[0] : step, step // 2 : hr.shape[1] : step]
        vec = reg.disp[:, rows, cols].reshape(2, -1).T
        gain = hr.shape[1] / n_arrows / max(np.hypot(*vec.T).max(), 1e-6)
        for base, v in zip(np.stack([rows.ravel(), cols.ravel()], 1), vec):
            start = (base + 0.5) * scale - 0.5
            _draw_arrow(right, start, start + v * gain * scale, (255, 255, 0))
    gap = np.full((lr.shape[0], 8, 3), 255, np.uint8)
    path = Path(path)
    Image.fromarray(np.hstack([left, gap, right])).save(path)
    return path
