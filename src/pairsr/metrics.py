"""Quality metrics of a super-resolved image against its HR reference (paper Sec. III-D, IV-C).

Conventions shared by every function:

* ``img`` / ``sr`` (the image scored), ``bic`` (the bicubic baseline, :func:`pairsr.grid.bicubic`)
  and ``ref`` (the HR ground truth) are 2-D arrays of one shape on the same grid, intensities on
  ``[0, data_range]``: pairsr's float32 ``[0, 1]`` by default (``data_range=1.0``). Integer arrays
  are scored in their own units, so they need ``data_range`` (e.g. 255 for uint8); one whose
  values exceed ``data_range`` is rejected.
* ``border`` crops that many pixels from every side before scoring (SR borders are unreliable).
  Filters that look at neighbourhoods (Otsu's smoothing, Canny) run on the whole image first; the
  crop applies to their output.
* Deltas are ``sr − bicubic`` (the literature's ΔPSNR, ΔSSIM); ``failure`` marks ΔPSNR < 0.
* PSNR of identical images is ``inf`` (zero MSE); a delta is then ``inf`` if only the SR image is
  exact and ``nan`` if both are.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.feature import canny
from skimage.filters import gaussian, threshold_otsu
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.morphology import remove_small_holes, remove_small_objects

#: Default border (SR pixels) cropped by :func:`score`: 4 LR pixels at ×2, half a 9×9 patch.
SCORE_BORDER = 8
#: SSIM as defined by Wang et al. (2004), the paper's reference [42]: 11×11 Gaussian window with
#: σ = 1.5 and population (not sample) covariances.
SSIM_OPTIONS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def _prepare(images: dict[str, np.ndarray], data_range: float, border: int) -> list[np.ndarray]:
    """Check ``images`` (name → array): 2-D, one shape, within ``data_range``; crop ``border``."""
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    arrays = {name: np.asarray(a) for name, a in images.items()}
    shapes = {name: a.shape for name, a in arrays.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected 2-D images of one shape, got shapes {shapes}")
    for name, a in arrays.items():
        if np.issubdtype(a.dtype, np.integer) and a.max() > data_range:
            raise ValueError(
                f"{name} is {a.dtype} with values up to {a.max()} but data_range={data_range}: "
                "pass the data_range of its units or scale it with skimage.util.img_as_float32"
            )
    return [_crop(a, border) for a in arrays.values()]


def _crop(a: np.ndarray, border: int) -> np.ndarray:
    """``a`` without ``border`` pixels on every side; error if nothing would remain."""
    if border < 0 or 2 * border >= min(a.shape):
        raise ValueError(f"border={border} must be >= 0 and leave pixels of a {a.shape} image")
    return a[border : a.shape[0] - border, border : a.shape[1] - border]


def _check_mask(mask: np.ndarray, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != shape:
        raise ValueError(
            f"{name} must be a boolean array of shape {shape}, got {mask.dtype} {mask.shape}"
        )
    return mask


def psnr(
    img: np.ndarray,
    ref: np.ndarray,
    *,
    data_range: float = 1.0,
    border: int = 0,
    mask: np.ndarray | None = None,
) -> float:
    """PSNR of ``img`` against ``ref`` in dB: ``10 log10(data_range² / MSE)``; ``inf`` if identical.

    ``mask`` (boolean, shape of the images) restricts the MSE to its ``True`` pixels, after the
    border crop; a mask that selects nothing there is an error.
    """
    shape = np.shape(ref)
    img, ref = _prepare({"img": img, "ref": ref}, data_range, border)
    if mask is not None:
        mask = _crop(_check_mask(mask, shape), border)
        if not mask.any():
            raise ValueError(f"mask selects no pixel inside border={border}")
        img, ref = img[mask], ref[mask]
    with np.errstate(divide="ignore"):  # identical images: log10(x / 0) = inf, as documented
        return float(peak_signal_noise_ratio(ref, img, data_range=data_range))


def ssim(img: np.ndarray, ref: np.ndarray, *, data_range: float = 1.0, border: int = 0) -> float:
    """Mean SSIM of ``img`` against ``ref``; 1 if identical.

    SSIM as in Wang et al. 2004 (:data:`SSIM_OPTIONS`); the cropped images must be at least 11×11.
    """
    img, ref = _prepare({"img": img, "ref": ref}, data_range, border)
    return float(structural_similarity(ref, img, data_range=data_range, **SSIM_OPTIONS))


def delta_vs_bicubic(
    sr: np.ndarray, bic: np.ndarray, ref: np.ndarray, *, data_range: float = 1.0, border: int = 0
) -> dict[str, float]:
    """PSNR (dB) and SSIM of ``sr`` and of the bicubic ``bic`` against ``ref``, and their deltas.

    Returns ``psnr``, ``ssim`` (of ``sr``), ``psnr_bic``, ``ssim_bic``, ``dpsnr = psnr − psnr_bic``,
    ``dssim = ssim − ssim_bic`` and ``failure`` (``dpsnr < 0``: SR worse than bicubic; a bool).
    """
    kw = {"data_range": data_range, "border": border}
    out = {
        "psnr": psnr(sr, ref, **kw),
        "psnr_bic": psnr(bic, ref, **kw),
        "ssim": ssim(sr, ref, **kw),
        "ssim_bic": ssim(bic, ref, **kw),
    }
    out["dpsnr"] = out["psnr"] - out["psnr_bic"]
    out["dssim"] = out["ssim"] - out["ssim_bic"]
    out["failure"] = bool(out["dpsnr"] < 0)
    return out


def foreground_mask(
    ref: np.ndarray, *, sigma: float = 1.0, min_size: int = 64, invert: bool = False
) -> np.ndarray:
    """Foreground (nanomaterial) mask of a reference image by Otsu's threshold (paper Sec. IV-C).

    ``ref`` is smoothed by a Gaussian of ``sigma`` pixels (0: none; σ = 1 steadies noisy
    boundaries but rounds off a right-angle corner pixel), thresholded by Otsu's method, and
    isolated noise removed: foreground components and background holes of fewer than ``min_size``
    pixels (4-connected) are dropped and filled. The foreground is the side brighter than the
    threshold (nanomaterial in SEM), the darker side with ``invert`` (e.g. bright-field TEM).
    Returns a boolean array of ``ref``'s shape; all ``False`` for a constant image.
    """
    ref = np.asarray(ref)
    if ref.ndim != 2:
        raise ValueError(f"foreground_mask expects a 2-D reference, got shape {ref.shape}")
    smooth = gaussian(ref.astype(np.float64), sigma=sigma) if sigma > 0 else ref
    if invert:
        smooth = -smooth
    fg = smooth > threshold_otsu(smooth)
    if min_size > 1:
        fg = remove_small_objects(fg, max_size=min_size - 1)
        fg = remove_small_holes(fg, max_size=min_size - 1)
    return fg


def region_psnr(
    img: np.ndarray,
    ref: np.ndarray,
    mask: np.ndarray,
    *,
    bic: np.ndarray | None = None,
    data_range: float = 1.0,
    border: int = 0,
) -> dict[str, float]:
    """PSNR (dB) of ``img`` in the foreground ``mask`` and in the background ``~mask`` (Table III).

    Returns ``psnr_fg``, ``psnr_bg``; with the bicubic ``bic`` also ``psnr_fg_bic``,
    ``psnr_bg_bic`` and the deltas ``dpsnr_fg``, ``dpsnr_bg``. A region with no pixel inside
    the border crop scores ``nan``.
    """
    images = {"img": img} | ({} if bic is None else {"bic": bic})
    mask = _check_mask(mask, np.shape(ref))
    kw = {"data_range": data_range, "border": border}
    out = {}
    for region, selected in (("fg", mask), ("bg", ~mask)):
        empty = not _crop(selected, border).any()
        scores = {
            k: math.nan if empty else psnr(v, ref, mask=selected, **kw) for k, v in images.items()
        }
        out[f"psnr_{region}"] = scores["img"]
        if bic is not None:
            out[f"psnr_{region}_bic"] = scores["bic"]
            out[f"dpsnr_{region}"] = scores["img"] - scores["bic"]
    return out


def edge_similarity(b_sr: np.ndarray, b_hr: np.ndarray) -> float:
    """Paper Eq. (4): ``1 − ‖B_HR ≠ B_SR‖₁ / (‖B_HR‖₁ + ‖B_SR‖₁)`` of two boolean edge maps.

    Equals the Dice coefficient ``2|B_HR ∧ B_SR| / (|B_HR| + |B_SR|)``: 1 for identical maps, 0
    for disjoint ones; two empty maps are identical, hence 1.
    """
    b_sr, b_hr = np.asarray(b_sr), np.asarray(b_hr)
    _check_mask(b_sr, b_hr.shape, "b_sr")
    _check_mask(b_hr, b_sr.shape, "b_hr")
    total = np.count_nonzero(b_sr) + np.count_nonzero(b_hr)
    return 1.0 if total == 0 else float(1 - np.count_nonzero(b_sr != b_hr) / total)


def canny_similarity(
    img: np.ndarray,
    ref: np.ndarray,
    *,
    sigma: float = 2.0,
    low_threshold: float = 0.1,
    high_threshold: float = 0.2,
    data_range: float = 1.0,
    border: int = 0,
) -> float:
    """:func:`edge_similarity` of the Canny edge maps of ``img`` and ``ref`` (paper Sec. IV-C).

    ``skimage.feature.canny`` with a Gaussian of ``sigma`` pixels and hysteresis thresholds on
    its (unnormalised Sobel) gradient magnitude of the image scaled to ``[0, 1]`` by
    ``data_range``, the same absolute thresholds for both images, so a loss of contrast costs
    edges. The thresholds are skimage's float defaults; the paper's "0.2" is a high threshold too,
    but relative to each image's largest gradient (MATLAB). With the defaults a sharp step is
    detected from a height of about 0.14. The maps are cropped by ``border`` after detection.
    """
    img, ref = _prepare({"img": img, "ref": ref}, data_range, 0)
    b_img, b_ref = (
        _crop(canny(a / data_range, sigma, low_threshold, high_threshold), border)
        for a in (img, ref)
    )
    return edge_similarity(b_img, b_ref)


def score(
    sr: np.ndarray,
    bic: np.ndarray,
    ref: np.ndarray,
    *,
    data_range: float = 1.0,
    border: int = SCORE_BORDER,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of ``sr`` and of its bicubic baseline ``bic`` against ``ref``, in one dict.

    Keys: those of :func:`delta_vs_bicubic` and :func:`region_psnr` (with ``bic``),
    ``canny_sim``, ``canny_sim_bic``, ``dcanny_sim`` (:func:`canny_similarity` with its defaults)
    and ``fg_fraction`` (share of scored pixels in the foreground). ``mask`` is the foreground;
    by default ``foreground_mask(ref)``.
    """
    mask = foreground_mask(ref) if mask is None else mask
    kw = {"data_range": data_range, "border": border}
    out = delta_vs_bicubic(sr, bic, ref, **kw) | region_psnr(sr, ref, mask, bic=bic, **kw)
    out["canny_sim"] = canny_similarity(sr, ref, **kw)
    out["canny_sim_bic"] = canny_similarity(bic, ref, **kw)
    out["dcanny_sim"] = out["canny_sim"] - out["canny_sim_bic"]
    out["fg_fraction"] = float(_crop(mask, border).mean())
    return out
