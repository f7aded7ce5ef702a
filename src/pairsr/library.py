"""The paired patch library of the LB-NLM method (paper Sec. III-C, Algorithm 1 steps 1-3).

Training data are aligned pairs ``(up, hr)`` of float32 images of one shape on the SR grid of
the LR field: ``up`` is the bicubic-upsampled LR image (:func:`pairsr.grid.bicubic`), ``hr`` the
registered HR image with NaN where no HR exists. A patch is an ``n × n`` window, vectorised in
row-major order to ``n*n`` values; a patch *pair* is the ``up`` and ``hr`` windows at the same
position. Patches touching a NaN (in either image) or a pixel outside ``mask`` are never used.

The library stratifies the patches as the paper does: it samples ``K·L`` HR patches, clusters
them into ``k`` categories by k-means on their vectorised intensities, and keeps ``L/k`` random
pairs per category. A pair that offers fewer patches gives all it has, in fewer categories when it
offers fewer than ``n²`` per category (:func:`sample_patches`). The clustered sample
(:class:`PatchSample`) also yields the libraries of the σ validation folds (:mod:`pairsr.sigma`),
which leave patches out. The filter (:mod:`pairsr.lbnlm`) compares each *upsampled* query patch with
the category means, so :attr:`Library.centroids` are the means of the **upsampled** patches of
each category's library members (the paper's text mixes "HR" and the upsampled symbol ``P_r``
for this mean; comparing like with like is what makes the nearest-category test meaningful).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.cluster import MiniBatchKMeans

from pairsr.patches import gather_patches, sample_corners, valid_corners

#: File name of a saved library inside its folder.
LIBRARY_FILE = "library.npz"
_ARRAYS = ("up", "hr", "labels", "centroids", "n", "params")


def _check_pair(up: np.ndarray, hr: np.ndarray, n: int, where: str = "") -> None:
    if up.ndim != 2 or up.shape != hr.shape:
        raise ValueError(f"{where}up and hr must be 2-D of one shape, not {up.shape}, {hr.shape}")
    if n < 1 or n > min(up.shape):
        raise ValueError(f"{where}patch size n={n} must be in [1, {min(up.shape)}]")


def _invalid(up: np.ndarray, hr: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    invalid = np.isnan(up) | np.isnan(hr)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != up.shape:
            raise ValueError(f"mask has shape {mask.shape}, the images {up.shape}")
        invalid |= ~mask
    return invalid


def extract_patches(
    up: np.ndarray, hr: np.ndarray, n: int = 9, stride: int = 1, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All fully valid ``n × n`` patch pairs of an aligned pair on a ``stride`` grid.

    Parameters
    ----------
    up, hr : (H, W) arrays
        Upsampled LR and registered HR image on one grid; NaN marks missing pixels.
    n : int
        Patch side (SR pixels).
    stride : int
        Step between patch corners (SR pixels).
    mask : (H, W) bool array, optional
        Pixels allowed in a patch (True); default all.

    Returns
    -------
    P_up, P_hr : (M, n*n) float32
        Matched patches (row ``i`` of both comes from the same window), row-major window order.
    """
    up, hr = np.asarray(up, dtype=np.float32), np.asarray(hr, dtype=np.float32)
    _check_pair(up, hr, n)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    rows, cols = valid_corners(_invalid(up, hr, mask), n, stride)
    return gather_patches(up, rows, cols, n), gather_patches(hr, rows, cols, n)


@dataclass
class Library:
    """A paired patch library.

    Attributes
    ----------
    up, hr : (L, n*n) float32
        Matched upsampled-LR and HR patches (intensities in [0, 1]).
    labels : (L,) int64
        Category of each pair, ``0 .. k-1``; every category has at least one member.
    centroids : (k, n*n) float32
        Mean upsampled patch of each category's members (what a query is compared with).
    n : int
        Patch side (SR pixels).
    params : dict
        JSON-serialisable record of how the library was built.
    """

    up: np.ndarray
    hr: np.ndarray
    labels: np.ndarray
    centroids: np.ndarray
    n: int
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.up = np.asarray(self.up, dtype=np.float32)
        self.hr = np.asarray(self.hr, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.centroids = np.asarray(self.centroids, dtype=np.float32)
        self.n = int(self.n)
        d = self.n * self.n
        size = len(self.labels)
        problems = [] if self.labels.ndim == 1 else [f"labels must be 1-D, got {self.labels.shape}"]
        if self.up.shape != (size, d) or self.hr.shape != (size, d):
            problems.append(
                f"up {self.up.shape} and hr {self.hr.shape} must both be ({size}, {d}) "
                f"for {size} labels and n={self.n}"
            )
        k = len(self.centroids)
        if self.centroids.shape != (k, d):
            problems.append(f"centroids {self.centroids.shape} must be (k, {d})")
        if size == 0 or k == 0:
            problems.append("the library is empty")
        elif self.labels.min() < 0 or self.labels.max() >= k:
            problems.append(f"labels must lie in 0..{k - 1}")
        elif np.any(np.bincount(self.labels, minlength=k) == 0):
            problems.append(f"every category 0..{k - 1} needs at least one member")
        if problems:
            raise ValueError("invalid Library: " + "; ".join(problems))

    @property
    def k(self) -> int:
        """Number of categories."""
        return len(self.centroids)

    def __len__(self) -> int:
        return len(self.labels)

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/library.npz`` (creating ``folder``); returns the file path."""
        path = Path(folder) / LIBRARY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            up=self.up,
            hr=self.hr,
            labels=self.labels,
            centroids=self.centroids,
            n=np.int64(self.n),
            params=np.array(json.dumps(self.params)),
        )
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Library:
        """Read a library written by :meth:`save`; ``ValueError`` naming the file if it is bad."""
        path = Path(folder) / LIBRARY_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no patch library at {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [name for name in _ARRAYS if name not in data.files]
                if missing:
                    raise ValueError(f"missing arrays {missing}")
                arrays = {name: data[name] for name in _ARRAYS}
            params = json.loads(str(arrays.pop("params")))
            return cls(**arrays, params=params)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, TypeError) as err:
            raise ValueError(f"corrupt or mismatched patch library {path}: {err}") from err


@dataclass
class PatchSample:
    """Clustered training patches: the pool a library draws its members from.

    Attributes
    ----------
    up, hr : (M, n*n) float32
        Matched upsampled-LR and HR patches.
    labels : (M,) int64
        k-means category of each patch (of the HR patches), ``0 .. k_used-1``.
    where : (M, 3) int64
        ``(pair, row, col)`` of each patch's top-left corner.
    n : int
        Patch side (SR pixels).
    per_category : int
        Members a library keeps per category at most (``L // k``).
    params : dict
        JSON-serialisable record of how the sample was drawn.
    """

    up: np.ndarray
    hr: np.ndarray
    labels: np.ndarray
    where: np.ndarray
    n: int
    per_category: int
    params: dict = field(default_factory=dict)

    def members(self, eligible: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        """Indices of a library's members: ``per_category`` random patches of each category
        (all if fewer) among the ``eligible`` ones (a boolean ``(M,)`` mask; default all), in
        category order."""
        pool = np.arange(len(self.labels)) if eligible is None else np.flatnonzero(eligible)
        pool = np.random.default_rng(seed).permutation(pool)
        pool = pool[np.argsort(self.labels[pool], kind="stable")]
        labels = self.labels[pool]
        first = np.searchsorted(labels, labels)  # where each category starts in ``pool``
        return pool[np.arange(len(pool)) - first < self.per_category]

    def library(self, members: np.ndarray | None = None) -> Library:
        """The library of ``members`` (default :meth:`members`), categories renumbered
        ``0 .. k'-1`` over those that have members."""
        members = self.members() if members is None else members
        if len(members) == 0:
            raise ValueError("no patch is eligible for the library")
        present, labels = np.unique(self.labels[members], return_inverse=True)
        up, hr = self.up[members], self.hr[members]
        order = np.argsort(labels, kind="stable")
        up, hr, labels = up[order], hr[order], labels[order]
        starts = np.searchsorted(labels, np.arange(len(present)))
        counts = np.diff(np.append(starts, len(labels)))[:, None]
        centroids = np.add.reduceat(up, starts, axis=0, dtype=np.float64) / counts
        params = {**self.params, "categories": len(present), "size": len(members)}
        return Library(up, hr, labels, centroids, self.n, params)


def sample_patches(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    *,
    n: int = 9,
    k: int = 50,
    K: int = 10,
    L: int = 20000,
    seed: int = 0,
) -> PatchSample:
    """Sample and cluster the training patches of aligned ``(up, hr)`` pairs (Algorithm 1,
    steps 1-2); :meth:`PatchSample.library` then keeps ``L // k`` per category (step 3).

    Samples ``K·L`` fully valid patch pairs (all if fewer) uniformly over every stride-1 window
    of every pair and clusters their HR patches by k-means into
    ``k_used = min(k, max(1, sampled // n²))`` categories: ``k``, unless the pair offers fewer
    than ``n²`` sampled patches per category on average (a category should hold at least as many
    patches as a patch has pixels), so a small HR builds fewer, fuller categories instead of
    failing. Deterministic for a given ``seed``.
    """
    if not pairs:
        raise ValueError("a library needs at least one (up, hr) pair")
    if min(k, K, L) < 1 or L < k:
        raise ValueError(f"need k, K, L >= 1 and L >= k, got k={k}, K={K}, L={L}")
    rng = np.random.default_rng(seed)
    images = []
    for i, (up, hr) in enumerate(pairs):
        up, hr = np.asarray(up, dtype=np.float32), np.asarray(hr, dtype=np.float32)
        _check_pair(up, hr, n, where=f"pair {i}: ")
        images.append((up, hr))
    invalid = [~(np.isfinite(up) & np.isfinite(hr)) for up, hr in images]
    where, total = sample_corners(invalid, n, K * L, rng)
    p_up = np.empty((len(where), n * n), dtype=np.float32)
    p_hr = np.empty_like(p_up)
    for i, (up, hr) in enumerate(images):
        rows = where[:, 0] == i
        p_up[rows] = gather_patches(up, where[rows, 1], where[rows, 2], n)
        p_hr[rows] = gather_patches(hr, where[rows, 1], where[rows, 2], n)

    k_used = min(k, max(1, len(p_hr) // (n * n)))
    kmeans = MiniBatchKMeans(
        n_clusters=k_used, random_state=seed, n_init=3, batch_size=4096, max_no_improvement=20
    )
    labels = kmeans.fit_predict(p_hr).astype(np.int64)  # on the process's OpenMP threads
    params = {"n": n, "k": k, "K": K, "L": L, "seed": seed, "k_used": k_used,
              "sampled": len(p_hr), "available": total}  # fmt: skip
    return PatchSample(p_up, p_hr, labels, where, n, L // k, params)


def build_library(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    *,
    n: int = 9,
    k: int = 50,
    K: int = 10,
    L: int = 20000,
    seed: int = 0,
) -> Library:
    """Build a paired library from aligned ``(up, hr)`` pairs (Algorithm 1, steps 1-3).

    :func:`sample_patches` (``K·L`` patches, all if fewer, in ``k`` k-means categories, fewer if
    the pair offers fewer than ``n²`` patches per category), then ``L // k`` random members of
    each category (all if fewer) with their matched upsampled patches: at most ``L`` pairs, and
    all there are when the pairs offer fewer. Deterministic for a given ``seed``.
    """
    return sample_patches(pairs, n=n, k=k, K=K, L=L, seed=seed).library()
