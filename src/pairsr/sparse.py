"""The sparse-coding comparison methods of the paper (Sec. III-B, IV-A): ScSR and SRSW.

Both work on ``n × n`` patches of the bicubic-upsampled LR image ``up``
(:func:`pairsr.grid.bicubic`) on the SR grid and learn from the same kind of sample: ``L`` fully
valid patch pairs drawn uniformly at random from the training pairs (:func:`sample_patch_pairs`,
no clustering). At inference a patch is taken at every ``stride``-th SR pixel from ``(0, 0)``
(the image padded half-sample symmetrically), each is mapped to an HR patch estimate, and every
output pixel is the mean of the estimates of the patches covering it
(:func:`pairsr.patches.overlap_average`, on the method's ``threads``).
Neither method has the original back-projection step: the paper shows it hurts physical pairs.

* **ScSR** (Yang et al., TIP 2010): a coupled dictionary ``(D_l, D_h)`` learned by
  ``sklearn.decomposition.MiniBatchDictionaryLearning``. An LR patch is described by the first
  and second derivatives of ``up`` (:func:`yang_features`, ``4 n²`` values); its unit-normalised
  feature vector ``y`` is coded by the lasso ``½‖y − D_lᵀα‖² + λ‖α‖₁`` and the HR patch is
  ``D_hᵀα``, rescaled to ``contrast`` times the norm of the mean-removed upsampled patch, plus
  that patch's mean (Yang's norm matching; Yang's ``contrast`` is 1.2).
* **SRSW** (Trinh et al., TIP 2014): the library of original pairs itself. An upsampled patch
  ``q`` is represented over its ``neighbours`` nearest library LR patches ``P`` (Euclidean,
  brute force, :func:`nearest`) by the **non-negative** lasso
  ``min_{β ≥ 0} ½‖q − Pᵀβ‖² + λ‖β‖₁`` (Trinh's representation is non-negative and favours
  similar patches; here similarity enters through the nearest-neighbour active set), and the HR
  patch is the same combination of the matching HR patches.

Both lasso problems are solved exactly by :func:`nonneg_lasso`, a Lawson–Hanson active-set
solver batched over patches (ScSR's signed codes as non-negative ones over ``±D_l``). It
replaces ``sklearn.decomposition.sparse_encode``, which solves one patch per Python call
(measured 1.5–4 ms per 9×9 patch on 256 atoms, ~5× slower; it stays available to ScSR through
``algorithm``) and takes one dictionary per call (SRSW has one per patch).

Intensities are in the [0, 1] units of :mod:`pairsr.grid`; λ (``alpha``) is per patch, as in
``sparse_encode``.
"""

from __future__ import annotations

import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse

from pairsr.grid import BICUBIC_HALO, BOUNDARY, bicubic, sr_shape
from pairsr.methods import ModelError, SRMethod, TrainingPairs
from pairsr.patches import Channels, check_grid, cpus, overlap_average, sample_windows

#: Patches handed to one estimate call. It bounds the memory of a step: ScSR's solver holds a few
#: ``BATCH × 2·atoms`` float64 arrays (8 MiB each for 256 atoms), SRSW ``BATCH × neighbours × n²``
#: gathered library patches (42 MiB in float64 for the defaults).
BATCH = 4096
#: Yang's filters for LR features, ``(axis, weights)``: first and second derivatives along x, y.
FEATURE_FILTERS = (
    (1, (-1.0, 0.0, 1.0)),
    (0, (-1.0, 0.0, 1.0)),
    (1, (1.0, 0.0, -2.0, 0.0, 1.0)),
    (0, (1.0, 0.0, -2.0, 0.0, 1.0)),
)
#: SR pixels the features read beyond a pixel (the half-width of the widest filter).
FEATURE_REACH = 2
#: Yang's patch pruning: training HR patches with a variance under 10 grey levels² (of 255).
PRUNE_VARIANCE = 10 / 255**2
#: Yang's threshold below which a feature vector is not normalised (1 grey level of 255).
MIN_FEATURE_NORM = 1 / 255

def default_stride(zoom: int) -> int:
    """Step between inference patches when none is given: the smallest divisor of ``zoom`` above
    1 (2 at ×2 and ×4, 3 at ×3), so the patch grid suits the tiles at every zoom."""
    return next(d for d in range(2, zoom + 1) if zoom % d == 0) if zoom > 1 else 1


def _identity(up: np.ndarray) -> np.ndarray:
    return up[None]


def yang_features(up: np.ndarray) -> np.ndarray:
    """Yang's LR features of an upsampled image: ``(4, H, W)`` float32 first and second
    derivatives along x and y (filters :data:`FEATURE_FILTERS`, boundary as in
    :mod:`pairsr.grid`)."""
    up = np.asarray(up, dtype=np.float32)
    return np.stack([ndi.correlate1d(up, w, axis=a, mode=BOUNDARY) for a, w in FEATURE_FILTERS])


def scsr_channels(up: np.ndarray) -> np.ndarray:
    """``up`` and its :func:`yang_features`: ``(5, H, W)`` float32, what ScSR reads per patch."""
    return np.concatenate([np.asarray(up, dtype=np.float32)[None], yang_features(up)])


def sample_patch_pairs(
    pairs: TrainingPairs,
    *,
    zoom: int = 2,
    n: int = 9,
    size: int = 20000,
    seed: int = 0,
    channels: Channels = _identity,
) -> tuple[np.ndarray, np.ndarray]:
    """``size`` random fully valid ``n × n`` patch pairs (all if fewer) from training pairs.

    Each pair ``(lr, hr)`` is ``lr`` float (H, W) and ``hr`` float (zoom*H, zoom*W) on the SR grid
    of ``lr``, NaN where no HR exists. ``channels`` maps ``up = bicubic(lr)`` to the ``(C, zH, zW)``
    maps the LR side is read from (default: ``up`` alone). Windows are drawn uniformly over every
    stride-1 window free of non-finite values, deterministic for ``seed``.

    Returns
    -------
    lr_side : (M, C, n*n) float32
        LR-side patches, channel by channel, row-major.
    hr : (M, n*n) float32
        The HR patches at the same windows.
    """
    if not pairs:
        raise ValueError("sample_patch_pairs needs at least one (lr, hr) training pair")
    if n < 1 or size < 1:
        raise ValueError(f"need n >= 1 and size >= 1, got n={n}, size={size}")
    stacks = []
    for i, (lr, hr) in enumerate(pairs):
        lr, hr = np.asarray(lr, dtype=np.float32), np.asarray(hr, dtype=np.float32)
        if lr.ndim != 2 or hr.shape != sr_shape(lr.shape, zoom):
            raise ValueError(f"pair {i}: hr must have shape {zoom}× lr's; got lr {lr.shape}, "
                             f"hr {hr.shape}")  # fmt: skip
        if n > min(hr.shape):
            raise ValueError(f"pair {i}: patch size n={n} exceeds the SR image {hr.shape}")
        stacks.append(np.concatenate([channels(bicubic(lr, zoom)), hr[None]]))
    patches, _ = sample_windows(stacks, n, size, np.random.default_rng(seed))
    return patches[:, :-1], patches[:, -1]


def scsr_reconstruct(
    up: np.ndarray,
    features: np.ndarray,
    dict_lr: np.ndarray,
    dict_hr: np.ndarray,
    *,
    alpha: float = 0.1,
    algorithm: str = "lasso",
    contrast: float = 1.2,
) -> np.ndarray:
    """ScSR HR patches from upsampled patches and their features (Yang's reconstruction).

    Parameters
    ----------
    up : (M, n*n)
        Upsampled LR patches.
    features : (M, F)
        Their :func:`yang_features` (``F = 4 n²``); normalised to unit norm when above
        :data:`MIN_FEATURE_NORM`, then coded over ``dict_lr``.
    dict_lr, dict_hr : (K, F), (K, n*n)
        Coupled dictionary (atoms as rows).
    alpha : float
        λ of the lasso ``½‖y − D_lᵀα‖² + λ‖α‖₁`` (per patch, on unit-norm ``y``; Yang: 0.1);
        passed on as ``sparse_encode``'s ``alpha`` (for ``"omp"``: a squared residual tolerance).
    algorithm : str
        ``"lasso"``: the exact lasso solution by :func:`nonneg_lasso`; any other name goes to
        ``sklearn.decomposition.sparse_encode`` (``"lasso_lars"`` solves the same problem).
    contrast : float
        The HR detail ``D_h α`` is rescaled to ``contrast × ‖up − mean(up)‖`` (Yang: 1.2).

    Returns
    -------
    (M, n*n) float32
        ``D_h α`` rescaled, plus the mean of each upsampled patch.
    """
    from sklearn.decomposition import sparse_encode

    up, features = np.asarray(up, dtype=np.float32), np.asarray(features, dtype=np.float32)
    mean = up.mean(axis=1, keepdims=True)
    detail = np.linalg.norm(up - mean, axis=1, keepdims=True)
    norm = np.linalg.norm(features, axis=1, keepdims=True)
    y = np.where(norm > MIN_FEATURE_NORM, features / np.maximum(norm, MIN_FEATURE_NORM), features)
    if algorithm == "lasso":  # signed codes: non-negative ones over the atoms and their negatives
        signed = np.vstack([dict_lr, -np.asarray(dict_lr)]).astype(np.float64)
        beta = nonneg_lasso(signed @ signed.T, y @ signed.T, alpha)
        codes = beta[:, : len(dict_lr)] - beta[:, len(dict_lr) :]
    else:
        codes = sparse_encode(y, np.asarray(dict_lr, dtype=np.float32), algorithm=algorithm,
                              alpha=alpha)  # fmt: skip
    hr = (codes @ dict_hr).astype(np.float32)
    hr_norm = np.linalg.norm(hr, axis=1, keepdims=True)
    scale = np.divide(contrast * detail, hr_norm, out=np.zeros_like(hr_norm), where=hr_norm > 0)
    return hr * scale + mean


def nonneg_lasso(gram: np.ndarray, cov: np.ndarray, alpha: float) -> np.ndarray:
    """Batched non-negative lasso ``argmin_{β ≥ 0} ½ βᵀGβ − cᵀβ + α Σβ``, solved exactly.

    With ``G = A Aᵀ`` and ``c = A q`` this is ``½‖q − Aᵀβ‖² + α‖β‖₁`` over the rows of ``A``:
    a non-negative least-squares problem in Gram form, solved by the Lawson–Hanson active-set
    method for all problems at once (each step one batched solve over the free atoms; each
    problem follows its own path). A ridge of 1e-12 of the mean diagonal keeps ``G`` definite.
    Each problem keeps only its free atoms and their coefficients (a few of ``m``), so a step
    costs ``O(problems × (m + free²))`` plus the batched solve.

    Parameters
    ----------
    gram : (m, m) or (M, m, m)
        One Gram matrix shared by all problems, or one per problem.
    cov : (M, m)
        The correlations ``c`` of each problem.
    alpha : float
        The L1 weight λ.

    Returns
    -------
    (M, m) float64
    """
    b = np.asarray(cov, dtype=np.float64) - alpha
    count, m = b.shape
    gram = np.asarray(gram, dtype=np.float64)
    shared = gram.ndim == 2
    scale = np.einsum("...jj->...", gram) / m
    gram = gram + 1e-12 * np.multiply.outer(scale, np.eye(m))
    tol = 1e-10 * np.max(scale)
    # The free atoms of each problem in slots 0 .. nfree-1 of ``atoms``, coefficients in ``coef``.
    atoms = np.zeros((count, m), dtype=np.intp)
    coef = np.zeros((count, m))
    nfree = np.zeros(count, dtype=np.intp)

    def state(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows' free atoms, coefficients and which of their slots are used."""
        w = max(int(nfree[rows].max(initial=0)), 1)
        return atoms[rows, :w], coef[rows, :w], np.arange(w) < nfree[rows, None]

    def solve(rows: np.ndarray, idx: np.ndarray, used: np.ndarray) -> np.ndarray:
        """Least squares of each row on its free atoms (0 in unused slots)."""
        pick = (idx[:, :, None], idx[:, None, :])
        sub = gram[pick] if shared else gram[(rows[:, None, None], *pick)]
        sub = np.where(used[:, :, None] & used[:, None, :], sub, np.eye(idx.shape[1]))
        rhs = np.where(used, np.take_along_axis(b[rows], idx, axis=1), 0.0)
        return np.where(used, np.linalg.solve(sub, rhs[..., None])[..., 0], 0.0)

    rows = np.arange(count)  # problems not yet known to be solved
    for _ in range(3 * m):
        idx, z, used = state(rows)
        if shared:  # β is sparse: a sparse-dense product costs (non-zeros × m)
            nz = sparse.csr_array((z[used], idx[used], np.r_[0, np.cumsum(nfree[rows])]),
                                  shape=(len(rows), m))  # fmt: skip
            gain = b[rows] - nz @ gram
        else:
            gain = b[rows] - np.einsum("kj,kjm->km", z, gram[rows[:, None], idx])
        at = np.nonzero(used)
        gain[at[0], idx[at]] = -np.inf  # only a fixed atom may be freed
        best = gain.argmax(axis=1)
        violated = gain[np.arange(len(rows)), best] > tol  # KKT violated: free the steepest atom
        rows, best = rows[violated], best[violated]
        if rows.size == 0:
            break
        atoms[rows, nfree[rows]] = best
        nfree[rows] += 1
        solving = rows
        for _ in range(m):  # step back towards the least-squares point while it leaves β ≥ 0
            idx, old, used = state(solving)
            z = solve(solving, idx, used)
            bad = used & (z <= 0)
            done = ~bad.any(axis=1)
            coef[solving[done], : z.shape[1]] = z[done]
            solving, idx, old, z, used, bad = (a[~done] for a in (solving, idx, old, z, used, bad))
            if solving.size == 0:
                break
            ratio = np.where(bad, old / np.where(bad, old - z, 1.0), np.inf)
            t = ratio.min(axis=1, keepdims=True)
            keep = used & ~(bad & (ratio <= t))  # atoms reaching 0 are fixed again
            order = np.argsort(~keep, axis=1, kind="stable")  # the kept ones first, in order
            w = idx.shape[1]
            atoms[solving, :w] = np.take_along_axis(idx, order, axis=1)
            coef[solving, :w] = np.take_along_axis(np.where(keep, old + t * (z - old), 0.0),
                                                   order, axis=1)  # fmt: skip
            nfree[solving] = keep.sum(axis=1)
    beta = np.zeros((count, m + 1))
    w = max(int(nfree.max(initial=0)), 1)
    np.put_along_axis(beta, np.where(np.arange(w) < nfree[:, None], atoms[:, :w], m),
                      coef[:, :w], axis=1)  # fmt: skip
    return beta[:, :m]


#: float32 distances :func:`nearest` holds at once (16 MiB).
NEAREST_BLOCK = 2**22


def nearest(queries: np.ndarray, keys: np.ndarray, m: int) -> np.ndarray:
    """Indices ``(M, m)`` of the ``m`` rows of ``keys`` ``(L, d)`` nearest to each row of
    ``queries`` ``(M, d)`` (Euclidean), nearest first, by blocks of queries; ``m <= L``.

    In numpy rather than ``sklearn.neighbors``, whose search sets the process's BLAS threads
    for the call (threadpoolctl) and so, called from several of our threads at once, can leave
    them changed.
    """
    norms = np.einsum("ij,ij->i", keys, keys)
    out = np.empty((len(queries), m), dtype=np.intp)
    step = max(1, NEAREST_BLOCK // max(1, len(keys)))
    for i in range(0, len(queries), step):
        d = norms - 2 * (queries[i : i + step] @ keys.T)  # ‖q − k‖² − ‖q‖²
        near = np.argpartition(d, m - 1, axis=1)[:, :m] if m < len(keys) else np.broadcast_to(
            np.arange(len(keys)), d.shape)
        order = np.argsort(np.take_along_axis(d, near, axis=1), axis=1, kind="stable")
        out[i : i + step] = np.take_along_axis(near, order, axis=1)
    return out


def srsw_reconstruct(
    up: np.ndarray,
    library_up: np.ndarray,
    library_hr: np.ndarray,
    *,
    neighbours: int = 16,
    alpha: float = 0.01,
) -> np.ndarray:
    """SRSW HR patches: each upsampled patch ``q`` as a non-negative sparse combination of its
    ``neighbours`` nearest library LR patches (:func:`nonneg_lasso` with λ = ``alpha``), applied
    to their HR partners.

    ``up`` is ``(M, d)``, ``library_up`` and ``library_hr`` ``(L, d)``; returns ``(M, d)``
    float32.
    """
    up = np.asarray(up, dtype=np.float32)
    m = min(neighbours, len(library_up))
    idx = nearest(up, np.asarray(library_up, dtype=np.float32), m)
    near = library_up[idx].astype(np.float64)  # (M, m, d)
    beta = nonneg_lasso(near @ near.transpose(0, 2, 1), np.einsum("kjd,kd->kj", near, up), alpha)
    return np.einsum("kj,kjd->kd", beta, library_hr[idx]).astype(np.float32)


@dataclass(eq=False)
class _PatchMethod(SRMethod):
    """Shared by ScSR and SRSW: arrays in one ``<name>.npz``, the patch grid and the halo."""

    #: Array fields stored in the data file, with their widths as multiples of ``n²``.
    _ARRAYS: ClassVar[dict[str, int]] = {}
    #: SR pixels the LR side reads beyond a patch.
    _REACH: ClassVar[int] = 0
    _channels: ClassVar[Channels] = staticmethod(_identity)

    def __post_init__(self) -> None:
        n = self.params.get("n")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"invalid {self.name} model: params['n'] must be a positive int, "
                             f"got {n!r} (fit one with {type(self).__name__}.fit)")  # fmt: skip
        arrays = {k: np.asarray(getattr(self, k), dtype=np.float32) for k in self._ARRAYS}
        problems = [
            f"{k} has shape {a.shape}, expected (rows, {w * n * n}) for n={n}"
            for (k, a), w in zip(arrays.items(), self._ARRAYS.values())
            if a.ndim != 2 or a.shape[1] != w * n * n
        ]
        rows = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
        if len(rows) != 1 or 0 in rows:
            problems.append(f"{' and '.join(arrays)} need one, non-zero number of rows")
        if problems:
            raise ValueError(f"invalid {self.name} model: " + "; ".join(problems))
        for k, a in arrays.items():
            setattr(self, k, a)

    @property
    def halo(self) -> int:
        """Patch reach on the SR grid (``n - 1`` plus the features' reach), in LR pixels, plus
        :data:`pairsr.grid.BICUBIC_HALO`."""
        return math.ceil((self.params["n"] - 1 + self._REACH) / self.zoom) + BICUBIC_HALO

    def _estimate(self, patches: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, lr: np.ndarray) -> np.ndarray:
        lr = np.asarray(lr, dtype=np.float32)
        if lr.ndim != 2 or not np.isfinite(lr).all():
            raise ValueError(f"{self.name}: lr must be a finite 2-D image, got shape {lr.shape}")
        return overlap_average(bicubic(lr, self.zoom), self.params["n"], self.params["stride"],
                               self._estimate, channels=self._channels, step=BATCH,
                               workers=self.threads or cpus())

    def save_data(self, folder: Path) -> list[str]:
        name = f"{self.name}.npz"
        np.savez(Path(folder) / name, **{k: getattr(self, k) for k in self._ARRAYS})
        return [name]

    @classmethod
    def load_data(cls, folder: Path, config: dict) -> SRMethod:
        path = Path(folder) / f"{cls.name}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in cls._ARRAYS}
            return cls(zoom=config["zoom"], params=config["params"], **arrays)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise ModelError(f"{path}: corrupt or mismatched {cls.name} data ({err})") from None


@dataclass(eq=False)
class ScSR(_PatchMethod):
    """Yang et al.'s sparse-coding SR (comparison method) with a coupled dictionary learned
    from the pair, without back-projection. ``dict_lr`` (K, 4n²) has unit-norm atoms and
    ``dict_hr`` (K, n²) is divided by the same factors, so that the codes stay coupled (the
    overall scale of ``dict_hr`` is immaterial under norm matching)."""

    name: ClassVar[str] = "scsr"
    _ARRAYS: ClassVar[dict[str, int]] = {"dict_lr": 4, "dict_hr": 1}
    _REACH: ClassVar[int] = FEATURE_REACH
    _channels: ClassVar[Channels] = staticmethod(scsr_channels)
    dict_lr: np.ndarray | None = None
    dict_hr: np.ndarray | None = None

    def _estimate(self, patches: np.ndarray) -> np.ndarray:
        p = self.params
        return scsr_reconstruct(
            patches[:, 0], patches[:, 1:].reshape(len(patches), -1), self.dict_lr, self.dict_hr,
            alpha=p["alpha"], algorithm=p["algorithm"], contrast=p["contrast"],
        )  # fmt: skip

    @classmethod
    def fit(cls, pairs: TrainingPairs, *, zoom: int = 2, n: int = 9, atoms: int = 256,
            L: int = 20000, alpha: float = 0.1, algorithm: str = "lasso",
            contrast: float = 1.2, stride: int | None = None, epochs: int = 1,
            seed: int = 0) -> ScSR:
        """Learn the coupled dictionary from ``L`` random patch pairs (Yang's training).

        The paper uses ``n=9``, ``atoms=1024``, ``L=80000``; the defaults are CPU-sized.
        HR patches are mean-removed and those with a variance under :data:`PRUNE_VARIANCE`
        dropped; the HR part and the features are each normalised to unit norm, weighted by
        ``1/sqrt(dim)`` (Yang's joint objective), and the concatenated vectors normalised again
        before ``MiniBatchDictionaryLearning`` (λ = ``alpha``, ``epochs`` passes, ``seed``;
        coordinate-descent coding, twice as fast as LARS here for the same objective).
        ``algorithm``/``alpha`` are also the inference coding (:func:`scsr_reconstruct`),
        ``stride`` the step between inference patches (1 or a divisor of ``zoom``; default
        :func:`default_stride`).
        """
        from sklearn.decomposition import MiniBatchDictionaryLearning
        from sklearn.exceptions import ConvergenceWarning

        stride = default_stride(zoom) if stride is None else stride
        check_grid(n, stride, zoom)
        lr_side, hr = sample_patch_pairs(pairs, zoom=zoom, n=n, size=L, seed=seed,
                                         channels=scsr_channels)  # fmt: skip
        x_h = hr - hr.mean(axis=1, keepdims=True)
        x_l = lr_side[:, 1:].reshape(len(hr), -1)
        h_norm, l_norm = np.linalg.norm(x_h, axis=1), np.linalg.norm(x_l, axis=1)
        keep = (x_h.var(axis=1) > PRUNE_VARIANCE) & (l_norm > 0)
        if keep.sum() < atoms:
            raise ValueError(f"only {keep.sum()} of {len(hr)} sampled patches have HR variance "
                             f"> {PRUNE_VARIANCE:.2g}; need at least atoms={atoms}")  # fmt: skip
        dims = x_h.shape[1], x_l.shape[1]
        joint = np.hstack([x_h[keep] / (h_norm[keep, None] * math.sqrt(dims[0])),
                           x_l[keep] / (l_norm[keep, None] * math.sqrt(dims[1]))])  # fmt: skip
        joint /= np.linalg.norm(joint, axis=1, keepdims=True)
        learner = MiniBatchDictionaryLearning(
            n_components=atoms, alpha=alpha, batch_size=256, max_iter=epochs, random_state=seed,
            fit_algorithm="cd",
        )
        with warnings.catch_warnings():  # a code left short of convergence in one mini-batch
            warnings.simplefilter("ignore", ConvergenceWarning)
            atoms_ = learner.fit(joint).components_
        dict_hr, dict_lr = atoms_[:, : dims[0]], atoms_[:, dims[0] :]
        scale = np.linalg.norm(dict_lr, axis=1, keepdims=True)
        used = scale[:, 0] > 1e-6
        params = {"n": n, "atoms": atoms, "L": L, "alpha": alpha, "algorithm": algorithm,
                  "contrast": contrast, "stride": stride, "epochs": epochs, "seed": seed,
                  "trained_on": int(keep.sum())}  # fmt: skip
        return cls(zoom=zoom, params=params, dict_lr=dict_lr[used] / scale[used],
                   dict_hr=dict_hr[used] / scale[used])


@dataclass(eq=False)
class SRSW(_PatchMethod):
    """Trinh et al.'s example-based SR (the paper's SRSW, a comparison method): a library of
    ``L`` randomly sampled original pairs ``library_up`` / ``library_hr`` (L, n²)."""

    name: ClassVar[str] = "srsw"
    _ARRAYS: ClassVar[dict[str, int]] = {"library_up": 1, "library_hr": 1}
    library_up: np.ndarray | None = None
    library_hr: np.ndarray | None = None

    def _estimate(self, patches: np.ndarray) -> np.ndarray:
        p = self.params
        return srsw_reconstruct(patches[:, 0], self.library_up, self.library_hr,
                                neighbours=p["neighbours"], alpha=p["alpha"])  # fmt: skip

    @classmethod
    def fit(cls, pairs: TrainingPairs, *, zoom: int = 2, n: int = 9, L: int = 20000,
            neighbours: int = 16, alpha: float = 0.01, stride: int | None = None,
            seed: int = 0) -> SRSW:
        """Sample the library: ``L`` random fully valid pairs (the paper: ``n=9``, ``L=80000``).

        ``neighbours`` is the active set per patch and ``alpha`` the λ of
        :func:`srsw_reconstruct`; ``stride`` the step between inference patches (1 or a divisor
        of ``zoom``; default :func:`default_stride`).
        """
        stride = default_stride(zoom) if stride is None else stride
        check_grid(n, stride, zoom)
        up, hr = sample_patch_pairs(pairs, zoom=zoom, n=n, size=L, seed=seed)
        params = {"n": n, "L": L, "neighbours": neighbours, "alpha": alpha, "stride": stride,
                  "seed": seed, "sampled": len(hr)}  # fmt: skip
        return cls(zoom=zoom, params=params, library_up=up[:, 0], library_hr=hr)
