"""The smooth local displacement field fitted to the accepted patch shifts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import linalg
from scipy import ndimage as ndi
from scipy.interpolate import BSpline

from pairsr.grid import BOUNDARY, interpolate
from pairsr.register._global import _spline_gradient
from pairsr.register._images import (
    _block_ids,
    _grid_samples,
    _paired_significance,
    _quadratic,
    _Window,
)
from pairsr.register._local import _patch_results, _Patches, _PatchSearch
from pairsr.register._mapping import (
    LocalField,
    Registration,
    RidgeSpline,
    _apply,
    _pixel_grid,
    _row_blocks,
)


@dataclass
class _ScanLineField:
    """Smooth local field as per-line shifts of both scans: ``disp(x) = s_hr(row) + s_lr(lr_row)``.

    ``row`` is the HR row of ``x`` and ``lr_row`` the LR row the global affine maps it to; each
    ``s`` (2 components) is a cubic P-spline with uniform knots, ``knots`` intervals over the full
    height of its scan, and a second-difference penalty. Scan drift is a shift of each scan line
    that varies smoothly over the frame, so this is the field's form. :meth:`field` gives the
    fitted field as a :class:`LocalField` of two :class:`RidgeSpline` terms.
    """

    matrix: np.ndarray
    offset: np.ndarray
    hr_shape: tuple[int, int]
    lr_rows: int
    knots: int

    def terms(self, coef: np.ndarray | None = None) -> list[RidgeSpline]:
        """The HR-row and LR-row splines, uniform knots covering the whole HR image, with the
        coefficients ``coef`` (K, 2) (zeros if None)."""
        h, w = self.hr_shape
        lr_rows = _apply(self.matrix, self.offset,
                         np.array([[-1, -1, h, h], [-1, w, -1, w]], float))[0]
        coef = np.zeros((self.n_coef, 2)) if coef is None else np.asarray(coef, float)
        terms, start = [], 0
        for (direction, offset), (first, extent, height) in zip(
                (((1.0, 0.0), 0.0), (self.matrix[0], self.offset[0])),
                ((-1.0, h + 1.0, h), (lr_rows.min(), np.ptp(lr_rows), self.lr_rows))):
            step = height / self.knots
            n = int(np.ceil(extent / step)) + 3
            terms.append(RidgeSpline(direction, float(offset), first - 3 * step, step,
                                     coef[start : start + n]))
            start += n
        return terms

    @property
    def n_coef(self) -> int:
        """Number of spline coefficients per field component."""
        h, w = self.hr_shape
        lr_rows = _apply(self.matrix, self.offset,
                         np.array([[-1, -1, h, h], [-1, w, -1, w]], float))[0]
        return sum(int(np.ceil(extent / (height / self.knots))) + 3
                   for extent, height in ((h + 1.0, h), (np.ptp(lr_rows), self.lr_rows)))

    def design(self, coords: np.ndarray) -> np.ndarray:
        """B-spline design matrix (N, K) at HR coordinates (2, N); constant beyond each
        spline's base interval, as :class:`RidgeSpline` evaluates it."""
        return np.hstack([BSpline.design_matrix(np.clip(t.coordinate(coords), t.knots[3],
                                                        t.knots[-4]), t.knots, 3).toarray()
                          for t in self.terms()])

    def full_design(self, coords: np.ndarray) -> np.ndarray:
        """Design matrix (N, K + 3) of the field with an affine part (:meth:`field`'s
        ``linear`` and ``shift``: the coordinates, then 1) at HR coordinates (2, N)."""
        return np.hstack([self.design(coords), coords.T, np.ones((coords.shape[1], 1))])

    def grid(self, n: int = 64) -> np.ndarray:
        """HR coordinates (2, N) of an ``n`` × ``n`` grid (at most) over the HR image."""
        return np.stack(np.meshgrid(*(np.linspace(0, s - 1, min(s, n)) for s in self.hr_shape),
                                    indexing="ij")).reshape(2, -1)

    def penalty(self) -> np.ndarray:
        """Second-difference penalty (K, K) on the coefficients of both splines."""
        return linalg.block_diag(*[
            (d := np.diff(np.eye(len(t.coef)), 2, axis=0)).T @ d for t in self.terms()
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

    def field(self, coef: np.ndarray, linear: np.ndarray | None = None,
              shift: np.ndarray | None = None) -> LocalField:
        """The field of coefficients ``coef`` (K, 2) (and an affine part), as a record."""
        return LocalField(self.terms(coef), np.zeros((2, 2)) if linear is None else linear,
                          np.zeros(2) if shift is None else shift)


#: Least accepted patches per coefficient of the local field (it has fewer knots otherwise).
PATCHES_PER_COEF = 3


def _field_gain(lr: _Window, hr1: np.ndarray, f1: int, sigma: float, reg: Registration,
                block: float, max_points: int = 1_000_000) -> tuple[float, float, float]:
    """How much ``reg``'s local field improves the fit: the fractions of the LR's variance left
    by the quadratic intensity fit to the HR reduced by ``f1`` (``hr1``) and blurred by
    ``sigma`` (its px) through ``reg`` without and with its field, and the significance (σ) of
    the improvement (:func:`_paired_significance`, ``block``-px blocks), over the LR pixels that
    both place inside the HR (every one, or a regular sub-grid of at most ``max_points`` of the
    window: the test's power grows with the pixels compared); ``lr`` is a window of the LR that
    holds them."""
    ys, values = _grid_samples(lr, max(1, int(np.ceil(np.sqrt(lr.image.size / max_points)))))
    xs = [reg.lr_to_hr(ys, local=local) / f1 for local in (False, True)]
    ok = np.all([np.all((x >= 1.0) & (x <= np.array(hr1.shape)[:, None] - 2.0), axis=0)
                 for x in xs], axis=0)
    if ok.sum() < 16:
        return 1.0, 1.0, 0.0
    blurred = ndi.gaussian_filter(hr1, sigma)
    pred = []
    for x in xs:
        design = _quadratic(interpolate(blurred, x[:, ok]).astype(float))
        coef, *_ = np.linalg.lstsq(design, values[ok], rcond=None)
        pred.append(design @ coef)
    var = max(float(values[ok].var()) * ok.sum(), 1e-30)
    left = [float(np.sum((values[ok] - p) ** 2) / var) for p in pred]
    return left[0], left[1], _paired_significance(values[ok], pred[1], pred[0], ys[:, ok], block)


def _unexplained_shift(patches: _Patches, mask: np.ndarray, misfit: np.ndarray) -> float:
    """RMS local misalignment (HR px) that ``misfit`` (N, 2) of the patches in ``mask`` shows
    beyond their own measurement noise (from their inverse covariances): what a mapping leaves
    unmodelled (scan drift that a global affine cannot follow), NaN without patches."""
    if mask.sum() == 0:
        return float("nan")
    noise = np.trace(np.linalg.pinv(patches.weight[mask]), axis1=1, axis2=2)
    # Medians: a few patches that matched the wrong place must not decide.
    return float(np.sqrt(max(np.median(np.sum(misfit**2, 1)) - np.median(noise), 0.0)))


class _FieldFit(NamedTuple):
    """One candidate local field of :func:`_local_field`."""

    field: LocalField
    accepted: int  # patches kept as inliers
    left: float  # RMS misalignment (HR px) the inliers show under it beyond their noise


def _local_field(lr: _Window, hr, matrix: np.ndarray, offset: np.ndarray, hr_noise: float,
                 opts: _PatchSearch, scan_knots: int, smoothings: tuple[float, ...],
                 threads: int = 1) -> tuple[list[_FieldFit], int, float, str]:
    """Candidate local fields from the patch search, one per relative curvature penalty of
    ``smoothings`` (stiffened where the mapping would fold), or none if too few patches pass:
    the caller tells them apart on the LR image (:func:`_field_gain`). The splines have at
    most ``scan_knots`` knot intervals, fewer than there are rows of patches, and few enough
    for :data:`PATCHES_PER_COEF` accepted patches per coefficient. ``lr`` is the window of the
    LR around the HR's footprint (its search regions and the bicubic halo; the LR-row spline's
    knots still span the whole LR's height). The patch search runs on ``threads`` threads.
    Also returns the number of patches tried, the RMS local misalignment (HR px,
    :func:`_unexplained_shift`) of the accepted patches under the global mapping, and why there
    is no field ("" if there are fields).
    """
    origin = np.asarray(lr.origin, dtype=float)
    # The search sees the window as the LR: the same pixels, the affine shifted by its origin.
    patches = _patch_results(lr.image, hr, matrix, offset - origin, hr_noise, opts,
                             threads)
    tried, passed = int(patches.tried.sum()), int(patches.accepted.sum())
    ok = patches.accepted
    unmodelled = _unexplained_shift(patches, ok, patches.shift[ok])
    for knots in range(int(np.clip(opts.rows(hr.shape[0]) - 1, 1, scan_knots)), 0, -1):
        model = _ScanLineField(matrix, offset, tuple(hr.shape), lr.shape[0], knots)
        if passed >= PATCHES_PER_COEF * model.n_coef:
            break
    else:
        return [], tried, unmodelled, (
            f"only {passed} of {tried} textured patches matched reliably, fewer than "
            f"{PATCHES_PER_COEF} per coefficient of the stiffest local field ({model.n_coef})")
    cols = slice(0, hr.shape[1])
    fits = []
    for smoothing in smoothings:
        for _ in range(4):  # stiffen the fit until the mapping has no folds (it rarely folds)
            coef, kept = model.fit(patches, smoothing)
            field = model.field(coef)
            if min(float(field.jacobian_det(_pixel_grid(rows, cols)).min())
                   for rows in _row_blocks(tuple(hr.shape))) > 0:
                misfit = patches.shift[kept] - model.design(patches.position[kept].T) @ coef
                fits.append(_FieldFit(field, int(kept.sum()),
                                      _unexplained_shift(patches, kept, misfit)))
                break
            smoothing *= 10
    return fits, tried, unmodelled, "" if fits else "the field fitted to the patches folds"


#: Relative curvature penalty of the field that the LR image fits (:func:`_image_field`): to
#: the spline coefficients' share of the fit's own normal matrix, so that it does not depend
#: on the image's size, contrast or texture.
IMAGE_SMOOTHING = 1.0
#: Most LR pixels (a regular sub-grid of the HR's footprint) that the image fit compares: a
#: sub-grid loses precision (every LR pixel carries its own noise), so only a survey-sized
#: footprint is thinned.
IMAGE_POINTS = 1_000_000
#: LR pixels per chunk of the image fit's Jacobian (its memory: about 0.6 kB per pixel).
IMAGE_CHUNK = 65_536


def _fit_design(model: _ScanLineField, field: LocalField, x: np.ndarray,
                slope_grad: np.ndarray) -> np.ndarray:
    """Jacobian (N, 2 (K + 3)) of the prediction at LR pixels whose HR coordinates are ``x``
    (2, N) under ``field``, with respect to its parameters (per component: the K spline
    coefficients, ``linear``'s row and ``shift``).
    ``slope_grad`` (2, N): the prediction's gradient in HR px. For a fixed LR pixel, moving the
    field by ``δ`` moves its HR point by ``−(I + ∂disp/∂x)⁻¹ δ`` (the implicit inverse)."""
    jac = np.eye(2)[:, :, None] + field.linear[:, :, None]
    for term in field.terms:
        jac = jac + term(x, derivative=True)[:, None] * term.direction[None, :, None]
    move = -np.einsum("nij,in->nj", np.linalg.inv(np.moveaxis(jac, -1, 0)), slope_grad)
    basis = model.full_design(x)
    return np.hstack([move[:, :1] * basis, move[:, 1:] * basis])


def _image_field(lr: _Window, hr1: np.ndarray, f1: int, sigma: float, matrix: np.ndarray,
                 offset: np.ndarray, model: _ScanLineField, smoothing: float,
                 block: float, start: LocalField | None = None,
                 max_iter: int = 20) -> _ImageField | None:
    """The scan-line field fitted to the LR image itself: Gauss-Newton on
    Σ (L(y) − p(H(x(y))))² + λ·curvature over the LR pixels ``y`` that the global affine
    places inside the HR (at most :data:`IMAGE_POINTS`, on a regular sub-grid of the window
    ``lr``), where ``x(y)`` inverts ``matrix (x + disp(x)) + offset``, ``H`` is the HR reduced by
    ``f1`` (``hr1``) and blurred by ``sigma`` (its px), and ``p`` the quadratic intensity map,
    fitted jointly. ``disp`` is ``model``'s field plus an affine part (the global fit weights
    the HR by its texture; this fit keeps what the field's shape explains everywhere); ``λ`` is
    ``smoothing`` times the spline coefficients' share of the normal matrix over the
    penalty's. Fitted from no field and from ``start`` (its least-squares projection on the
    model), the lower objective wins. A step that raises the objective is halved, down to 1/64.
    Stiffened (×10, up to 4 times) where the map would fold; None if it still folds. The field
    is relative to ``matrix``, ``offset``. Its precision at the HR's corners is the parameters'
    covariance, cluster-robust over ``block``-px blocks of the LR as for the global fit
    (:func:`pairsr.register._global._corner_sd`), propagated to the corners of the
    least-squares affine of the map (:func:`_absorb_affine`)."""
    k, m = model.n_coef, model.n_coef + 3
    stride = max(1, int(np.ceil(np.sqrt(lr.image.size / IMAGE_POINTS))))
    ys, values = _grid_samples(lr, stride)
    inv = np.linalg.inv(matrix)
    nominal = _apply(inv, -inv @ offset, ys)  # HR coordinates without a field
    # A fixed set of pixels: one that changed with the map would make the objective jump.
    ok = np.all((nominal >= f1) & (nominal <= f1 * (np.array(hr1.shape)[:, None] - 2.0)), axis=0)
    if ok.sum() < 64:
        return None
    ys, values, nominal = ys[:, ok], values[ok], nominal[:, ok]
    spline = ndi.spline_filter(ndi.gaussian_filter(np.asarray(hr1, float), sigma), order=3,
                               mode=BOUNDARY)
    penalty = np.zeros((2 * m + 3, 2 * m + 3))  # the 3 intensity parameters last, unpenalised
    penalty[:k, :k] = penalty[m : m + k, m : m + k] = model.penalty()

    def field_of(theta: np.ndarray) -> LocalField:
        """The field of the parameters (m, 2): per component, the spline coefficients,
        ``linear``'s row and ``shift``."""
        return model.field(theta[:k], linear=theta[k : k + 2].T, shift=theta[k + 2])

    last = [nominal]

    ids = _block_ids(ys, block)

    def evaluate(theta: np.ndarray, scores: bool = False):
        """Normal matrix JᵀJ (P, P), Jᵀr (P,) and Σ r² of the fit linearised at ``theta``
        (accumulated over chunks of :data:`IMAGE_CHUNK` pixels), and with ``scores`` the sums
        of J r over the blocks."""
        field = field_of(theta)
        # x + disp(x) = nominal, by fixed-point iteration from the last map's x (as
        # Registration.lr_to_hr, which starts from the nominal and takes a few steps more).
        x = last[0]
        for _ in range(100):
            x, before = nominal - field(x), x
            if np.abs(x - before).max() < 1e-5:
                break
        last[0] = x
        w, grad = _spline_gradient(spline, x / f1)
        photo = _quadratic(w)
        coef, *_ = np.linalg.lstsq(photo, values, rcond=None)
        slope_grad = (coef[1] + 2 * coef[2] * w) * grad / f1
        resid = values - photo @ coef
        normal, rhs = np.zeros((2 * m + 3, 2 * m + 3)), np.zeros(2 * m + 3)
        sums = np.zeros((ids.max() + 1, 2 * m + 3)) if scores else None
        for lo in range(0, len(values), IMAGE_CHUNK):
            part = slice(lo, lo + IMAGE_CHUNK)
            jac = np.hstack([_fit_design(model, field, x[:, part], slope_grad[:, part]),
                             photo[part]])
            normal += jac.T @ jac
            rhs += jac.T @ resid[part]
            if scores:
                np.add.at(sums, ids[part], jac * resid[part, None])
        return normal, rhs, float(resid @ resid), sums

    normal = evaluate(np.zeros((m, 2)))[0]
    lam = smoothing * (np.trace(normal[:k, :k]) + np.trace(normal[m : m + k, m : m + k])) \
        / max(2 * np.trace(penalty[:k, :k]), 1e-30)
    # A tiny ridge keeps the spline's and the affine part's shared directions well-posed.
    ridge = 1e-9 * np.trace(normal) / len(normal) * np.eye(len(normal))

    def fit(theta: np.ndarray, lam: float) -> tuple[float, np.ndarray]:
        """Penalised objective and parameters at convergence from ``theta``."""
        def objective(theta, sse):
            flat = np.concatenate([theta.T.ravel(), np.zeros(3)])
            return float(sse + lam * flat @ penalty @ flat), flat

        normal, rhs, sse, _ = evaluate(theta)
        value, flat = objective(theta, sse)
        step = 1.0
        for _ in range(max_iter):
            delta = np.linalg.solve(normal + lam * penalty + ridge, rhs - lam * penalty @ flat)
            move = delta[: 2 * m].reshape(2, m).T
            here = last[0]
            while step >= 1 / 64:
                state = evaluate(theta + step * move)
                trial, trial_flat = objective(theta + step * move, state[2])
                if trial <= value:
                    break
                step *= 0.5
            else:
                break
            change = float(np.abs(field_of(step * move)(here)).max())  # HR px, compared pixels
            theta, value, flat = theta + step * move, trial, trial_flat
            normal, rhs, _, _ = state
            step = 1.0
            if change < 1e-3:
                break
        return value, theta

    starts = [np.zeros((m, 2))]
    if start is not None:
        coords = model.grid()
        starts.append(np.linalg.lstsq(model.full_design(coords), start(coords).T, rcond=None)[0])
    cols = slice(0, model.hr_shape[1])
    for _ in range(4):
        theta = min((fit(theta, lam) for theta in starts), key=lambda r: r[0])[1]
        field = field_of(theta)
        if min(float(field.jacobian_det(_pixel_grid(rows, cols)).min())
               for rows in _row_blocks(model.hr_shape)) > 0:
            normal, _, _, sums = evaluate(theta, scores=True)
            return _ImageField(field, _field_corner_sd(model, matrix, normal, sums,
                                                       lam * penalty))
        lam *= 10
    return None


class _ImageField(NamedTuple):
    """Result of :func:`_image_field`."""

    field: LocalField
    corner_sd: float  # predicted RMS error of the HR's corners in the LR, LR px


def _field_corner_sd(model: _ScanLineField, matrix: np.ndarray, normal: np.ndarray,
                     sums: np.ndarray, penalty: np.ndarray) -> float:
    """Predicted RMS error (LR px) of the HR's 4 corners under the least-squares affine of the
    image-fitted map: the sandwich covariance of its parameters (normal matrix JᵀJ (P, P),
    the scores J r summed over blocks of the LR (B, P), scaled ``penalty`` (P, P)), through the
    affine fit of each basis function over the HR (a 64² grid)."""
    bread = np.linalg.pinv(normal + penalty)
    cov = bread @ (sums.T @ sums) @ bread
    h, w = model.hr_shape
    coords = model.grid()
    basis = model.full_design(coords)
    proj = np.linalg.lstsq(basis[:, -3:], basis, rcond=None)[0]  # (3, K + 3): affine parts
    corners = np.array([[-0.5, -0.5, 1], [-0.5, w - 0.5, 1], [h - 0.5, -0.5, 1],
                        [h - 0.5, w - 0.5, 1]]) @ proj  # (4, K + 3)
    m = basis.shape[1]
    total = 0.0
    for at in corners:  # LR move of the corner per parameter: matrix[:, i] · basis_k(corner)
        d = np.zeros((2, len(normal)))
        d[:, :m] = matrix[:, :1] * at
        d[:, m : 2 * m] = matrix[:, 1:] * at
        total += float(np.trace(d @ cov @ d.T))
    return float(np.sqrt(total / 4))


def _absorb_affine(matrix: np.ndarray, offset: np.ndarray, field: LocalField,
                   hr_shape: tuple[int, int],
                   lr_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, LocalField]:
    """Refit the affine as the least-squares affine of ``x → matrix (x + disp(x)) + offset``
    over the HR pixels that land inside the LR field of ``lr_shape`` (where patches measured
    the field: outside it the field is only extrapolated; all pixels if under 3 rows and
    columns land inside); return it with the field re-expressed relative to it (no affine part
    left)."""
    # Normal equations over those pixel centres, basis (row, col, 1), summed in row blocks.
    sums = {key: [np.zeros((3, 3)), np.zeros((3, 2))] for key in ("inside", "all")}
    rows_in, cols_in = np.zeros(hr_shape[0], bool), np.zeros(hr_shape[1], bool)
    for rows in _row_blocks(hr_shape):
        grid = _pixel_grid(rows, slice(0, hr_shape[1]))
        lr_coords = _apply(matrix, offset, grid + field(grid))
        inside = np.all((lr_coords >= -0.5)
                        & (lr_coords <= np.array(lr_shape, dtype=float).reshape(2, 1, 1) - 0.5),
                        axis=0)
        rows_in[rows] |= inside.any(1)
        cols_in |= inside.any(0)
        basis = np.concatenate([grid, np.ones((1, *grid.shape[1:]))])
        for key, weight in (("inside", inside), ("all", 1.0)):
            sums[key][0] += np.tensordot(basis * weight, basis, axes=([1, 2], [1, 2]))
            sums[key][1] += np.tensordot(basis * weight, lr_coords, axes=([1, 2], [1, 2]))
    gram, moments = sums["inside" if rows_in.sum() >= 3 and cols_in.sum() >= 3 else "all"]
    coef = np.linalg.solve(gram, moments)  # (3, 2)
    new_matrix, new_offset = coef[:2].T, coef[2]
    return new_matrix, new_offset, field.reexpressed(matrix, offset, new_matrix, new_offset)
