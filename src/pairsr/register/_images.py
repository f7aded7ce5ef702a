"""Image helpers shared by the registration stages: input checks, reduction, noise."""

from __future__ import annotations

import sys

import numpy as np
from scipy import ndimage as ndi
from skimage.util import img_as_float32


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


def _numpy(image, threads: int) -> np.ndarray:
    """``image`` as float32 numpy; a dask array computed on ``threads`` threads of this process
    (never on an ambient scheduler or client)."""
    if _is_dask(image):
        image = image.compute(scheduler="sync") if threads == 1 else image.compute(
            scheduler="threads", num_workers=threads)
    return np.asarray(image, dtype=np.float32)


def _gauss_depth(sigma: float) -> int:
    """Pixels a Gaussian of ``sigma`` reads on each side (scipy's default truncate=4)."""
    return int(4.0 * sigma + 0.5)


def _reduce(image, f: int, threads: int = 1) -> np.ndarray:
    """Gaussian anti-alias (σ = f/2) and decimate by ``f``: output pixel k ↔ input pixel f·k.
    A dask ``image`` is computed on ``threads`` threads."""
    if f == 1:
        return _numpy(image, threads)
    sigma = 0.5 * f
    if _is_dask(image):
        blurred = image.map_overlap(ndi.gaussian_filter, depth=_gauss_depth(sigma) + 1,
                                    boundary="reflect", sigma=sigma, mode="reflect")
        return _numpy(blurred[::f, ::f], threads)
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


def _grid_samples(image: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (2, N) and values (N,) of every ``stride``-th pixel of ``image``."""
    coords = np.mgrid[0 : image.shape[0] : stride, 0 : image.shape[1] : stride].astype(float)
    return coords.reshape(2, -1), image[::stride, ::stride].ravel().astype(float)


def _quadratic(w: np.ndarray) -> np.ndarray:
    """Design (..., 3) of the quadratic intensity map ``p(w) = c0 + c1 w + c2 w²``."""
    return np.stack([np.ones_like(w), w, w * w], axis=-1)


def _central(image, size: int = 2048, threads: int = 1) -> np.ndarray:
    """Central crop of at most ``size``² pixels, as a numpy array (computes a dask crop only,
    on ``threads`` threads)."""
    lo = [max(0, (n - size) // 2) for n in image.shape]
    return _numpy(image[lo[0] : lo[0] + size, lo[1] : lo[1] + size], threads)
