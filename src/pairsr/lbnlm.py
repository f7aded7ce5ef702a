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
The weights (ordinary or subnormal floats or 0) times ``[P_hr, 1]`` give the weighted sums and
the sums of weights. The torch path passes ``scale = s`` and ``attn_mask = −‖P − μ‖²·s/2`` to
``scaled_dot_product_attention``: the same logits up to the per-query constant ``s‖Q − μ‖²/2``,
which the softmax removes.

Memory: each worker thread holds about ``block`` float32 values (``4·block`` bytes,
32 MiB by default): the weights of a chunk of query patches against the largest set of
``categories`` categories, and a few copies of the chunk's patches. Up to ``2·workers + 1``
bands of summed estimates (a chunk's rows plus ``n − 1``) wait for the overlap-add, and the
image costs the input, a padded copy, the sums and the output (16 bytes per pixel). Measured
with tracemalloc at the defaults and 2 workers, n = 9, k = 50: a 100 MiB peak for a 1024 × 1024
image with L ≈ 20000 (116 MiB with L ≈ 5000); benchmarks/bench_lbnlm.py prints it. The work
arrays are kept per thread for the call (:class:`pairsr.patches.Scratch`), not reallocated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from functools import cache

import numpy as np
from threadpoolctl import threadpool_limits

from pairsr.grid import BICUBIC_HALO
from pairsr.library import Library
from pairsr.patches import Scratch, overlap_average, threads

#: Default bound on the float32 values one worker thread holds at once (32 MiB).
BLOCK = 2**23
#: A query whose weights sum to less (all its logits below about −20) is computed again with
#: its logits shifted by their largest, and those more than :data:`_MIN_LOGIT` below it raised.
_FAR = math.exp(-20.0)
#: For such queries: weights below e⁻⁴⁰ (≈ 4e-18) of the largest count as e⁻⁴⁰.
_MIN_LOGIT = 40.0

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


def _numpy_attention(keys: np.ndarray, values: np.ndarray, groups: dict, scale: float) -> Attend:
    """Softmax attention of queries over the key/value rows of a set of categories, in numpy."""
    d = keys.shape[1]

    @cache
    def prepare(combo: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.concatenate([groups[c] for c in combo])
        mean = keys[rows].mean(axis=0)
        k = keys[rows] - mean
        # Rows [k·s; -‖k‖²·s/2; -s/2] against [q; 1; ‖q‖²] (s = scale): one product gives the
        # logits -s·‖q - k‖²/2, at most (about) 0.
        k_aug = np.vstack(
            [k.T * scale, -0.5 * scale * np.einsum("ij,ij->i", k, k), np.full(len(k), -0.5 * scale)]
        )
        v_aug = np.hstack([values[rows], np.ones((len(rows), 1))])
        return mean, k_aug.astype(np.float32), v_aug.astype(np.float32)

    scratch = Scratch()

    def attend(q: np.ndarray, combo: tuple[int, ...], out: np.ndarray) -> None:
        mean, k_aug, v_aug = prepare(combo)
        q_aug = scratch("queries", (len(q), d + 2))
        centred = np.subtract(q, mean, out=q_aug[:, :d])
        q_aug[:, d] = 1
        np.einsum("ij,ij->i", centred, centred, out=q_aug[:, d + 1])
        # The logits, then (in place) their exponentials.
        weights = np.matmul(q_aug, k_aug, out=scratch("weights", (len(q), k_aug.shape[1])))
        np.exp(weights, out=weights)
        # Weighted sums and, in the last column, the sums of weights.
        sums = np.matmul(weights, v_aug, out=scratch("sums", (len(q), d + 1)))
        far = np.flatnonzero(sums[:, d] < _FAR)
        if len(far):  # no library patch near: shift the logits so that the best weighs 1
            logits = q_aug[far] @ k_aug
            logits -= logits.max(axis=1, keepdims=True)
            np.clip(logits, -_MIN_LOGIT, None, out=logits)
            sums[far] = np.exp(logits, out=logits) @ v_aug
        np.divide(sums[:, :d], sums[:, d:], out=out)

    return attend


def _torch_attention(
    keys: np.ndarray, values: np.ndarray, groups: dict, scale: float, device: str
) -> Attend:
    """The same attention with ``torch.nn.functional.scaled_dot_product_attention``."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but torch finds no CUDA device")

    @cache
    def prepare(combo: tuple[int, ...]) -> tuple:
        rows = np.concatenate([groups[c] for c in combo])
        mean = keys[rows].mean(axis=0)
        k = torch.from_numpy(keys[rows] - mean).to(dev)
        v = torch.from_numpy(values[rows]).to(dev)
        return mean, k[None], v[None], (-0.5 * scale) * (k * k).sum(dim=1)

    def attend(q: np.ndarray, combo: tuple[int, ...], out: np.ndarray) -> None:
        mean, k, v, bias = prepare(combo)
        with torch.no_grad():
            qt = torch.from_numpy(q - mean).to(dev)[None]
            out[:] = scaled_dot_product_attention(qt, k, v, attn_mask=bias, scale=scale)[0].cpu()

    return attend


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
    return [(tuple(combos[idx[0]].tolist()), idx) for idx in np.split(order, starts)]


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
    block: int,
    device: str | None,
    workers: int | None,
) -> np.ndarray:
    """Overlap-averaged attention of every patch of ``up`` over its nearest categories' pairs."""
    up = np.asarray(up, dtype=np.float32)
    k, d = len(centroids), n * n
    problems = {
        "sigma": (np.isfinite(sigma) and sigma > 0, f"> 0 in [0, 1] intensity units, got {sigma}"),
        "categories": (1 <= categories <= k, f"in [1, {k}] (the library's), got {categories}"),
        "block": (block >= 1, f">= 1, got {block}"),
        "workers": (workers is None or workers >= 1, f">= 1, got {workers}"),
    }
    for name, (ok, must) in problems.items():  # the image and stride: overlap_average checks
        if not ok:
            raise ValueError(f"{name} must be {must}")
    groups = {c: np.flatnonzero(labels == c) for c in range(k)}
    scale = 1.0 / (d * sigma**2)
    if device is None:
        attend = _numpy_attention(keys, values, groups, scale)
    else:
        attend = _torch_attention(keys, values, groups, scale, device)
    # Torch on the CPU runs its own threads; elsewhere our threads share the cores, with numpy's
    # BLAS single-threaded so they don't fight over them.
    torch_cpu = device is not None and str(device).split(":")[0] == "cpu"
    workers = workers or (1 if torch_cpu else threads())
    limits = nullcontext() if torch_cpu else threadpool_limits(limits=1, user_api="blas")

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
        ranked = np.take(q, order, axis=0, out=scratch("ranked", q.shape))
        done = scratch("done", q.shape)
        start = 0
        for combo, idx in groups:
            attend(ranked[start : start + len(idx)], combo, done[start : start + len(idx)])
            start += len(idx)
        est = scratch("estimates", q.shape)
        est[order] = done
        return est

    # Per query a step holds at most one row of weights (the largest category set) and about
    # four copies of its patch: ``block`` float32 values in all.
    largest = int(np.sort(np.bincount(labels, minlength=k))[::-1][:categories].sum())
    with limits:
        return overlap_average(up, n, stride, estimate, step=max(1, block // (largest + 4 * d)),
                               workers=workers)  # fmt: skip


def lbnlm_filter(
    up: np.ndarray,
    library: Library,
    *,
    sigma: float,
    categories: int = 1,
    stride: int = 1,
    residual: bool = False,
    block: int = BLOCK,
    device: str | None = None,
    workers: int | None = None,
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
    block : int
        float32 values one worker holds at most (weights and patch copies); bounds memory.
    device : str, optional
        ``None`` computes in numpy; a torch device (``"cpu"``, ``"cuda"``) computes the attention
        with ``torch.nn.functional.scaled_dot_product_attention`` there.
    workers : int, optional
        Threads that filter rows of patches at once (default :func:`pairsr.patches.threads`:
        1 in a Dask worker, else the CPUs this process may use; 1 for ``device="cpu"``, where
        torch runs its own threads). Except with ``device="cpu"``, numpy's BLAS is
        single-threaded, process-wide, while the filter runs. Pass 1 when the caller already runs
        tiles in parallel.

    Returns
    -------
    (H, W) float32
        The SR image, on the grid of ``up``.
    """
    values = library.hr - library.up if residual else library.hr
    out = _filter(
        up, library.up, values, library.labels, library.centroids, library.n, sigma=sigma,
        categories=categories, stride=stride, block=block, device=device, workers=workers,
    )  # fmt: skip
    return out + np.asarray(up, dtype=np.float32) if residual else out


def lbnlm_original(
    up: np.ndarray,
    library: Library,
    *,
    sigma: float,
    stride: int = 1,
    block: int = BLOCK,
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
    )  # fmt: skip
