"""Uncertainty maps: the expected RMS error of each SR pixel against an HR scan.

**Features.** Every ``n × n`` patch of the bicubic-upsampled LR, on the lattice of every
``stride``-th pixel (the largest divisor of the zoom that is at most ``n``, so that tiles agree
with the whole image), attends over the pairs of a *reference* library exactly as the paired
LB-NLM does (nearest ``categories`` categories, weights ``exp(−‖Q − P_up‖² / (2 n² σ²))``,
normalised). Per patch that gives the weighted variance of the pairs' HR values at each of its
pixels, the RMS pixel distance of the query to its nearest library patch over σ, and ``Σ w²``
(one over the effective number of matches). Each pixel averages them over the patches covering
it (:data:`FEATURES`: ``spread``, ``distance``, ``concentration``) and adds the variance of the
covering patches' HR estimates (``disagreement``), their mean (``intensity``) and the squared
gradient of the upsampled LR (``gradient``). For LB-NLM the reference is the model's own library
and σ (the map describes its attention); for every other method it is a *novelty* library of
the training pairs (:func:`pairsr.library.sample_patches`) with σ =
:data:`pairsr.sigma.DEFAULT_RATIO` times the median distance of held-out query patches to it:
a method-independent measure of how familiar each region's structure is.

**Calibration** (:func:`calibrate`, at fit time). The HR footprint of each pair is cut into
:data:`FOLDS` bands of equal HR pixel counts (:mod:`pairsr.sigma`'s bands); for
:data:`ROUNDS` of them in turn the method is fitted again without that band (and a margin of
its halo), with the same parameters (LB-NLM: the σ chosen), and its SR on the band is compared
with the HR there; errors and features are averaged over :data:`SMOOTH`-px windows. The squared
errors ``e²`` are modelled as ``v(I) + exp(β₀ + Σ βᵢ log(fᵢ + εᵢ))``: the HR scan's noise
variance ``v`` as a power of intensity, measured on the HR itself (:func:`noise_model`) and held
fixed (a free scale of it would be confounded with the SR term's own intensity coefficient),
plus the SR's own error, fitted by the Gaussian likelihood of ``e`` (:func:`_fit_glm`). The map
keeps the HR noise as one floor, its mean over the held-out pixels, so that its contrast is
about the SR, and is scaled so that its mean square equals the mean ``e²`` there: predicted and
measured RMS agree on the held-out bands. The map is in [0, 1] intensity units (as the SR before
it is written in a dtype).
"""

from __future__ import annotations

import inspect
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pairsr.grid import bicubic
from pairsr.library import Library, sample_patches
from pairsr.patches import axis_grid, cpus, ordered_map, zoom_lattice

#: Names of the per-pixel features the calibration regresses on, in the order of
#: :func:`patch_features`' output.
FEATURES = ("spread", "disagreement", "distance", "concentration", "intensity", "gradient")
#: Bands of the HR footprint per pair, and how many of them are held out (one refit each).
FOLDS, ROUNDS = 4, 2
#: Held-out pixels the calibration regresses on at most.
PIXELS = 2**16
#: Ridge penalty of the regression on standardised features (keeps a feature that hardly
#: varies, e.g. ``concentration`` when σ makes every weight equal, from a huge coefficient).
RIDGE = 1e-3
#: Side (SR px) of the windows the held-out errors and features are averaged over first.
SMOOTH = 9
#: The novelty library of methods without one of their own: patch side, categories, size, and
#: patches clustered per member (:func:`pairsr.library.sample_patches`' ``K``).
NOVELTY_N, NOVELTY_K, NOVELTY_L, NOVELTY_SAMPLE = 9, 50, 10000, 3
#: Query patches that measure the novelty library's distance scale per round.
QUERIES = 2048
#: float32 values of a step's largest temporary (distances of its queries to a category set).
BLOCK = 2**22
#: Folder of the novelty library inside a model folder.
FOLDER = "uncertainty"


class UncertaintyError(ValueError):
    """An uncertainty map cannot be made for this model."""


@dataclass
class Reference:
    """What the features attend over: a library, σ (intensity units), the categories searched
    and whether the values are HR − up (residual) or HR."""

    library: Library
    sigma: float
    categories: int = 1
    residual: bool = False
    _prepared: dict = field(default_factory=dict, repr=False)

    def prepared(self, combo: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        """Centred keys and values of a category set, their squared norms and the value mean."""
        if combo not in self._prepared:
            lib = self.library
            rows = np.flatnonzero(np.isin(lib.labels, combo))
            keys, values = lib.up[rows], lib.hr[rows]
            if self.residual:
                values = values - keys
            mu, nu = keys.mean(axis=0), values.mean(axis=0)
            k, v = keys - mu, values - nu
            self._prepared[combo] = (mu, np.ascontiguousarray(k.T),
                                     np.einsum("ij,ij->i", k, k), v, v * v, nu)
        return self._prepared[combo]


def _combos(q: np.ndarray, ref: Reference) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Queries grouped by the ``categories`` categories nearest to them (by centroid)."""
    c = ref.library.centroids
    scores = q @ c.T - 0.5 * np.einsum("ij,ij->i", c, c)
    m = min(ref.categories, len(c))
    top = np.sort(np.argpartition(-scores, m - 1, axis=1)[:, :m], axis=1)
    present, inverse = np.unique(top, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    return [(tuple(int(v) for v in combo), np.flatnonzero(inverse == g))
            for g, combo in enumerate(present)]


def attend(q: np.ndarray, ref: Reference) -> tuple[np.ndarray, ...]:
    """The attention statistics of query patches ``q`` (M, n²) over ``ref``.

    Returns
    -------
    estimate, spread : (M, n²) float32
        Weighted mean and weighted variance of the pairs' values (HR, or HR − up).
    distance : (M,) float32
        RMS pixel distance to the nearest library patch searched (intensity units).
    concentration : (M,) float32
        ``Σ w²`` of the normalised weights (1 / effective number of matches).
    """
    q = np.asarray(q, dtype=np.float32)
    d = q.shape[1]
    scale = 0.5 / (d * ref.sigma**2)
    estimate, spread = np.empty_like(q), np.empty_like(q)
    distance, concentration = np.empty(len(q), np.float32), np.empty(len(q), np.float32)
    for combo, idx in _combos(q, ref):
        mu, k_t, k2, v, v2, nu = ref.prepared(combo)
        step = max(1, BLOCK // k_t.shape[1])
        for s in range(0, len(idx), step):
            rows = idx[s : s + step]
            a = q[rows] - mu
            d2 = a @ k_t
            d2 *= -2
            d2 += k2
            d2 += np.einsum("ij,ij->i", a, a)[:, None]
            np.maximum(d2, 0, out=d2)
            nearest = d2.min(axis=1)
            w = np.exp(-(d2 - nearest[:, None]) * scale)
            w /= w.sum(axis=1, keepdims=True)
            mean = w @ v
            estimate[rows] = mean + nu
            spread[rows] = np.maximum(w @ v2 - mean * mean, 0)
            distance[rows] = np.sqrt(nearest / d)
            concentration[rows] = np.einsum("ij,ij->i", w, w)
    if ref.residual:
        estimate += q
    return estimate, spread, distance, concentration


def feature_stride(n: int, zoom: int) -> int:
    """The lattice of the feature patches: the largest divisor of ``zoom`` that is at most ``n``
    (tiles start on multiples of ``zoom`` SR px, so their lattices line up)."""
    return zoom_lattice(n, zoom)


def patch_features(up: np.ndarray, ref: Reference, *, stride: int = 1,
                   workers: int | None = None) -> np.ndarray:
    """The per-pixel features (:data:`FEATURES`) of an upsampled image ``up`` (H, W).

    The ``n × n`` patches centred on every ``stride``-th pixel (padded half-sample symmetric,
    as :func:`pairsr.patches.overlap_average` does) attend over ``ref`` (:func:`attend`); each
    pixel averages the statistics of the patches covering it. ``distance`` is in units of σ.
    Returns float32 ``(4, H, W)``.
    """
    up = np.asarray(up, dtype=np.float32)
    n = ref.library.n
    d = n * n
    (rows, pad_r), (cols, pad_c) = (axis_grid(length, n, stride) for length in up.shape)
    before = (n - 1) // 2
    padded = np.pad(up, ((before, pad_r), (before, pad_c)), mode="symmetric")
    windows = sliding_window_view(padded, (n, n))[::stride, ::stride][:rows, :cols]
    chunk = max(1, 8192 // cols)

    def band(r0: int) -> np.ndarray:
        q = windows[r0 : r0 + chunk].reshape(-1, d)
        est, spread, dist, conc = attend(q, ref)
        m = len(q)
        per = np.empty((6, m, d), np.float32)
        per[0], per[1], per[2] = est, est * est, spread
        per[3], per[4], per[5] = (dist / ref.sigma)[:, None], conc[:, None], 1.0
        return per.reshape(6, -1, cols, n, n)

    acc = np.zeros((6, *padded.shape), np.float32)
    starts = range(0, rows, chunk)
    for r0, per in zip(starts, ordered_map(band, starts, workers or cpus()), strict=True):
        top, span_r = r0 * stride, (per.shape[1] - 1) * stride + 1
        span_c = (cols - 1) * stride + 1
        for i in range(n):
            for j in range(n):
                acc[:, top + i : top + i + span_r : stride, j : j + span_c : stride] += (
                    per[:, :, :, i, j])
    h, w = up.shape
    acc = acc[:, before : before + h, before : before + w]
    mean = acc[:5] / acc[5]
    disagreement = np.maximum(mean[1] - mean[0] ** 2, 0)
    gy, gx = np.gradient(up)
    return np.stack([mean[2], disagreement, mean[3], mean[4], mean[0], gy * gy + gx * gx])


@dataclass
class Calibration:
    """A fitted map from features to expected squared error:
    ``μ = noise + exp(β₀ + Σ βᵢ log(fᵢ + εᵢ))`` (intensity² units).

    ``kind``: "attention" (the model's LB-NLM library is the reference) or "novelty" (``library``
    is); ``sigma``, ``categories``, ``residual``: the reference's; ``coef``: β₀ then one per
    feature (:data:`FEATURES`); ``floors``: the εᵢ; ``noise``: the HR scan's noise variance;
    ``bounds``: the 1–99 % range of each ``log(fᵢ + εᵢ)`` on the held-out pixels; ``record``:
    how it was fitted (pixels, measured and predicted RMS on the held-out bands, folds).
    """

    kind: str
    sigma: float
    categories: int
    residual: bool
    coef: list[float]
    floors: list[float]
    noise: float = 0.0
    bounds: list[list[float]] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    library: Library | None = None

    def design(self, features: np.ndarray) -> np.ndarray:
        """The regressors ``log(f + ε)`` of features ``(F, ...)``: ``(F, ...)`` float64, each
        clipped to ``bounds`` (the range the calibration was fitted on: its powers of the
        features are not extrapolated beyond it)."""
        shape = (-1, *([1] * (features.ndim - 1)))
        x = np.log(features.astype(np.float64) + np.reshape(self.floors, shape))
        if self.bounds:
            lo, hi = np.asarray(self.bounds, dtype=np.float64).T
            x = np.clip(x, np.reshape(lo, shape), np.reshape(hi, shape))
        return x

    def rms(self, features: np.ndarray) -> np.ndarray:
        """Expected RMS error (intensity units) of each pixel of ``features`` (4, H, W)."""
        x = self.design(features)
        log_mu = self.coef[0] + np.tensordot(np.asarray(self.coef[1:]), x, axes=1)
        return np.sqrt(self.noise + np.exp(log_mu)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "sigma": self.sigma, "categories": self.categories,
                "residual": self.residual, "features": list(FEATURES), "coef": self.coef,
                "floors": self.floors, "noise": self.noise, "bounds": self.bounds,
                "record": self.record}

    def save(self, folder: Path) -> list[str]:
        """Write the novelty library (if any) into ``folder``; return the file names."""
        if self.library is None:
            return []
        self.library.save(Path(folder) / FOLDER)
        return [f"{FOLDER}/library.npz"]

    @classmethod
    def from_dict(cls, data: dict, folder: Path | None = None) -> Calibration:
        if tuple(data.get("features", ())) != FEATURES:
            raise UncertaintyError(f"uncertainty calibration of features {data.get('features')}"
                                   f", this pairsr computes {list(FEATURES)}: refit the model")
        library = Library.load(Path(folder) / FOLDER) if data["kind"] == "novelty" else None
        return cls(data["kind"], float(data["sigma"]), int(data["categories"]),
                   bool(data["residual"]), list(data["coef"]), list(data["floors"]),
                   float(data["noise"]), [list(b) for b in data["bounds"]],
                   dict(data.get("record", {})), library)


def _attention_model(model) -> bool:
    from pairsr.lbnlm import LBNLM

    return isinstance(model, LBNLM)


def reference(model, calibration: Calibration) -> Reference:
    """The library ``calibration`` attends over with ``model``: the model's own (LB-NLM) or the
    calibration's novelty library."""
    library = model.library if calibration.kind == "attention" else calibration.library
    return Reference(library, calibration.sigma, calibration.categories, calibration.residual)


@dataclass
class _FeatureMap:
    """The features (:func:`patch_features`) of the model's upsampled LR against the library
    ``ref`` as a tiled-engine method (``zoom``, ``halo``, ``predict``), on the model's
    ``threads``."""

    model: object  # pairsr.methods.SRMethod
    ref: Reference

    @property
    def zoom(self) -> int:
        return self.model.zoom

    @property
    def halo(self) -> int:
        from pairsr.lbnlm import halo

        return halo(self.ref.library.n, self.zoom)

    def features(self, lr: np.ndarray) -> np.ndarray:
        """The features (:data:`FEATURES`, zoom·h, zoom·w) of a float32 LR array (h, w)."""
        return patch_features(bicubic(np.asarray(lr, np.float32), self.zoom), self.ref,
                              stride=feature_stride(self.ref.library.n, self.zoom),
                              workers=self.model.threads)

    def predict(self, lr: np.ndarray) -> np.ndarray:
        return self.features(lr)


@dataclass
class UncertaintyMap(_FeatureMap):
    """The uncertainty map of a calibrated model as a tiled-engine method: ``predict(lr)`` gives
    the expected RMS error (intensity units) on the SR grid, ``halo`` its LR context."""

    model: object  # pairsr.methods.SRMethod with a calibration
    ref: Reference = field(init=False)
    name = "uncertainty"

    def __post_init__(self) -> None:
        if self.model.name == "bicubic":
            raise UncertaintyError(
                "bicubic learns nothing from an HR scan, so there is no library to measure "
                "novelty against: fit a model (`pairsr fit LR HR --out MODEL`) and run `pairsr "
                "apply MODEL LR --out SR.zarr --uncertainty`")
        if getattr(self.model, "calibration", None) is None:
            raise UncertaintyError(
                f"this {self.model.name} model has no uncertainty calibration (networks are "
                "calibrated only on request, older models not at all): fit it again with "
                "`pairsr fit`, or from Python fit(..., uncertainty=True)")
        self.ref = reference(self.model, self.model.calibration)

    def predict(self, lr: np.ndarray) -> np.ndarray:
        """Expected RMS error of each SR pixel of a float32 LR array (h, w): (zoom·h, zoom·w)."""
        return self.model.calibration.rms(self.features(lr))


# ----------------------------------------------------------------------------- calibration


def _refit(model, pairs: list[tuple[np.ndarray, np.ndarray]], folder: Path):
    """``model``'s method fitted again on ``pairs`` with its parameters (its σ, not a search)."""
    cls = type(model)
    accepted = inspect.signature(cls.fit).parameters
    params = {k: v for k, v in model.params.items()
              if k in accepted and k not in ("zoom", "folder", "resume", "progress")}
    if getattr(cls, "trains_in_folder", False):
        params["folder"] = folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a smaller HR: the fold's own fallbacks, not the user's
        return cls.fit(pairs, zoom=model.zoom, **params)


def _novelty(pairs: list[tuple[np.ndarray, np.ndarray]], zoom: int, seed: int) -> Library:
    train = [(bicubic(lr, zoom), hr) for lr, hr in pairs]
    return sample_patches(train, n=NOVELTY_N, k=NOVELTY_K, K=NOVELTY_SAMPLE, L=NOVELTY_L,
                          seed=seed).library()


def _held_out(hr: np.ndarray, folds: int, f: int, margin: int):
    """The held-out band ``f`` of a pair's footprint: (the HR with the band and ``margin`` SR px
    either side removed, the band's SR box (y0, y1, x0, x1)), or None without HR there."""
    from pairsr.sigma import _bands

    valid = np.isfinite(hr)
    if not valid.any():
        return None
    axis, edges = _bands(valid, folds)
    lo, hi = int(edges[f]), int(edges[f + 1])
    if hi <= lo:
        return None
    kept = hr.copy()
    cut = slice(max(lo - margin, 0), hi + margin)
    band = valid[:, lo:hi] if axis else valid[lo:hi]
    across = np.flatnonzero(band.any(axis))
    if axis:
        kept[:, cut] = np.nan
        box = (int(across[0]), int(across[-1]) + 1, lo, hi)
    else:
        kept[cut] = np.nan
        box = (lo, hi, int(across[0]), int(across[-1]) + 1)
    return kept, box


def _on_box(method, lr: np.ndarray, box: tuple[int, int, int, int], zoom: int) -> np.ndarray:
    """``method.predict`` (SR grid, any leading axes) over the SR box ``box`` (y0, y1, x0, x1),
    from the LR around it with the method's halo."""
    y0, y1, x0, x1 = box
    m = method.halo
    ly0, lx0 = max(y0 // zoom - m, 0), max(x0 // zoom - m, 0)
    ly1, lx1 = min(-(-y1 // zoom) + m, lr.shape[0]), min(-(-x1 // zoom) + m, lr.shape[1])
    crop = lr[ly0:ly1, lx0:lx1]
    oy, ox = y0 - zoom * ly0, x0 - zoom * lx0
    return method.predict(crop)[..., oy : oy + y1 - y0, ox : ox + x1 - x0]


def _neighbour_difference(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each inner pixel's difference to the mean of its 4 neighbours, the local mean
    ``(pixel + 4 · neighbours) / 5`` and the central-difference gradient magnitude (inner
    pixels of ``image``)."""
    inner = image[1:-1, 1:-1]
    around = (image[:-2, 1:-1] + image[2:, 1:-1] + image[1:-1, :-2] + image[1:-1, 2:]) / 4
    grad = np.hypot(image[2:, 1:-1] - image[:-2, 1:-1], image[1:-1, 2:] - image[1:-1, :-2])
    return inner - around, (inner + 4 * around) / 5, grad


@cache
def resampled_noise_bias(phases: int = 16) -> float:
    """How much the neighbour-difference statistic underestimates the variance of white noise
    resampled by the SR grid's cubic spline (:func:`pairsr.grid.interpolate`, as the HR is
    onto the SR grid): the mean over ``phases²`` sub-pixel phases, uniform over the pixel (the
    phases cycle over an HR footprint that is rotated or scaled against the grid), of the
    resampled noise's variance over the mean of its statistic ``E[(x − mean₄)²] / 1.25``; 1 for
    noise that is not resampled. Exact, from the interpolator's impulse responses."""
    from pairsr.grid import interpolate

    size = 33
    impulse = np.zeros((1, size), np.float32)
    impulse[0, size // 2] = 1
    at = np.arange(size, dtype=np.float64)
    responses = [interpolate(impulse, np.stack([np.zeros(size), at + (p + 0.5) / phases]))
                 .astype(np.float64) for p in range(phases)]
    variance, statistic = 0.0, 0.0
    for hy in responses:
        for hx in responses:
            kernel = np.pad(np.outer(hy, hx), 1)
            variance += float((kernel**2).sum())
            statistic += float((_neighbour_difference(np.pad(kernel, 1))[0] ** 2).sum()) / 1.25
    return variance / statistic


def noise_model(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """The HR scans' noise variance on the SR grid as a power of intensity: ``(a, b)`` of
    ``v(I) = exp(a + b log I)``, from the pixels' differences to the mean of their 4 neighbours
    (``1.25 v`` for white noise; the HR's resampling onto the SR grid correlates its noise, which
    :func:`resampled_noise_bias` corrects) where the HR is smoothest (the half of its pixels of
    least local gradient), by a Gamma GLM with a log link against the local mean intensity."""
    from sklearn.linear_model import GammaRegressor

    xs, ys = [], []
    for _, hr in pairs:
        diff, local, grad = _neighbour_difference(np.asarray(hr, np.float64))
        ok = np.isfinite(diff) & np.isfinite(grad)
        if ok.sum() < 16:
            continue
        ok &= grad <= np.median(grad[ok])
        xs.append(local[ok])
        ys.append(diff[ok] ** 2 / 1.25)
    x, y = np.concatenate(xs), np.concatenate(ys)
    floor = max(float(np.quantile(x, 0.01)), 1e-3)
    glm = GammaRegressor(alpha=0.0, solver="newton-cholesky", max_iter=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        glm.fit(np.log(np.maximum(x, floor))[:, None], y + 1e-6 * y.mean())
    return float(glm.intercept_ + np.log(resampled_noise_bias())), float(glm.coef_[0])


def _smooth(e2: np.ndarray, feats: np.ndarray, seen: np.ndarray,
            size: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``e2`` (h, w) and ``feats`` (F, h, w) over the ``seen`` pixels of every
    ``size × size`` window (a less noisy target for the regression)."""
    from scipy.ndimage import uniform_filter

    if size <= 1:
        return e2, feats
    weight = uniform_filter(seen.astype(np.float64), size, mode="constant")
    stack = np.concatenate([np.where(seen, e2, 0)[None], feats * seen], axis=0)
    means = uniform_filter(stack.astype(np.float64), (1, size, size), mode="constant")
    means /= np.maximum(weight, 1e-12)
    return means[0], means[1:]


def _fit_glm(x: np.ndarray, y: np.ndarray, noise: np.ndarray) -> list[float]:
    """``β`` of ``E[y] = noise + exp(β₀ + x·β)`` for ``x`` (N, p), ``y`` (N,) and the HR noise
    variances ``noise`` (N,), by the Gaussian likelihood of errors ``e`` (``y = e²``) of
    variance ``μ``, started from the Gamma GLM of ``y − noise`` (log link)."""
    from scipy.optimize import minimize
    from sklearn.linear_model import GammaRegressor

    mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-12)
    z = (x - mean) / std
    scale = float(y.mean())
    excess = np.maximum(y - noise, 1e-3 * scale)
    glm = GammaRegressor(alpha=RIDGE, solver="newton-cholesky", max_iter=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        glm.fit(z, excess)
    design = np.column_stack([np.ones(len(z)), z])
    t, v = y / scale, noise / scale

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        part = np.exp(np.clip(design @ theta - np.log(scale), -50, 50))
        mu = v + part
        g = (1 / mu - t / mu**2) / len(t)
        penalty = np.concatenate([[0.0], RIDGE * theta[1:]])
        value = float(np.mean(t / mu + np.log(mu))) + 0.5 * float(penalty @ theta)
        return value, design.T @ (g * part) + penalty

    start = np.concatenate([[glm.intercept_], glm.coef_])
    theta = minimize(nll, start, jac=True, method="L-BFGS-B").x
    beta = theta[1:] / std
    return [float(theta[0] - beta @ mean), *map(float, beta)]


def calibrate(model, pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, folds: int = FOLDS,
              rounds: int = ROUNDS, pixels: int = PIXELS, seed: int = 0,
              smooth: int | None = None) -> Calibration:
    """Fit ``model``'s uncertainty calibration on held-out bands of its training pairs.

    Parameters
    ----------
    model : SRMethod
        The fitted model (its class and parameters are fitted again per round).
    pairs : list of (lr, hr)
        The training pairs ``model`` was fitted on: LR (H, W), HR on its SR grid, NaN where
        there is none.
    folds, rounds
        Bands of each footprint, and how many are held out in turn (one refit each).
    pixels
        Held-out pixels regressed on at most (a random subset).

    Returns
    -------
    Calibration
        ``UncertaintyError`` when no band yields held-out pixels (an HR only a few patches
        across); ``record`` holds the measured and predicted RMS on the held-out pixels.
    """
    if model.name == "bicubic":
        UncertaintyMap(model)  # raises with the message
    if not 2 <= folds or not 1 <= rounds <= folds:
        raise ValueError(f"need folds >= 2 and 1 <= rounds <= folds, got {folds}, {rounds}")
    rng = np.random.default_rng(seed)
    zoom = model.zoom
    pairs = [(np.asarray(lr, np.float32), np.asarray(hr, np.float32)) for lr, hr in pairs]
    attention = _attention_model(model)
    p = model.params
    margin = zoom * model.halo
    smooth = SMOOTH if smooth is None else smooth
    features, errors, sigmas = [], [], []
    held = sorted({int(folds * (r + 0.5) / rounds) for r in range(rounds)})
    with tempfile.TemporaryDirectory(prefix="pairsr-calibrate-") as tmp:
        for f in held:
            parts = [_held_out(hr, folds, f, margin) for _, hr in pairs]
            train = [(lr, part[0] if part else hr) for (lr, hr), part in zip(pairs, parts,
                                                                           strict=True)]
            if not any(part for part in parts) or not any(np.isfinite(h).any() for _, h in train):
                continue
            fold = _refit(model, train, Path(tmp) / f"fold{f}")
            if attention:
                ref = Reference(fold.library, float(p["sigma"]), int(p["categories"]),
                                bool(p["residual"]))
            else:
                library = _novelty(train, zoom, seed)
                queries = _band_queries(pairs, parts, library.n, zoom, rng)
                sigma = _novelty_sigma(queries, library)
                sigmas.append(sigma)
                ref = Reference(library, sigma)
            umap = _FeatureMap(fold, ref)
            for (lr, hr), part in zip(pairs, parts, strict=True):
                if part is None:
                    continue
                box = part[1]
                y0, y1, x0, x1 = box
                target = hr[y0:y1, x0:x1]
                seen = np.isfinite(target)
                if not seen.any():
                    continue
                sr = _on_box(fold, lr, box, zoom)
                feats = _on_box(umap, lr, box, zoom)
                e2, feats = _smooth((sr - target) ** 2, feats, seen, smooth)
                errors.append(e2[seen])
                features.append(feats[:, seen])
    if not errors:
        raise UncertaintyError("the HR footprint is too small to hold out a band for the "
                               "uncertainty calibration")
    y = np.concatenate(errors).astype(np.float64)
    feats = np.concatenate(features, axis=1)
    if len(y) > pixels:
        pick = rng.choice(len(y), pixels, replace=False)
        y, feats = y[pick], feats[:, pick]
    if attention:
        kind, sigma, library = "attention", float(p["sigma"]), None
        categories, residual = int(p["categories"]), bool(p["residual"])
    else:
        kind, sigma, library = "novelty", float(np.median(sigmas)), _novelty(pairs, zoom, seed)
        categories, residual = 1, False
    a, b = noise_model(pairs)
    small = (sigma / 10) ** 2
    floors = [small, small, 0.1, 0.0, 1e-3, small]
    cal = Calibration(kind, sigma, categories, residual, [0.0] * (1 + len(FEATURES)), floors,
                      library=library)
    noise = np.exp(a + b * np.log(np.maximum(feats[4], floors[4])))
    x = cal.design(feats)
    cal.bounds = np.quantile(x, [0.01, 0.99], axis=1).T.tolist()
    cal.coef = _fit_glm(x.T, y, noise)
    cal.noise = float(noise.mean())
    factor = float(y.mean() / (cal.rms(feats).astype(np.float64) ** 2).mean())
    cal.coef[0] += float(np.log(factor))  # the means agree: scale both parts
    cal.noise *= factor
    predicted = cal.rms(feats) ** 2
    cal.record = {"pixels": int(len(y)), "folds": folds, "rounds": len(held),
                  "measured_rms": float(np.sqrt(y.mean())),
                  "predicted_rms": float(np.sqrt(predicted.mean()))}
    return cal


def _band_queries(pairs, parts, n: int, zoom: int, rng: np.random.Generator) -> np.ndarray:
    """Up to :data:`QUERIES` random upsampled-LR patches (n²) from the held-out bands."""
    from pairsr.patches import gather_patches

    out = []
    for (lr, _), part in zip(pairs, parts, strict=True):
        if part is None:
            continue
        y0, y1, x0, x1 = part[1]
        up = bicubic(lr, zoom)[y0:y1, x0:x1]
        if min(up.shape) < n:
            continue
        rows = rng.integers(0, up.shape[0] - n + 1, QUERIES)
        cols = rng.integers(0, up.shape[1] - n + 1, QUERIES)
        out.append(gather_patches(up, rows, cols, n))
    return np.concatenate(out)[: QUERIES]


def _novelty_sigma(queries: np.ndarray, library: Library) -> float:
    """:data:`pairsr.sigma.DEFAULT_RATIO` times the median distance of ``queries`` to their
    nearest patch of ``library`` (as the LB-NLM σ fallback scales)."""
    from pairsr.sigma import _MIN_SCALE, DEFAULT_RATIO

    _, _, distance, _ = attend(queries, Reference(library, 1.0))
    return DEFAULT_RATIO * max(float(np.median(distance)), _MIN_SCALE)
