"""Global registration: coarse NCC search over rotations, then a Gauss-Newton fit."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import fft, optimize
from scipy import ndimage as ndi
from skimage.feature import match_template, peak_local_max

from pairsr.grid import BOUNDARY, interpolate
from pairsr.patches import ordered_map
from pairsr.region import window_sums
from pairsr.register._images import (
    _block_ids,
    _central,
    _decimate,
    _grid_samples,
    _level_window,
    _noise_sigma,
    _paired_significance,
    _quadratic,
    _reduce,
    _texture_note,
    _Window,
)
from pairsr.register._mapping import Registration, RegistrationError, _rotation

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


#: LR pixels (at the coarse level) from which the coarse search's angles run in parallel.
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
    return ncc, ncc * np.sqrt(np.clip(window_sums(inside, tmpl.shape) / tmpl.size, 0, 1)), umin


def _angle_peaks(lr_c: np.ndarray, tmpl: np.ndarray, angle: float,
                 pad: np.ndarray) -> tuple[float, float]:
    """The best positive and negative (inverted-contrast) score at one angle."""
    score = _angle_search(lr_c, tmpl, angle, pad)[1]
    return float(score.max()), float(-score.min())


def _coarse_search(lr_c: np.ndarray, tmpl: np.ndarray, max_rotation_deg: float,
                   threads: int = 1) -> dict[int, _Match]:
    """NCC template search of ``tmpl`` in ``lr_c`` over a sweep of rotations.

    Each angle is searched by :func:`_angle_search`. Positions are scored by NCC·√overlap (the
    overlap: the template's fraction inside the LR), the significance of a correlation over
    that many pixels, so that a small overlap that happens to correlate does not compete with a
    full one. The angles run on ``threads`` threads when ``lr_c`` has
    :data:`PARALLEL_SEARCH_PIXELS` or more (else one after the other). Returns, for the positive
    (key 1) and negative (key −1: inverted contrast) correlation, the :data:`MAX_CANDIDATES`
    best peaks at the best angle.
    """
    half_diag = 0.5 * np.hypot(*tmpl.shape)
    step = float(np.clip(np.rad2deg(1.0 / half_diag), 0.1, 2.0))  # ≤ 1 px at the corners
    n = int(np.ceil(max_rotation_deg / step)) + 1  # one step beyond the range: edge test
    angles = np.linspace(-n * step, n * step, 2 * n + 1)
    pad = 3 * np.array(tmpl.shape) // 4
    workers = threads if lr_c.size >= PARALLEL_SEARCH_PIXELS else 1
    peaks = list(ordered_map(lambda a: _angle_peaks(lr_c, tmpl, a, pad), angles, workers))
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


#: Rise of the fraction of the LR's variance left, over the least reached so far, beyond which
#: a global refinement step is halved (the compared pixels change with the map).
TOLERANCE = 1e-3


def _spline_gradient(spline: np.ndarray, coords: np.ndarray,
                     h: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Values (N,) and gradient (2, N) of the cubic B-spline interpolant with coefficients
    ``spline`` (:func:`scipy.ndimage.spline_filter` of an image) at ``coords`` (2, N): the exact
    derivative of what is fitted (central differences of the spline, error O(h²)), so that the
    Gauss-Newton fit stops at the objective's minimum, not where a finite-difference image
    gradient says it is."""
    def at(x):
        return ndi.map_coordinates(spline, x, order=3, mode=BOUNDARY, prefilter=False)

    grad = []
    for k in range(2):
        step = np.zeros((2, 1))
        step[k] = h
        grad.append((at(coords + step) - at(coords - step)) / (2 * h))
    return at(coords), np.stack(grad)


class _Refined(NamedTuple):
    """Result of :func:`_refine`: the LR→HR map ``x = a @ y + t`` at a pyramid level."""

    a: np.ndarray
    t: np.ndarray
    ncc: float  # NCC of L and the intensity-mapped H at the fit
    corner_sd: float  # predicted error of the HR's corners in L (level px, RMS over the 4)


#: Side (level px) of the blocks over which the fit's residuals are taken as correlated, for its
#: precision (:func:`_corner_sd`), in units of the compared images' smoothing scale.
PRECISION_BLOCK = 4.0


def _corner_sd(a: np.ndarray, tc: np.ndarray, yv: np.ndarray, jac: np.ndarray,
               resid: np.ndarray, n_geom: int, hr_shape: tuple[int, int], block: float) -> float:
    """Predicted RMS error (level px) of the HR image's 4 corners in L from the Gauss-Newton
    fit: the parameters' covariance, cluster-robust over ``block``-px blocks of L (the
    residual is correlated over the images' blur and over a mis-modelled region, so the
    white-noise ``σ² (JᵀJ)⁻¹`` underestimates it), propagated to the corners.

    ``yv`` (2, N) centred L coordinates of the compared pixels, ``jac`` (N, P) their Jacobian
    (its first ``n_geom`` columns the map's: 6 affine or 4 similarity), ``resid`` (N,).
    """
    ids = _block_ids(yv, block)
    scores = np.zeros((ids.max() + 1, jac.shape[1]))
    np.add.at(scores, ids, jac * resid[:, None])
    bread = np.linalg.pinv(jac.T @ jac)
    cov = (bread @ (scores.T @ scores) @ bread)[:n_geom, :n_geom]
    h, w = hr_shape
    inv = np.linalg.inv(a)
    total = 0.0
    for x in ([-0.5, -0.5], [-0.5, w - 0.5], [h - 0.5, -0.5], [h - 0.5, w - 0.5]):
        y = inv @ (np.asarray(x) - tc)
        if n_geom == 6:  # dx = da y + dt
            dx = np.array([[y[0], y[1], 0, 0, 1, 0], [0, 0, y[0], y[1], 0, 1]])
        else:  # da = [[s, -r], [r, s]]
            dx = np.array([[y[0], -y[1], 1, 0], [y[1], y[0], 0, 1]])
        d = inv @ dx  # corner's move in L (sign aside) per parameter
        total += float(np.trace(d @ cov @ d.T))
    return float(np.sqrt(total / 4))


def _under_footprint(lr_l: _Window, a: np.ndarray, t: np.ndarray, hr_shape: tuple[int, int],
                     max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (2, N) (of the whole level) and values (N,) of L's pixels in the bounding
    box of H's footprint under ``x = a @ y + t`` (2 px of margin for a fit's moves), on a
    regular sub-grid of at most ``max_points`` (None: all). ``lr_l`` is a window of L that
    holds that box."""
    h, w = hr_shape
    box = np.linalg.solve(a, np.array([[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]], float)
                          - t[:, None])
    origin = np.array(lr_l.origin)
    inside = origin + lr_l.image.shape
    lo = np.clip(np.floor(box.min(1)) - 2, origin, inside).astype(int)
    hi = np.clip(np.ceil(box.max(1)) + 3, origin, inside).astype(int)
    if np.any(hi - lo < 2):
        raise RegistrationError("global refinement lost the overlap between LR and HR")
    sub = lr_l.image[lo[0] - origin[0] : hi[0] - origin[0], lo[1] - origin[1] : hi[1] - origin[1]]
    stride = 1 if max_points is None else max(1, int(np.ceil(np.sqrt(sub.size / max_points))))
    ys, values = _grid_samples(_Window(sub, (0, 0), sub.shape), stride)
    return ys + lo[:, None], values


def _refine(
    lr_l: _Window, hr_l: np.ndarray, a: np.ndarray, t: np.ndarray, *, affine: bool,
    max_iter: int = 30, max_points: int = 100_000, smooth: float = 1.0,
) -> _Refined:
    """Gauss-Newton fit of the LR→HR map ``x = a @ y + t`` between two pyramid-level images.

    Minimises Σ (L(y) − p(H(a y + t)))² over LR pixels ``y`` whose ``x`` falls inside H, with
    ``p`` a quadratic intensity map fitted jointly (ECC-style), over a similarity (4 parameters)
    or affine (6) transform. The compared pixels are those of L under H's footprint (at most
    ``max_points``, on a regular sub-grid), and H's gradient is the exact derivative of its
    cubic spline, so that the fit stops at its objective's minimum. A step that raises the
    fraction of L's variance left by more than :data:`TOLERANCE` over the least reached is
    halved, down to 1/64, then the fit stops: on a pattern near the level's resolution (a
    lattice) the linearisation can point far off. ``smooth``: the images' smoothing scale
    (level px), for the precision's residual correlation (:func:`_corner_sd`). ``lr_l`` is a
    window of L that holds every pixel the HR reaches; the result does not depend on it.
    """
    ys, values = _under_footprint(lr_l, a, t, hr_l.shape, max_points)
    centre = ys.mean(1)
    yc = ys - centre[:, None]
    span = np.abs(yc).max()
    tc = t + a @ centre  # translation in centred coordinates
    spline = ndi.spline_filter(np.asarray(hr_l, dtype=float), order=3, mode=BOUNDARY)
    hi = np.array(hr_l.shape, dtype=float)[:, None] - 2.0
    n_geom = 6 if affine else 4

    def evaluate(a, tc):
        """Fraction of variance left, NCC, the Gauss-Newton step at the map ``a``, ``tc``, and
        the predicted corner error there."""
        x = a @ yc + tc[:, None]
        ok = np.all((x >= 1.0) & (x <= hi), axis=0)
        if ok.sum() < 64:
            raise RegistrationError(
                "global refinement lost the overlap between LR and HR (fewer than 64 pixels)"
            )
        xv, yv, lv = x[:, ok], yc[:, ok], values[ok]
        w, g = _spline_gradient(spline, xv)
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
        precision = lambda: _corner_sd(a, tc, yv, jac, resid, n_geom, hr_l.shape,  # noqa: E731
                                       PRECISION_BLOCK * max(smooth, 1.0))
        return left, float(np.corrcoef(w, lv)[0, 1]), da, dt, precision

    left, ncc, da, dt, precision = evaluate(a, tc)
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
        left, ncc, da, dt, precision = trial
        least, step = min(least, left), 1.0
        if change < 1e-3:
            break
    return _Refined(a, tc - a @ centre, ncc, precision())


def _fit_residual(lr_l: _Window, hr_l: np.ndarray, a: np.ndarray, t: np.ndarray,
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
    corner_sd: float  # predicted RMS error of the HR's corners in the LR, LR px
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
        fit = _refine(lr_lev[c], hr_lev[c], a * c / f, t / f, affine=affine and c == 1)
        a, t = fit.a * f / c, fit.t * f
    # The blur (LR px) that best brings the reduced HR to the LR, then a last refinement with it.
    f1, lr, hr1 = f_of[1], lr_lev[1], hr_lev[1]
    a1, t1 = a / f1, t / f1
    sigma = optimize.minimize_scalar(lambda s: _fit_residual(lr, hr1, a1, t1, s)[0],
                                     bounds=(0, 3), method="bounded", options={"xatol": 0.1}).x
    fit = _refine(lr, ndi.gaussian_filter(hr1, sigma), a1, t1, affine=affine,
                  smooth=float(np.hypot(1.0, sigma)))
    # Every LR pixel for the comparison of candidates: the LR's noise is white per pixel.
    return _Fit(fit.a * f1, fit.t * f1, float(sigma), fit.ncc, fit.corner_sd,
                *_fit_residual(lr, hr1, fit.a, fit.t, sigma, stride=1))


def _paired_separation(lr: _Window, hr1: np.ndarray, f1: int, best: _Fit,
                       other: _Fit) -> float:
    """Significance (σ) by which ``best`` explains the LR better than ``other``: the sum over
    the LR pixels that both place inside the HR of the difference of their squared residuals
    (each with its own blur and quadratic intensity fit there), over its std, cluster-robust
    over blocks of the images' smoothing scale. The LR's noise enters the difference only where
    the two predictions differ (a defect, an edge, the HR's border), so a regular pattern
    that both explain alike adds nothing but the noise of that difference."""
    ys, values = _under_footprint(lr, best.a / f1, best.t / f1, hr1.shape)
    xs = [(fit.a @ ys + fit.t[:, None]) / f1 for fit in (best, other)]
    both = np.all([np.all((x >= 1.0) & (x <= np.array(hr1.shape)[:, None] - 2.0), axis=0)
                   for x in xs], axis=0)
    if both.sum() < 64:
        return float("inf")  # the other candidate barely overlaps the best one's pixels
    pred = []
    for fit, x in zip((best, other), xs):
        w = interpolate(ndi.gaussian_filter(hr1, fit.sigma), x[:, both]).astype(float)
        coef, *_ = np.linalg.lstsq(_quadratic(w), values[both], rcond=None)
        pred.append(_quadratic(w) @ coef)
    return _paired_significance(values[both], pred[0], pred[1], ys[:, both],
                                PRECISION_BLOCK * np.hypot(1.0, best.sigma))


#: Margin of the LR window a candidate is fitted in, as a fraction of its footprint's extent
#: (beyond a few coarse pixels): the fit's zoom may differ from the nominal one by a few %.
FIT_MARGIN = 0.1


def _fit_window(lr, a: np.ndarray, t: np.ndarray, hr_shape: tuple[int, int], c: int,
                levels: list[int]) -> dict[int, _Window]:
    """Windows of the LR pyramid ``levels`` around the footprint of the LR→HR map ``x = a @ y +
    t`` (full resolution), widened by :data:`FIT_MARGIN` of its extent and 4 px of the coarse
    level ``c``: the LR read at full resolution only there."""
    h, w = hr_shape
    corners = np.array([[-0.5, -0.5, h - 0.5, h - 0.5], [-0.5, w - 0.5, -0.5, w - 0.5]])
    y = np.linalg.solve(a, corners - t[:, None])
    margin = FIT_MARGIN * np.ptp(y, axis=1) + 4 * c
    lo, hi = y.min(1) - margin, y.max(1) + margin
    return {level: _level_window(lr, level, lo, hi) for level in levels}


def _candidate_fits(match: _Match, keep: list[int], lr, levels: list[int], hr_lev: dict,
                    f_of: dict, hr_shape: tuple[int, int], tmpl_shape: tuple[int, int],
                    zoom: float, affine: bool) -> list[_Fit]:
    """The fits from the coarse peaks ``keep``, best (least residual) first, one per distinct
    mapping (the HR centre more than 1 LR px apart); peaks whose fit loses the overlap drop.
    Each is fitted on the LR pyramid ``levels`` read around its footprint (:func:`_fit_window`)."""
    c = max(levels)
    a0 = zoom * _rotation(match.angle).T
    fits = []
    for k in keep:
        t0 = f_of[c] * (np.array(tmpl_shape) - 1) / 2 - a0 @ (c * match.centres[k])
        lr_lev = _fit_window(lr, a0, t0, hr_shape, c, levels)
        try:
            fits.append(_fit_candidate(lr_lev, hr_lev, f_of, a0, t0, affine=affine))
        except (RegistrationError, np.linalg.LinAlgError):
            continue
    fits.sort(key=lambda fit: fit.residual)
    centre = np.array(hr_lev[1].shape) * f_of[1] / 2
    where = [np.linalg.solve(fit.a, centre - fit.t) for fit in fits]
    return [fit for i, fit in enumerate(fits)
            if all(np.hypot(*(where[i] - where[j])) > 1.0 for j in range(i))]


#: Least side (coarse px) of the HR template at the coarsest search level.
MIN_TEMPLATE = 48
#: Side (px) of the coarse LR beyond which the search coarsens past level 8, so that the coarse
#: search's time and memory follow the HR, not the survey (a 32k field is searched at 2048²).
COARSE_SIDE = 2048


def _levels(lr_shape: tuple[int, int], hr_shape: tuple[int, int], zoom: float) -> list[int]:
    """Pyramid levels ``c`` (the LR reduced by ``c``, the HR by about ``zoom·c``) of the global
    step, the last one the coarse search's: powers of 2 up to 8 while the template keeps
    :data:`MIN_TEMPLATE` px, and beyond 8 while the coarse LR is wider than
    :data:`COARSE_SIDE`."""
    levels = [1]
    while ((levels[-1] < 8 or max(lr_shape) / levels[-1] > COARSE_SIDE)
           and min(hr_shape) / (zoom * levels[-1] * 2) >= MIN_TEMPLATE):
        levels.append(2 * levels[-1])
    return levels


def _global(lr, hr, zoom: float, *, max_rotation_deg: float, affine: bool,
            allow_inversion: bool, min_ncc: float | None, min_peak_ratio: float,
            threads: int = 1) -> Registration:
    """Coarse search, then pyramid refinement and the HR→LR blur; the global registration.

    The coarse match decides alone when it is significant (its NCC well above what chance gives
    for the template's effectively independent pixels, over that many positions) and unique
    (``min_peak_ratio``). Otherwise its best peaks are each refined to the finest level and the
    fits compared: the best must explain the LR better than every other by
    :data:`MIN_SEPARATION` σ of the residual's noise (aperiodic content, such as a defect, an
    edge or the HR's border, tells one period of a regular pattern from the next), and, where
    the coarse match is not significant, explain :data:`MIN_EXPLAINED` of the LR's signal.

    ``lr`` may be a dask array: the search reads it reduced, block by block (:func:`_decimate`),
    the fits at full resolution only around each candidate (:func:`_fit_window`).
    """
    levels = _levels(lr.shape, hr.shape, zoom)
    f_of = {c: max(1, round(zoom * c)) for c in levels}
    f1 = f_of[1]
    hr_fine = _reduce(hr, f1, threads)  # the one pass over the full-resolution HR
    hr_lev = {c: _reduce(hr_fine, f // f1) if f % f1 == 0 else _reduce(hr, f, threads)
              for c, f in f_of.items()}

    c = levels[-1]
    lr_c = ndi.gaussian_filter(_decimate(lr, c, threads), COARSE_SMOOTH)
    tmpl = ndi.gaussian_filter(hr_lev[c], COARSE_SMOOTH)
    matches = _coarse_search(lr_c, tmpl, max_rotation_deg, threads)
    sign = _choose_sign(matches, allow_inversion=allow_inversion)
    match = matches[sign]
    significant = match.significance >= match.min_significance

    def not_found(reason: str) -> RegistrationError:
        return RegistrationError(
            f"HR image not found in the LR image: {reason} (best coarse match NCC "
            f"{match.ncc:.2f}, {match.significance:.1f}σ above chance){_texture_note(lr_c, tmpl)}"
            f"; {_zoom_hint(lr_c, hr, zoom, c, max_rotation_deg, threads)}"
        )

    if min_ncc is not None and match.ncc < min_ncc:
        raise not_found(f"coarse NCC {match.ncc:.2f} < {min_ncc:g}")
    unique = significant and match.peak_ratio >= min_peak_ratio
    keep = [0] if unique else [k for k, s in enumerate(match.scores)
                               if s >= match.scores[0] / min_peak_ratio]
    hr_signed = {c: sign * h for c, h in hr_lev.items()}
    fits = _candidate_fits(match, keep, lr, levels, hr_signed, f_of, hr.shape, tmpl.shape, zoom,
                           affine)
    if not fits:
        raise not_found("no candidate position kept an overlap when refined")
    best = fits[0]
    # The LR's noise where the HR lies (the pixels compared), the HR's in its centre.
    best_window = _fit_window(lr, best.a, best.t, hr.shape, c, [1])[1]
    lr_noise = _noise_sigma(best_window.image)
    reliability = best.reliabilities(lr_noise, _noise_sigma(_central(hr, threads=threads)), f1)
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
        separation = _paired_separation(best_window, hr_lev[1] * sign, f1, best, second)
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
        corner_sd=best.corner_sd, inverted=sign < 0,
        blur_sigma=float(np.hypot(0.5 * f1 if f1 > 1 else 0.0, f1 * best.sigma)),  # HR px
    )


def _rotation_of(a: np.ndarray) -> float:
    """Rotation (degrees) of the HR in the LR frame from an LR→HR matrix ``a``."""
    m = np.linalg.inv(a)
    return float(np.rad2deg(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))


def _zoom_hint(lr_c: np.ndarray, hr, zoom: float, c: int, max_rotation_deg: float,
               threads: int = 1) -> str:
    """What to try after a failed search: the zoom (of 1.5-8, or half or twice ``zoom``) at
    which the coarse search finds a significant, unique match, if there is one."""
    tried = []
    for other in sorted({1.5, 2.0, 3.0, 4.0, 6.0, 8.0, zoom / 2, zoom * 2}):
        f = round(other * c)
        if abs(other / zoom - 1) < 0.1 or f < 1 or min(hr.shape) / f < 16:
            continue
        tmpl = ndi.gaussian_filter(_reduce(hr, f, threads), COARSE_SMOOTH)
        if min(tmpl.shape) > 0.9 * min(lr_c.shape):
            continue
        match = _coarse_search(lr_c, tmpl, max_rotation_deg, threads)[1]
        tried.append((match.significance - match.min_significance, other, match))
    good = [t for t in tried if t[0] > 0 and t[2].peak_ratio >= 1.5]
    if good:
        _, other, match = max(good, key=lambda t: t[0])
        return (f"it matches at zoom {other:g} (NCC {match.ncc:.2f}): pass --zoom {other:g} if "
                f"that is the pair's ratio of pixel sizes (now {zoom:g})")
    return (f"check that the HR images a sub-area of the LR field and that the zoom is right "
            f"(--zoom, now {zoom:g})")
