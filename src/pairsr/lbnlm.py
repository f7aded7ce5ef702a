"""The paired LB-NLM filter (paper Sec. III-C, Algorithm 1 steps 4-9) and Sreehari's LB-NLM.

For every ``n × n`` patch ``Q`` of the upsampled image (one centred at each pixel for
``stride=1``; half-sample symmetric padding keeps the output's shape), the filter finds the
category whose mean upsampled patch is nearest, weighs that category's library pairs by

    w_l = exp(-‖Q − P_up,l‖² / (2 n² σ²)),   normalised to sum to 1,

estimates the HR patch ``Q_h = Σ_l w_l P_hr,l`` and averages the overlapping estimates per pixel.
σ is in the [0, 1] intensity units of ``up``.

The weighted average is a softmax attention and is computed as one, in float32, for all queries
of one category at a time. With ``s = 1/(n² σ²)`` and ``μ`` the category's mean key (a shift
that leaves every distance unchanged and keeps float32 products clear of cancellation), one
matrix product of rows ``[Q − μ, 1, ‖Q − μ‖²]`` with columns ``[(P − μ)·s; −‖P − μ‖²·s/2; −s/2]``
gives the logits ``−s‖Q − P‖²/2 ≤ 0`` (no overflow), exponentiated in place. A query whose
weights sum to less than e⁻²⁰ (no library patch near) is computed again with its logits shifted
by their largest (softmax is shift-invariant; the best match then weighs 1, so no underflow to
0/0) and those more than 40 below it raised to that (weights e⁻⁴⁰ change no float32 result).
Logits are raised to at least −60 first (no subnormal floats in the products, which they make
many times slower; weights e⁻⁴⁰ below a sum of at least e⁻²⁰ change no result). The weights times
``[P_hr, 1]`` give the weighted sums and the sums of weights. That is the exact path
(``exact=True``), the paper's algorithm.

The default reduces the arithmetic in two ways. (1) Reduced attention: a category set's keys
are centred and projected on their first ``r`` principal directions ``B``, with ``r`` the
fewest for which the term dropped from a logit, ``s·q_⊥·k_⊥`` (the product of a query's and a
key's residuals off ``B``), has a standard deviation of at most :data:`TOLERANCE` logit units
for residuals of the keys' covariance; the logits are ``−s(‖(Q − μ)B − (P − μ)B‖² + ρ)/2`` with
``ρ`` the key's residual energy (``‖Q_⊥‖²`` is the same for all keys and cancels). The HR
values are averaged in their own principal basis ``C`` and mapped back,
``ν + (Σ w c)/(Σ w) Cᵀ``; ``C`` has the fewest directions for which, with the set's own keys as
queries (each left out of its weights), the part of the weighted averages off ``C`` has an RMS
of at most :data:`VALUE_TOLERANCE` times the averages' error against the queries' own values
(broad weights average most of the values' spread away, so they need few). The logits cost
``r + 2`` instead of ``n² + 2`` products per key and the sums ``rank C + 1`` instead of
``n² + 1``. A noisy category keeps many components, a smooth one few. Both bases are computed
once per category set, σ and library, and kept while the library lives (the tiles of an image
share them). (2) Flat background: every patch on the lattice of every ``lattice``-th row and
column is estimated, the others only where their standard deviation (from window sums of the
image, :func:`pairsr.patches.ordered_window_sums`) reaches :data:`FLAT` ``·σ`` (flat at the scale
of the weights, where neighbouring estimates agree); pixels average the estimates that cover them
(:func:`pairsr.patches.overlap_average` with ``keep``). The lattice (:func:`flat_lattice`) is
as sparse as leaves every flat pixel at least 3 × 3 estimates. Both depend only on the library
and on the patch itself, so tiles that start on the lattice agree with the whole image: the
method's windows start on multiples of :func:`window_align` LR px (``SRMethod.align``).

The torch path (``device``) runs the whole filter there: the padded image goes to the device
once, and patches (``unfold``), category choice, attention (a softmax, which shifts the logits
itself) and the overlap-add (``fold``) run there, on ``block``-sized steps; only the category
sets present in a step (a few ints) and the SR image come back.

Memory: each worker thread holds up to ``2·block`` float32 values in numpy (``8·block`` bytes,
64 MiB by default): about four copies of a band's query patches (``block``) and the weights of
one attention call against a set of ``categories`` categories (``block``); bands of many patches
make few calls, which in turn hold the GIL little, so that threads run side by side. On a torch
device ``block`` (1 GiB by default) holds both for one step. Up to
``2·workers + 1`` bands of summed estimates (a chunk's rows plus ``n − 1``) wait for the
overlap-add, and the image costs the input, a padded copy, the sums and the output (16 bytes
per pixel, 21 on the reduced path, which counts the estimates covering each pixel and keeps
which windows it estimates). Measured
with tracemalloc: benchmarks/bench_lbnlm.py prints the peak. The work
arrays are kept per thread for the call (:class:`pairsr.patches.Scratch`), not reallocated.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from pairsr.grid import BICUBIC_HALO, bicubic
from pairsr.library import Library, sample_patches
from pairsr.methods import ModelError, SRMethod, TrainingPairs
from pairsr.patches import (
    Scratch,
    axis_grid,
    check_grid,
    cpus,
    on_lattice,
    ordered_window_sums,
    overlap_average,
    zoom_lattice,
)
from pairsr.sigma import select_sigma

#: Default bound on the float32 values of each of two work arrays of a worker thread (32 MiB).
BLOCK = 2**23
#: The same on a torch device (1 GiB): fewer, larger steps.
DEVICE_BLOCK = 2**28
#: A query whose weights sum to less (all its logits below about −20) is computed again with
#: its logits shifted by their largest, and those more than :data:`_MIN_LOGIT` below it raised.
_FAR = math.exp(-20.0)
#: Logits are raised to at least this (weights ≈ 9e-27): products with subnormal floats (below
#: 1.2e-38, as weights or as their products with small values) are many times slower, and
#: weights e⁻⁴⁰ below the e⁻²⁰ that a query's weights sum to at least (else it is computed
#: again) change no float32 result.
_LOWEST = -60.0
#: For such queries: weights below e⁻⁴⁰ (≈ 4e-18) of the largest count as e⁻⁴⁰.
_MIN_LOGIT = 40.0
#: Reduced attention: the standard deviation (in logit units, where 1 changes a weight by a
#: factor e) allowed for the term a category's principal basis drops from the logits.
TOLERANCE = 0.03
#: Reduced attention: the RMS error the values' basis may add to the estimates, as a fraction of
#: the filter's own (leave-one-out) error on the category set's pairs.
VALUE_TOLERANCE = 0.1
#: Reduced attention: keys of a category set that judge its values' basis (:func:`_value_basis`).
_LOO_QUERIES = 128
#: Reduced filter: off the lattice, a patch whose standard deviation is below ``FLAT·σ`` (flat
#: background at the scale of the weights) is not estimated.
FLAT = 3.0

#: ``attend(q, categories, out)``: HR estimates of the ``(b, n²)`` query patches ``q`` into
#: ``out`` ``(b, n²)``.
Attend = Callable[[np.ndarray, tuple[int, ...], np.ndarray], None]


def halo(n: int, zoom: int = 2) -> int:
    """LR pixels of context a tile needs for an exact LB-NLM output in its interior.

    An output pixel averages the estimates of the patches covering it, whose centres lie within
    ``n // 2`` SR pixels and which each read up to ``n // 2`` further: a reach of ``n - 1`` SR
    pixels, ``ceil((n - 1) / zoom)`` LR pixels, plus :data:`pairsr.grid.BICUBIC_HALO` for the
    upsampling. With ``stride > 1`` tiles must also start at multiples of ``stride`` SR pixels.
    """
    if n < 1 or zoom < 1:
        raise ValueError(f"halo needs n >= 1 and zoom >= 1, got n={n}, zoom={zoom}")
    return math.ceil((n - 1) / zoom) + BICUBIC_HALO


def flat_lattice(n: int, zoom: int) -> int:
    """The reduced LB-NLM's lattice (SR px, :func:`lbnlm_filter`): ``n // 3``, so that every
    flat pixel averages the estimates of at least 3 × 3 patches, or the largest divisor of
    ``zoom`` that is at most ``n`` if larger (:func:`pairsr.patches.zoom_lattice`)."""
    return max(n // 3, zoom_lattice(n, zoom))


def window_align(n: int, zoom: int) -> int:
    """LR pixels that the windows of a tiled LB-NLM start on multiples of
    (:attr:`pairsr.methods.SRMethod.align`), so that they start on its :func:`flat_lattice`."""
    return math.lcm(flat_lattice(n, zoom), zoom) // zoom


def _basis(x: np.ndarray, rank: Callable[[np.ndarray], int] | None) -> tuple:
    """Mean ``(D,)`` of the rows of ``x`` ``(N, D)`` and, unless ``rank`` is None, the ``(D, r)``
    principal directions of the centred rows, ``r = rank(variances)`` (variances descending)."""
    mean = x.mean(axis=0)
    if rank is None:
        return mean, None
    centred = x - mean
    variances, vectors = np.linalg.eigh(centred.T @ centred / len(x))
    variances, vectors = np.maximum(variances[::-1], 0), vectors[:, ::-1]
    return mean, np.ascontiguousarray(vectors[:, : rank(variances)])


def _reduce(keys: np.ndarray, values: np.ndarray, scale: float, exact: bool) -> tuple:
    """Projections of one category set's pairs for the attention (see the module docstring).

    Returns ``(shift, basis, k_aug, v_out, v_aug)``: the keys' basis ``B`` ``(d, r)`` and the
    projected key mean ``μB`` (exact: ``B`` None and ``μ``), the augmented key columns
    ``(r + 2, L)``, the values' basis and mean stacked as ``[Cᵀ; ν]`` ``(r + 1, d)`` (exact:
    None) and the augmented value rows ``(L, r + 1)``, all float32.
    """
    size, d = keys.shape

    def pays(r: int) -> bool:
        """A basis of rank r pays when its products, d·r per query and r per key, cost less."""
        return d * r + r * size < d * size

    mean, basis = _basis(keys, None if exact else (lambda v: _rank(v, scale)))
    if basis is not None and not pays(basis.shape[1]):
        basis = None
    centred = keys - mean
    projected = centred if basis is None else centred @ basis
    # Columns [k·s; -‖k - μ‖²·s/2; -s/2] against [q; 1; ‖q‖²] (k, q: centred, projected): the
    # logits -s(‖q - k‖² + ρ)/2, with ρ = ‖k - μ‖² - ‖(k - μ)B‖² the key's energy off the basis.
    k_aug = np.vstack([projected.T * scale, -0.5 * scale * np.einsum("ij,ij->i", centred, centred),
                       np.full(len(keys), -0.5 * scale)])  # fmt: skip
    # The values in their own basis (their mean apart), where it pays.
    v_mean, v_basis = (0.0, None) if exact else _value_basis(centred, values, scale)
    if v_basis is not None and not pays(v_basis.shape[1]):
        v_mean, v_basis = 0.0, None
    v_rows = values if v_basis is None else (values - v_mean) @ v_basis
    v_aug = np.hstack([v_rows, np.ones((len(values), 1))])
    v_out = None if v_basis is None else np.vstack([v_basis.T, v_mean])
    shift = mean if basis is None else mean @ basis
    return tuple(None if a is None else np.array(a, dtype=np.float32, order="C")
                 for a in (shift, basis, k_aug, v_out, v_aug))  # fmt: skip


#: Prepared category sets of the libraries in use, by the identity of their arrays: copies
#: derived from them only, so that the arrays can go (and take their entries with them).
_PREPARED: dict[tuple, dict[tuple[int, ...], tuple]] = {}


def _prepared(
    keys: np.ndarray, values: np.ndarray, labels: np.ndarray, scale: float, exact: bool
) -> Callable[[tuple[int, ...]], tuple]:
    """``prepare(categories)``: :func:`_reduce` of those categories' pairs, computed once.

    Kept across calls (tiles of one image) while ``keys``, ``values`` and ``labels`` live; they
    must not change in place meanwhile.
    """
    key = (id(keys), id(values), id(labels), scale, exact)
    done = _PREPARED.get(key)
    if done is None:
        done = _PREPARED[key] = {}
        for array in (keys, values, labels):
            weakref.finalize(array, _PREPARED.pop, key, None)
    groups = {c: np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)}

    def prepare(combo: tuple[int, ...]) -> tuple:
        if combo not in done:
            rows = np.concatenate([groups[c] for c in combo])
            done[combo] = _reduce(keys[rows], values[rows], scale, exact)
        return done[combo]

    return prepare


def _value_basis(keys: np.ndarray, values: np.ndarray, scale: float) -> tuple:
    """Mean ``(D,)`` of a category set's ``values`` ``(N, D)`` and the ``(D, r)`` principal
    directions the filter's estimates need, judged on the set itself (``keys`` ``(N, d)``).

    Each of :data:`_LOO_QUERIES` (evenly spaced) keys is a query with itself left out:
    ``r`` is the fewest directions for which the part of these weighted averages off the basis
    has an RMS of at most :data:`VALUE_TOLERANCE` times the RMS error of the averages against
    the queries' own values (the filter's own error on its library). A weighted average of many
    values keeps less of their spread than one value does, so broad weights need fewer.
    """
    size = len(keys)
    if size < 2:
        return 0.0, None
    rows = np.arange(0, size, -(-size // _LOO_QUERIES))
    queries = keys[rows]
    norms = np.einsum("ij,ij->i", keys, keys)
    logits = (queries @ keys.T) * scale
    logits -= 0.5 * scale * (norms[rows, None] + norms)
    logits[np.arange(len(rows)), rows] = -np.inf  # leave the query out
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits, out=logits)
    weights /= weights.sum(axis=1, keepdims=True)
    mean = values.mean(axis=0)
    centred = values - mean
    vectors = np.linalg.eigh(centred.T @ centred)[1]
    vectors = vectors[:, ::-1]
    averages = weights @ centred
    error = np.sqrt(np.mean((averages - centred[rows]) ** 2))
    tail = np.cumsum(np.mean((averages @ vectors) ** 2, axis=0)[::-1])[::-1]
    dropped = np.sqrt(np.append(tail, 0.0) / values.shape[1])  # dropped[r]: beyond r directions
    rank = int(np.argmax(dropped <= VALUE_TOLERANCE * error))
    return mean, np.ascontiguousarray(vectors[:, :rank])


def _rank(variances: np.ndarray, scale: float) -> int:
    """The fewest principal components for which the term dropped from a logit, the product
    ``s·q_⊥·k_⊥`` of a query's and a key's residuals off them, has a standard deviation of at
    most :data:`TOLERANCE` (for independent residuals of the keys' covariance:
    ``s·(Σ_tail λ²)^½``)."""
    tail = np.sqrt(np.cumsum((variances**2)[::-1])[::-1])  # tail[r]: of components r, r+1, ...
    return int(np.argmax(np.append(scale * tail, 0.0) <= TOLERANCE))


def _carve(buffer: np.ndarray, shapes: tuple[tuple[int, ...], ...]) -> list[np.ndarray]:
    """Consecutive contiguous arrays of ``shapes`` in a flat ``buffer`` (large enough)."""
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(buffer[start : start + size].reshape(shape))
        start += size
    return out


def _numpy_attention(prepare: Callable[[tuple[int, ...]], tuple]) -> Attend:
    """Softmax attention of queries over the key/value rows of a set of categories, in numpy."""
    scratch = Scratch()

    def attend(q: np.ndarray, combo: tuple[int, ...], out: np.ndarray) -> None:
        shift, basis, k_aug, v_out, v_aug = prepare(combo)
        b, r, dv = len(q), len(k_aug) - 2, v_aug.shape[1] - 1
        # One work buffer, carved into contiguous arrays (for BLAS): fewer calls per category.
        shapes = ((b, r), (b, r + 2), (b, k_aug.shape[1]), (b, dv + 1))
        work = scratch("attend", (sum(math.prod(shape) for shape in shapes),))
        x, q_aug, weights, sums = _carve(work, shapes)
        x = q if basis is None else np.matmul(q, basis, out=x)
        np.subtract(x, shift, out=q_aug[:, :r])
        q_aug[:, r] = 1
        np.vecdot(q_aug[:, :r], q_aug[:, :r], out=q_aug[:, r + 1])  # ufuncs: little overhead
        # The logits, then (in place) their exponentials (none subnormal).
        np.matmul(q_aug, k_aug, out=weights)
        np.maximum(weights, _LOWEST, out=weights)
        np.exp(weights, out=weights)
        # Weighted sums and, in the last column, the sums of weights.
        np.matmul(weights, v_aug, out=sums)
        if np.minimum.reduce(sums[:, dv]) < _FAR:  # no library patch near: shift the logits
            far = np.flatnonzero(sums[:, dv] < _FAR)
            logits = q_aug[far] @ k_aug
            logits -= logits.max(axis=1, keepdims=True)
            np.clip(logits, -_MIN_LOGIT, None, out=logits)
            sums[far] = np.exp(logits, out=logits) @ v_aug
        # [Σ w c, Σ w] [Cᵀ; ν] = Σ w (c Cᵀ + ν) (exact: the sums themselves), over Σ w.
        if v_out is not None:
            np.matmul(sums, v_out, out=out)
            np.divide(out, sums[:, dv:], out=out)
        else:
            np.divide(sums[:, :dv], sums[:, dv:], out=out)

    return attend


def _torch_filter(
    up: np.ndarray,
    prepare: Callable[[tuple[int, ...]], tuple],
    centroids: np.ndarray,
    n: int,
    *,
    categories: int,
    stride: int,
    step: int,
    device: str,
    flat: float | None,
    lattice: int,
) -> np.ndarray:
    """The filter on a torch device: the image goes there once and the SR image comes back.

    Queries, category choice, attention and overlap-add (``fold``) run there on ``step``
    queries at a time; per step only the category sets present (a few ints) come to the host.
    The softmax shifts the logits itself, so far queries need no second pass; with ``flat``
    the patches the numpy path leaves out are computed too, but weigh 0.
    """
    import torch
    from torch.nn.functional import fold

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but torch finds no CUDA device")
    (rows, pad_r), (cols, pad_c) = (axis_grid(length, n, stride) for length in up.shape)
    before, width = (n - 1) // 2, (cols - 1) * stride + n
    padded = np.pad(up, ((before, pad_r), (before, pad_c)), mode="symmetric")
    on_device: dict[tuple[int, ...], tuple] = {}
    with torch.no_grad():
        image = torch.from_numpy(padded).to(dev)
        c = torch.from_numpy(centroids).to(dev)
        c_bias = -0.5 * (c * c).sum(dim=1)
        sums, counts = torch.zeros_like(image), torch.zeros_like(image)
        chunk = max(1, step // cols)
        for r0 in range(0, rows, chunk):
            r1 = min(rows, r0 + chunk)
            top, height = r0 * stride, (r1 - r0 - 1) * stride + n
            windows = image[top : top + height].unfold(0, n, stride).unfold(1, n, stride)
            q = windows[:, :cols].reshape(-1, n * n)
            scores = q @ c.T + c_bias
            if categories == 1:
                combos = scores.argmax(dim=1, keepdim=True)
            else:
                combos = scores.topk(categories, dim=1).indices.sort(dim=1).values
            present, inverse = torch.unique(combos, dim=0, return_inverse=True)
            order = torch.argsort(inverse, stable=True)
            sizes = torch.bincount(inverse, minlength=len(present)).tolist()
            ranked, done, start = q[order], torch.empty_like(q), 0
            for combo, size in zip(map(tuple, present.tolist()), sizes, strict=True):
                if combo not in on_device:
                    on_device[combo] = tuple(None if a is None else torch.from_numpy(a).to(dev)
                                             for a in prepare(combo))  # fmt: skip
                shift, basis, k_aug, v_out, v_aug = on_device[combo]
                part = ranked[start : start + size]
                x = part - shift if basis is None else part @ basis - shift
                weights = torch.softmax(x @ k_aug[:-2] + k_aug[-2], dim=1)
                est = weights @ v_aug[:, :-1]  # the weights sum to 1: [Σ w c, 1] [Cᵀ; ν]
                done[start : start + size] = est if v_out is None else est @ v_out[:-1] + v_out[-1]
                start += size
            est = torch.empty_like(done)
            est[order] = done
            weight = torch.ones(len(q), device=dev)
            if flat is not None:
                grid = on_lattice(torch.arange(r0, r1, device=dev), rows, lattice)[:, None]
                grid = grid & on_lattice(torch.arange(cols, device=dev), cols, lattice)
                variance = (q * q).mean(dim=1) - q.mean(dim=1) ** 2
                weight = (grid.reshape(-1) | (variance >= flat**2)).float()
                est *= weight[:, None]
            for total, x in ((sums, est.T), (counts, weight.expand(n * n, -1))):
                total[top : top + height, :width] += fold(
                    x[None], (height, width), n, stride=stride)[0, 0]  # fmt: skip
        h, w = up.shape
        out = (sums / counts)[before : before + h, before : before + w]
        return out.cpu().numpy()


def _group(scores: np.ndarray, m: int) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Group queries by their ``m`` best-scoring categories: ``[(categories, query indices)]``."""
    k = scores.shape[1]
    if m == k:
        return [(tuple(range(k)), np.arange(len(scores)))]
    if m == 1:  # a stable sort of small unsigned ints is a radix sort
        combos = np.argmax(scores, axis=1).astype(np.min_scalar_type(k))[:, None]
        order = np.argsort(combos[:, 0], kind="stable")
    else:
        combos = np.sort(np.argpartition(-scores, m - 1, axis=1)[:, :m], axis=1)
        order = np.lexsort(combos.T[::-1])
    ranked = combos[order]
    starts = np.flatnonzero(np.any(ranked[1:] != ranked[:-1], axis=1)) + 1
    firsts = ranked[np.concatenate([[0], starts])].tolist()
    return list(zip(map(tuple, firsts), np.split(order, starts), strict=True))


def _filter(
    up: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray,
    n: int,
    *,
    sigma: float,
    categories: int,
    stride: int,
    block: int | None,
    device: str | None,
    workers: int | None,
    exact: bool,
    lattice: int = 2,
) -> np.ndarray:
    """Overlap-averaged attention of every patch of ``up`` over its nearest categories' pairs."""
    up = np.asarray(up, dtype=np.float32)
    k, d = len(centroids), n * n
    problems = {
        "sigma": (np.isfinite(sigma) and sigma > 0, f"> 0 in [0, 1] intensity units, got {sigma}"),
        "categories": (1 <= categories <= k, f"in [1, {k}] (the library's), got {categories}"),
        "block": (block is None or block >= 1, f">= 1, got {block}"),
        "workers": (workers is None or workers >= 1, f">= 1, got {workers}"),
    }
    for name, (ok, must) in problems.items():  # the image and stride: overlap_average checks
        if not ok:
            raise ValueError(f"{name} must be {must}")
    if not np.isfinite(up).all() or up.ndim != 2:
        raise ValueError(f"image must be a finite 2-D array, got shape {up.shape}")
    scale = 1.0 / (d * sigma**2)
    prepare = _prepared(keys, values, labels, scale, exact)
    # Per query, one row of weights (the largest category set) and about four copies of its
    # patch: on the device ``block`` float32 values per step in all; in numpy ``block`` for the
    # copies of a band's patches and ``block`` for the weights of one attention call.
    largest = int(np.sort(np.bincount(labels, minlength=k))[::-1][:categories].sum())
    block = block or (BLOCK if device is None else DEVICE_BLOCK)
    flat = None if exact or stride > 1 else FLAT * sigma
    if device is not None:
        return _torch_filter(up, prepare, centroids, n, categories=categories, stride=stride,
                             step=max(1, block // (largest + 4 * d)), device=device, flat=flat,
                             lattice=lattice)  # fmt: skip
    step, piece = max(1, block // (4 * d)), max(1, block // largest)
    attend = _numpy_attention(prepare)

    # Centroid scores q·c - ‖c‖²/2 rank the categories by distance to q, nearest first.
    c_t = np.ascontiguousarray(centroids.T)
    c_bias = -0.5 * np.einsum("ij,ij->i", centroids, centroids)

    scratch = Scratch()

    def estimate(q: np.ndarray) -> np.ndarray:
        """HR estimates of the queries, computed category set by category set on the queries
        sorted by it (contiguous slices: no temporaries)."""
        q = q[:, 0]
        scores = np.matmul(q, c_t, out=scratch("scores", (len(q), k)))
        scores += c_bias
        groups = _group(scores, categories)
        order = np.concatenate([idx for _, idx in groups])
        # mode="clip" (indices are valid): with "raise" numpy buffers ``out``.
        ranked = np.take(q, order, axis=0, out=scratch("ranked", q.shape), mode="clip")
        done = scratch("done", q.shape)
        start = 0
        for combo, idx in groups:
            for a in range(start, start + len(idx), piece):
                b = min(a + piece, start + len(idx))
                attend(ranked[a:b], combo, done[a:b])
            start += len(idx)
        # Back to the queries' order: a take by the inverse permutation (a fancy assignment,
        # est[order] = done, is several times slower).
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return np.take(done, inverse, axis=0, out=scratch("estimates", q.shape), mode="clip")

    def structured(band: np.ndarray) -> np.ndarray:
        """Patches whose variance reaches ``flat²``: not flat background."""
        mean = ordered_window_sums(band[0], n) / d
        return ordered_window_sums(band[0] * band[0], n) / d - mean * mean >= flat**2

    return overlap_average(up, n, stride, estimate, step=step, workers=workers or cpus(),
                           keep=None if flat is None else structured, lattice=lattice)


def lbnlm_filter(
    up: np.ndarray,
    library: Library,
    *,
    sigma: float,
    categories: int = 1,
    stride: int = 1,
    residual: bool = False,
    block: int | None = None,
    device: str | None = None,
    workers: int | None = None,
    exact: bool = False,
    lattice: int | None = None,
) -> np.ndarray:
    """Super-resolve an upsampled image with the paired LB-NLM filter (Algorithm 1, steps 5-9).

    Parameters
    ----------
    up : (H, W) float array
        Bicubic-upsampled LR image (:func:`pairsr.grid.bicubic`), intensities in [0, 1].
    library : Library
        Paired library (:func:`pairsr.library.build_library`) with patch side ``n``.
    sigma : float
        Scale σ of the weights, in [0, 1] intensity units: the RMS pixel difference between two
        patches at which a library pair's weight drops to ``e^-1/2`` of an exact match's.
    categories : int
        Number ``m`` of nearest categories whose pairs are averaged (1 in the paper; ``k`` uses
        the whole library).
    stride : int
        Step between patch centres, 1 to ``n`` (1: a patch at every pixel, as in the paper).
    residual : bool
        Average ``P_hr − P_up`` and add it back to ``up`` instead of averaging ``P_hr``.
    block : int, optional
        float32 values of each of a worker's two work arrays (patch copies, weights); bounds memory
        (default :data:`BLOCK`, :data:`DEVICE_BLOCK` on a torch device).
    device : str, optional
        ``None`` computes in numpy; a torch device (``"cpu"``, ``"cuda"``) runs the whole filter
        there (same results to float32 rounding).
    workers : int, optional
        Threads that filter rows of patches at once in numpy (default: the CPUs this process
        may use, :func:`pairsr.patches.cpus`; torch runs its own threads). Pass 1 when the
        caller already runs tiles in parallel (a Dask worker's task: :mod:`pairsr.cluster`).
        The process's BLAS threads are left as they are (one per task on a pairsr cluster).
    exact : bool
        The paper's algorithm: full-rank attention and every patch estimated (the reference).
        The default approximates it with less arithmetic (module docstring).
    lattice : int
        Reduced path with ``stride`` 1: patches on every ``lattice``-th row and column are
        always estimated, the others off flat background only. Tiles must start on multiples
        of it (1 to ``n``; default :func:`flat_lattice` at ×2, ``LBNLM`` passes its zoom's).

    Returns
    -------
    (H, W) float32
        The SR image, on the grid of ``up``.
    """
    values = library.hr - library.up if residual else library.hr
    out = _filter(
        up, library.up, values, library.labels, library.centroids, library.n, sigma=sigma,
        categories=categories, stride=stride, block=block, device=device, workers=workers,
        exact=exact, lattice=flat_lattice(library.n, 2) if lattice is None else lattice,
    )  # fmt: skip
    return out + np.asarray(up, dtype=np.float32) if residual else out


def lbnlm_original(
    up: np.ndarray,
    library: Library,
    *,
    sigma: float,
    stride: int = 1,
    block: int | None = None,
    device: str | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Sreehari et al.'s LB-NLM (the paper's ref. [15]) as a comparison method.

    A library of HR patches only (``library.hr``): each upsampled query patch is compared with
    the HR patches themselves, and its estimate is their weighted average over the whole library,
    ``len(library) / L_c`` times the work of :func:`lbnlm_filter`. Parameters as there.
    """
    hr = library.hr
    return _filter(
        up, hr, hr, np.zeros(len(hr), dtype=np.int64), hr.mean(axis=0, keepdims=True), library.n,
        sigma=sigma, categories=1, stride=stride, block=block, device=device, workers=workers,
        exact=True,
    )  # fmt: skip


@dataclass
class LBNLM(SRMethod):
    """The paired LB-NLM (paper Algorithm 1): a k-means stratified library of (upsampled LR, HR)
    patch pairs and a library-based non-local-means filter of the bicubic-upsampled LR."""

    name: ClassVar[str] = "lbnlm"
    library: object = None  # pairsr.library.Library

    @property
    def halo(self) -> int:
        return halo(self.library.n, self.zoom)

    @property
    def align(self) -> int:
        return window_align(self.library.n, self.zoom)

    def _filter(self, up: np.ndarray) -> np.ndarray:
        p = self.params
        return lbnlm_filter(up, self.library, sigma=p["sigma"], categories=p["categories"],
                            stride=p["stride"], residual=p["residual"], device=p.get("device"),
                            workers=self.threads, exact=p.get("exact", False),
                            lattice=flat_lattice(self.library.n, self.zoom))

    def predict(self, lr: np.ndarray) -> np.ndarray:
        return self._filter(bicubic(lr, self.zoom))

    def save_data(self, folder: Path) -> list[str]:
        self.library.save(folder)
        return ["library.npz"]

    @classmethod
    def load_data(cls, folder: Path, config: dict) -> SRMethod:
        try:
            library = Library.load(folder)
        except (ValueError, OSError) as err:
            raise ModelError(str(err)) from None
        return cls(zoom=config["zoom"], params=config["params"], library=library)

    @classmethod
    def fit(cls, pairs: TrainingPairs, *, zoom: int = 2, n: int = 9, k: int = 50, K: int = 10,
            L: int = 20000, sigma: float | str = "auto", categories: int = 1, stride: int = 1,
            residual: bool = False, seed: int = 0, device: str | None = None,
            exact: bool = False) -> SRMethod:
        """Build the library from ``pairs`` (:func:`pairsr.library.sample_patches`: ``k``
        categories, fewer for an HR of under ``k·n²`` patches, and ``categories`` at most that;
        ``L // k`` members each); with
        ``sigma="auto"``, choose σ by k-fold validation on held-out bands of the HR footprint
        (:func:`pairsr.sigma.select_sigma`; a documented default and a warning when the HR is
        too small to validate), recorded in ``params["sigma_search"]``. ``exact`` runs the
        paper's full attention instead of the reduced-rank default
        (:func:`pairsr.lbnlm.lbnlm_filter`)."""
        check_grid(n, stride, zoom)
        train = [(bicubic(lr, zoom), hr) for lr, hr in pairs]
        sample = sample_patches(train, n=n, k=k, K=K, L=L, seed=seed)
        library = sample.library()
        categories = min(categories, library.k)
        params = {"n": n, "k": k, "K": K, "L": L, "categories": categories, "stride": stride,
                  "residual": residual, "seed": seed, "device": device, "exact": exact}
        if sigma == "auto":
            estimate = functools.partial(lbnlm_filter, residual=residual, device=device,
                                         lattice=flat_lattice(n, zoom))
            choice = select_sigma(sample, train, estimate, categories=categories, seed=seed)
            sigma = choice.sigma
            params["sigma_search"] = choice.record()
        params["sigma"] = float(sigma)
        return cls(zoom=zoom, params=params, library=library)


@dataclass
class LBNLMOriginal(LBNLM):
    """Sreehari et al.'s LB-NLM (comparison method): HR library patches only, weights from the
    upsampled query against the HR patches, over the whole library."""

    name: ClassVar[str] = "lbnlm-original"

    def _filter(self, up: np.ndarray) -> np.ndarray:
        p = self.params
        return lbnlm_original(up, self.library, sigma=p["sigma"], stride=p["stride"],
                              device=p.get("device"), workers=self.threads)
