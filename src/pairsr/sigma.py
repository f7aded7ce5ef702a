"""Automatic choice of the LB-NLM weight scale σ (:func:`select_sigma`).

σ of a library filter (:func:`pairsr.lbnlm.lbnlm_filter`) is chosen by k-fold validation on the
training pairs themselves, with validation data that exist for any HR footprint (rotated, small,
irregular):

* **Folds.** The footprint of each pair (the pixels where its HR exists) is cut across its longer
  side (column bands for a footprint wider than tall, row bands otherwise) into ``folds`` bands
  holding equal numbers of HR pixels. Fold ``f`` holds out band ``f`` of every pair; its library
  (:meth:`pairsr.library.PatchSample.members`) comes from the same k-means categories as the
  final one, drawn from the patches at least ``n`` pixels clear of the band, so that no library
  patch is a slightly shifted copy of the HR it is scored on.
* **Validation pixels.** The held-out HR pixels, in cells of at most ``6n × 6n``: random cells,
  up to ``pixels`` HR pixels in all spread evenly over the folds (all of them when the pairs offer
  fewer). Each cell is filtered with the ``n − 1`` pixels of ``up`` around it that its output
  depends on (mirrored at the image's edge), the cells of a fold side by side in one strip (one
  filter call per fold and σ), and scored on its HR pixels only.
* **Candidates.** ``s`` is the median RMS pixel difference between a held-out query patch of
  ``up`` and its nearest library patch in the categories the filter would search: the distance at
  which the weights act, whatever the contrast and noise of the pair. σ runs over ``s · 2^j``,
  ``j = −2 … 2``, extended by the same steps while the best is at an end (to ``s/16`` and
  ``16 s``; beyond them the filter is a nearest-neighbour or a category mean), then over the half
  steps (``× 2^±½``) either side of the best, and last the vertex of the parabola through the
  best and its two neighbours (validation MSE against ``log σ``). The σ of least validation MSE
  over all folds wins.
* **Fallback.** With fewer than ``16 n²`` validation pixels (an HR only a few patches across),
  σ = :data:`DEFAULT_RATIO` · ``s``, with ``s`` measured between library patches at least ``n``
  pixels apart, and a warning.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pairsr.library import Library, PatchSample
from pairsr.patches import gather_patches

#: A library filter: ``estimate(up, library, sigma=σ, categories=m)`` → (H, W) float32 estimate.
Estimate = Callable[..., np.ndarray]

#: Folds (held-out bands per pair).
FOLDS = 5
#: Validation HR pixels scored per σ at most (spread over the folds).
PIXELS = 2**15
#: Query patches that measure the distance scale ``s``.
QUERIES = 2048
#: σ / ``s`` when there is too little held-out HR to choose σ: the median ratio chosen by the
#: validation on simulated pairs of varied specimen, contrast and noise (benchmarks/bench_sigma.py).
DEFAULT_RATIO = 0.7
#: Smallest distance scale: one 16-bit grey level (patches that all match exactly).
_MIN_SCALE = 2.0**-16
#: Grid steps ``j`` (σ = s·2^(j/2)) tried first, and how far the grid may extend.
_FIRST, _LAST = range(-4, 5, 2), 8


@dataclass
class SigmaChoice:
    """The σ chosen and the evidence: ``tried`` maps each σ evaluated to its validation MSE
    (empty for the fallback), ``scale`` is ``s``, ``pixels`` the validation pixels scored."""

    sigma: float
    scale: float
    pixels: int
    folds: int
    tried: dict[float, float] = field(default_factory=dict)

    @property
    def fallback(self) -> bool:
        return not self.tried

    def record(self) -> dict:
        """JSON-serialisable summary (stored with a fitted model)."""
        return {"sigma": self.sigma, "scale": self.scale, "pixels": self.pixels,
                "folds": self.folds, "fallback": self.fallback,
                "tried": [[s, self.tried[s]] for s in sorted(self.tried)]}  # fmt: skip


@dataclass
class _Fold:
    """One fold: its library, the held-out cells of ``up`` side by side (``mosaic``), the HR to
    score them against (``targets``, NaN where not scored) and query patches of ``up``."""

    library: Library
    mosaic: np.ndarray
    targets: np.ndarray
    queries: np.ndarray


def _bands(valid: np.ndarray, folds: int) -> tuple[int, np.ndarray]:
    """The axis the footprint ``valid`` is cut along (1: into column bands, for a footprint at
    least as wide as tall) and the ``folds + 1`` band edges, holding equal HR pixel counts."""
    rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
    axis = int(cols[-1] - cols[0] >= rows[-1] - rows[0])
    cum = np.cumsum(valid.sum(axis=1 - axis))
    inner = np.searchsorted(cum, cum[-1] * np.arange(1, folds) / folds) + 1
    first, last = (cols if axis else rows)[[0, -1]]
    return axis, np.maximum.accumulate(np.concatenate([[first], inner, [last + 1]]))


def _split(lo: int, hi: int, size: int) -> np.ndarray:
    """Edges of ``ceil((hi - lo) / size)`` near-equal parts of ``[lo, hi)``."""
    parts = max(1, math.ceil((hi - lo) / size))
    return np.round(np.linspace(lo, hi, parts + 1)).astype(int)


def _cells(valid: np.ndarray, axis: int, lo: int, hi: int, size: int) -> list[tuple]:
    """Cells ``(y0, y1, x0, x1, HR pixels)`` of at most ``size`` pixels a side tiling the band
    ``[lo, hi)`` (along ``axis``) of the footprint ``valid``, those with HR pixels."""
    band = valid[:, lo:hi] if axis else valid[lo:hi]
    across = np.flatnonzero(band.any(axis))
    if len(across) == 0:
        return []
    along, other = _split(lo, hi, size), _split(across[0], across[-1] + 1, size)
    cells = []
    for a0, a1 in itertools.pairwise(along):
        for b0, b1 in itertools.pairwise(other):
            y0, y1, x0, x1 = (b0, b1, a0, a1) if axis else (a0, a1, b0, b1)
            count = int(valid[y0:y1, x0:x1].sum())
            if count:
                cells.append((y0, y1, x0, x1, count))
    return cells


def _context(image: np.ndarray, y0: int, x0: int, shape: tuple[int, int]) -> np.ndarray:
    """The window of ``image`` of ``shape`` from ``(y0, x0)``, mirrored (half-sample symmetric,
    as the filter pads) where it leaves the image."""

    def mirror(start: int, size: int, length: int) -> np.ndarray:
        i = np.arange(start, start + size) % (2 * length)
        return np.where(i < length, i, 2 * length - 1 - i)

    rows, cols = (mirror(a, b, c) for a, b, c in zip((y0, x0), shape, image.shape))
    return image[np.ix_(rows, cols)]


def _nearest(q: np.ndarray, library: Library, categories: int,
             apart: tuple[np.ndarray, np.ndarray, int] | None = None) -> np.ndarray:
    """RMS pixel distance of each query patch ``q`` (Q, n²) to its nearest library patch in the
    ``categories`` categories the filter would search (``inf`` if none). ``apart`` =
    (query positions (Q, 3), member positions (L, 3), gap): ignore members of the same pair
    whose corner is less than ``gap`` pixels away in both rows and columns."""
    centroids = library.centroids
    scores = q @ centroids.T - 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    top = np.argpartition(-scores, categories - 1, axis=1)[:, :categories]
    best = np.full(len(q), np.inf)
    for c in range(library.k):
        queries = np.flatnonzero((top == c).any(axis=1))
        members = np.flatnonzero(library.labels == c)
        if len(queries) == 0:
            continue
        a, b = q[queries] - centroids[c], library.up[members] - centroids[c]
        d2 = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b) - 2 * a @ b.T
        if apart is not None:
            qw, mw, gap = apart[0][queries], apart[1][members], apart[2]
            near = (qw[:, None, 0] == mw[None, :, 0]) & np.all(
                np.abs(qw[:, None, 1:] - mw[None, :, 1:]) < gap, axis=2)
            d2[near] = np.inf
        best[queries] = np.minimum(best[queries], d2.min(axis=1))
    return np.sqrt(np.clip(best, 0, None) / q.shape[1])


def _folds(sample: PatchSample, pairs: Sequence[tuple[np.ndarray, np.ndarray]], folds: int,
           pixels: int, rng: np.random.Generator, seed: int) -> list[_Fold]:
    """The folds that have validation pixels and library patches (see the module docstring)."""
    n = sample.n
    reach, size = n - 1, 6 * n
    cuts = []
    for _, hr in pairs:
        valid = np.isfinite(hr)
        cuts.append((*_bands(valid, folds), valid) if valid.any() else None)
    out = []
    for f in range(folds):
        eligible = np.ones(len(sample.labels), dtype=bool)
        cells = []
        for i, cut in enumerate(cuts):
            if cut is None:
                continue
            axis, edges, valid = cut
            lo, hi = edges[f], edges[f + 1]
            corner = sample.where[:, 1 + axis]
            eligible &= ~((sample.where[:, 0] == i) & (corner + n > lo - n) & (corner < hi + n))
            cells += [(i, *cell) for cell in _cells(valid, axis, lo, hi, size)]
        members = sample.members(eligible, seed)
        if not cells or len(members) == 0:
            continue
        order = rng.permutation(len(cells))
        counts = np.cumsum([cells[j][-1] for j in order])
        take = order[: int(np.searchsorted(counts, pixels // folds)) + 1]
        taken = [cells[j] for j in np.sort(take)]
        height = max(y1 - y0 for _, y0, y1, *_ in taken) + 2 * reach
        ups, targets = [], []
        for i, y0, y1, x0, x1, _ in taken:
            up, hr = pairs[i]
            target = np.full((height, x1 - x0 + 2 * reach), np.nan, dtype=np.float32)
            target[reach : reach + y1 - y0, reach:-reach] = hr[y0:y1, x0:x1]
            ups.append(_context(up, y0 - reach, x0 - reach, target.shape))
            targets.append(target)
        mosaic, targets = np.hstack(ups), np.hstack(targets)
        ys, xs = np.nonzero(np.isfinite(targets))
        pick = rng.choice(len(ys), size=min(len(ys), QUERIES // folds), replace=False)
        before = (n - 1) // 2
        queries = gather_patches(mosaic, ys[pick] - before, xs[pick] - before, n)
        out.append(_Fold(sample.library(members), mosaic, targets, queries))
    return out


def _mse(folds: list[_Fold], sigma: float, categories: int, estimate: Estimate) -> float:
    """Validation MSE of σ over all folds, each searching at most ``categories`` categories."""
    sse, count = 0.0, 0
    for fold in folds:
        m = min(categories, fold.library.k)
        diff = estimate(fold.mosaic, fold.library, sigma=sigma, categories=m) - fold.targets
        scored = diff[np.isfinite(diff)]
        sse += float(np.dot(scored, scored))
        count += scored.size
    return sse / count


def _search(mse, scale: float) -> dict[float, float]:
    """σ → MSE: the grid ``scale · 2^j``, ``j = −2 … 2``, extended while the best is at an end,
    then the half steps either side of the best, then the vertex of the parabola through the
    best and its neighbours (MSE against ``log σ``)."""
    errors: dict[float, float] = {}

    def at(j: float) -> float:
        if j not in errors:
            errors[j] = mse(scale * 2.0 ** (j / 2))
        return errors[j]

    for j in _FIRST:
        at(j)
    while True:
        best = min(errors, key=errors.get)
        lo, hi = min(errors), max(errors)
        if best == lo and lo > -_LAST:
            at(lo - 2)
        elif best == hi and hi < _LAST:
            at(hi + 2)
        else:
            break
    for j in (best - 1, best + 1):
        if abs(j) <= _LAST:
            at(j)
    best = min(errors, key=errors.get)
    if best - 1 in errors and best + 1 in errors:
        e0, e1, e2 = errors[best - 1], errors[best], errors[best + 1]
        curvature = e0 - 2 * e1 + e2
        if curvature > 0:
            at(best + 0.5 * (e0 - e2) / curvature)
    return {scale * 2.0 ** (j / 2): e for j, e in errors.items()}


def select_sigma(
    sample: PatchSample,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    estimate: Estimate,
    *,
    categories: int = 1,
    candidates: Sequence[float] | None = None,
    folds: int = FOLDS,
    pixels: int = PIXELS,
    seed: int = 0,
) -> SigmaChoice:
    """Choose σ for the library filter ``estimate`` by k-fold validation (module docstring).

    Parameters
    ----------
    sample : PatchSample
        The clustered patches of ``pairs`` (:func:`pairsr.library.sample_patches`) the final
        library is drawn from; each fold's library is drawn from them too.
    pairs : list of (up, hr)
        The aligned training pairs ``sample`` was drawn from, (H, W) float arrays on one grid
        (``hr`` NaN where no HR exists).
    estimate : callable
        The filter whose σ is chosen, ``estimate(up, library, sigma=σ, categories=m)`` → its
        (H, W) estimate of the HR, run as it will be run after fitting (e.g.
        :func:`pairsr.lbnlm.lbnlm_filter` with its options bound).
    categories : int
        Categories the filter searches per patch.
    candidates : sequence of float, optional
        σ values to choose from (in [0, 1] intensity units) instead of the automatic grid.
    folds : int
        Held-out bands per pair (>= 2).
    pixels : int
        Validation HR pixels scored per σ at most.
    seed : int
        Seeds the choice of validation cells and of the fold libraries' members.

    Returns
    -------
    SigmaChoice
        The default σ (``fallback``), with a ``UserWarning``, when there is too little held-out
        HR to validate.
    """
    if folds < 2 or pixels < 1:
        raise ValueError(f"need folds >= 2 and pixels >= 1, got folds={folds}, pixels={pixels}")
    if candidates is not None and (len(candidates) == 0 or min(candidates) <= 0):
        raise ValueError(f"candidates must be positive sigmas, got {list(candidates)}")
    rng = np.random.default_rng(seed)
    n = sample.n
    pairs = [(np.asarray(u, dtype=np.float32), np.asarray(h, dtype=np.float32)) for u, h in pairs]
    parts = _folds(sample, pairs, folds, pixels, rng, seed)
    scored = sum(int(np.isfinite(f.targets).sum()) for f in parts)
    if scored < 16 * n * n:
        members = sample.members(seed=seed)
        queries = rng.choice(len(sample.labels), size=min(QUERIES, len(sample.labels)),
                             replace=False)  # fmt: skip
        apart = (sample.where[queries], sample.where[members], n)
        library = sample.library(members)
        distances = _nearest(sample.up[queries], library, min(categories, library.k), apart)
        scale = _scale(distances, sample.up)
        sigma = DEFAULT_RATIO * scale
        warnings.warn(
            f"too little held-out HR to choose the LB-NLM sigma ({scored} validation pixels, "
            f"need {16 * n * n}): using the default sigma = {sigma:.4g}, {DEFAULT_RATIO} times "
            "the median distance between library patches; give one with -p sigma=VALUE",
            UserWarning, stacklevel=2,
        )
        return SigmaChoice(sigma, scale, scored, len(parts))
    queries = np.concatenate([f.queries for f in parts])
    distances = [_nearest(f.queries, f.library, min(categories, f.library.k)) for f in parts]
    scale = _scale(np.concatenate(distances), queries)

    def mse(sigma: float) -> float:
        return _mse(parts, sigma, categories, estimate)

    tried = ({float(s): mse(float(s)) for s in candidates} if candidates is not None
             else _search(mse, scale))  # fmt: skip
    return SigmaChoice(min(tried, key=tried.get), scale, scored, len(parts), tried)


def _scale(distances: np.ndarray, patches: np.ndarray) -> float:
    """Median of the finite ``distances``; without any, the RMS spread of ``patches`` (at least
    :data:`_MIN_SCALE`)."""
    finite = distances[np.isfinite(distances)]
    scale = float(np.median(finite)) if finite.size else float(np.std(patches))
    return max(scale, _MIN_SCALE)
