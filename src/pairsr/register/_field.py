"""The smooth local displacement field fitted to the accepted patch shifts."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import linalg
from scipy import ndimage as ndi
from scipy.interpolate import BSpline

from pairsr.grid import interpolate
from pairsr.register._images import _grid_samples, _quadratic
from pairsr.register._local import _patch_results, _Patches, _PatchSearch
from pairsr.register._mapping import Registration, _apply


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


def _unexplained_shift(patches: _Patches, mask: np.ndarray, misfit: np.ndarray) -> float:
    """RMS local misalignment (HR px) that ``misfit`` (N, 2) of the patches in ``mask`` shows
    beyond their own measurement noise (from their inverse covariances): what a mapping leaves
    unmodelled (scan drift that a global affine cannot follow), NaN without patches."""
    if mask.sum() == 0:
        return float("nan")
    noise = np.trace(np.linalg.pinv(patches.weight[mask]), axis1=1, axis2=2)
    # Medians: a few patches that matched the wrong place must not decide.
    return float(np.sqrt(max(np.median(np.sum(misfit**2, 1)) - np.median(noise), 0.0)))


def _local_field(lr: np.ndarray, hr, matrix: np.ndarray, offset: np.ndarray, hr_noise: float,
                 opts: _PatchSearch, scan_knots: int,
                 smoothing: float) -> tuple[np.ndarray | None, int, int, float, float]:
    """Dense local field (2, h, w) from the patch search, or None if too few patches pass. The
    splines have at most ``scan_knots`` knot intervals, fewer than there are rows of patches,
    and few enough for :data:`PATCHES_PER_COEF` accepted patches per coefficient.
    Also returns the numbers of patches tried and accepted, and the RMS local misalignment
    (HR px, :func:`_unexplained_shift`) of the accepted patches under the global mapping and
    under the field (NaN without a field).
    """
    patches = _patch_results(lr, hr, matrix, offset, hr_noise, opts)
    tried, passed = int(patches.tried.sum()), int(patches.accepted.sum())
    ok = patches.accepted
    unmodelled = _unexplained_shift(patches, ok, patches.shift[ok])
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
        return None, tried, 0, unmodelled, float("nan")
    for _ in range(4):  # stiffen the fit until the mapping has no folds (it almost never folds)
        coef, kept = model.fit(patches, smoothing)
        disp = model.dense(coef)
        (d00, d01), (d10, d11) = np.gradient(disp[0]), np.gradient(disp[1])
        if ((1 + d00) * (1 + d11) - d01 * d10).min() > 0:
            misfit = patches.shift[kept] - model.design(patches.position[kept].T) @ coef
            return (disp, tried, int(kept.sum()), unmodelled,
                    _unexplained_shift(patches, kept, misfit))
        smoothing *= 10
    warnings.warn("local registration skipped: the fitted field folds", stacklevel=3)
    return None, tried, 0, unmodelled, float("nan")


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
