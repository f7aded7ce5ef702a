"""Tests of pairsr.metrics against known answers, closed forms and a real EM image."""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.transform import downscale_local_mean
from skimage.util import img_as_float32

from pairsr import metrics
from pairsr.grid import bicubic

SHARED = Path(__file__).parents[2] / "shared"
RODS = SHARED / "data/real/afrl_mdf_nanorods_pentacene/hr_2nm_goldnanorods/test_001.png"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def ref(rng):
    """A smooth 64×64 reference in [0.2, 0.8]."""
    return (0.5 + 0.3 * np.tanh(ndi.gaussian_filter(rng.normal(size=(64, 64)), 4) * 8)).astype(
        np.float32
    )


def test_identical_images_give_inf_psnr_and_unit_ssim(ref):
    assert metrics.psnr(ref, ref) == math.inf
    assert metrics.ssim(ref, ref) == pytest.approx(1.0)


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_psnr_of_gaussian_noise_matches_its_level(ref, rng, sigma):
    big = np.tile(ref, (4, 4))  # 256×256: the MSE estimate is within ~0.5 % of σ²
    noisy = big + rng.normal(0, sigma, big.shape).astype(np.float32)
    assert metrics.psnr(noisy, big) == pytest.approx(20 * math.log10(1 / sigma), abs=0.1)


def test_psnr_known_value_border_and_mask(ref):
    img = ref.copy()
    img[:3] += 0.1  # error only in the top 3 rows
    assert metrics.psnr(img, ref, border=3) == math.inf
    # border=2 keeps 60×60 pixels, of which row 2 (60 pixels) carries the error 0.1
    expected = 10 * math.log10(1 / (0.1**2 * 60 / 60**2))
    assert metrics.psnr(img, ref, border=2) == pytest.approx(expected, abs=1e-3)
    changed = np.zeros(ref.shape, bool)
    changed[:3] = True
    assert metrics.psnr(img, ref, mask=changed) == pytest.approx(20.0, abs=1e-4)
    assert metrics.psnr(img, ref, mask=~changed) == math.inf
    with pytest.raises(ValueError, match="no pixel"):
        metrics.psnr(img, ref, mask=changed, border=3)
    with pytest.raises(ValueError, match="boolean"):
        metrics.psnr(img, ref, mask=changed.astype(np.uint8))
    with pytest.raises(ValueError, match="border"):
        metrics.psnr(img, ref, border=32)
    with pytest.raises(ValueError, match="shapes"):
        metrics.psnr(img[:-1], ref)


def test_ssim_matches_closed_form_for_constant_images():
    # Constant images: SSIM = (2ab + C1) / (a² + b² + C1), C1 = (0.01 L)² (contrast term is 1).
    a, b = 0.5, 0.6
    expected = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)
    img, ref = np.full((32, 32), a, np.float32), np.full((32, 32), b, np.float32)
    assert metrics.ssim(img, ref) == pytest.approx(expected, rel=1e-5)
    assert metrics.ssim(255 * img, 255 * ref, data_range=255) == pytest.approx(expected, rel=1e-5)
    frame = ref.copy()
    frame[:, :2] = 0.0  # differs only within the 2-pixel left border
    assert metrics.ssim(frame, ref) < 0.99
    assert metrics.ssim(frame, ref, border=2) == pytest.approx(1.0)


def test_data_range_respected_for_uint8_data(rng):
    ref8 = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    img8 = np.clip(ref8 + rng.integers(-20, 21, ref8.shape), 0, 255).astype(np.uint8)
    ref, img = img_as_float32(ref8), img_as_float32(img8)
    assert metrics.psnr(img8, ref8, data_range=255) == pytest.approx(metrics.psnr(img, ref), 1e-6)
    assert metrics.ssim(img8, ref8, data_range=255) == pytest.approx(metrics.ssim(img, ref), 1e-5)
    assert metrics.canny_similarity(img8, ref8, data_range=255) == pytest.approx(
        metrics.canny_similarity(img, ref), abs=1e-6
    )
    with pytest.raises(ValueError, match=r"img is uint8 .* data_range=1\.0"):
        metrics.psnr(img8, ref)


def test_delta_vs_bicubic_sign_and_failure_flag(ref, rng):
    good = ref + rng.normal(0, 0.02, ref.shape).astype(np.float32)
    bad = ref + rng.normal(0, 0.05, ref.shape).astype(np.float32)
    better = metrics.delta_vs_bicubic(good, bad, ref)
    assert better["dpsnr"] == pytest.approx(20 * math.log10(0.05 / 0.02), abs=0.5)
    assert better["dpsnr"] == pytest.approx(better["psnr"] - better["psnr_bic"])
    assert better["dssim"] > 0 and not better["failure"]
    assert not metrics.delta_vs_bicubic(bad, bad, ref)["failure"]  # dpsnr = 0: no failure
    worse = metrics.delta_vs_bicubic(bad, good, ref, border=4)
    assert worse["dpsnr"] < 0 and worse["dssim"] < 0 and worse["failure"]
    exact = metrics.delta_vs_bicubic(ref, bad, ref)
    assert exact["dpsnr"] == math.inf and not exact["failure"]
    both = metrics.delta_vs_bicubic(ref, ref, ref)
    assert math.isnan(both["dpsnr"]) and not both["failure"]


def _two_level(truth: np.ndarray, rng, *, bright: float = 0.7, dark: float = 0.2) -> np.ndarray:
    """``bright`` on ``truth``, ``dark`` elsewhere, with 5 % salt (in the dark) and pepper (in the
    bright) noise pixels that do not touch the boundary (isolated noise, not a boundary change)."""
    img = np.where(truth, bright, dark).astype(np.float32)
    boundary = truth ^ ndi.binary_erosion(truth)
    noise = (rng.random(img.shape) < 0.05) & ~ndi.binary_dilation(boundary, iterations=3)
    img[noise & ~truth] = 1.0
    img[noise & truth] = 0.0
    return img


def test_foreground_mask_recovers_bright_level_despite_salt_and_pepper(rng):
    truth = np.zeros((96, 96), bool)
    truth[disk((48, 48), 25)] = True
    noisy = _two_level(truth, rng)
    assert (noisy == 1.0).sum() > 100  # the noise is there: Otsu alone would keep it
    np.testing.assert_array_equal(metrics.foreground_mask(noisy), truth)
    # unsmoothed, even right-angle corners are kept (σ = 1 rounds them off)
    rect = np.zeros((96, 96), bool)
    rect[20:60, 30:80] = True
    np.testing.assert_array_equal(metrics.foreground_mask(_two_level(rect, rng), sigma=0), rect)
    # invert: a dark object on a bright background
    np.testing.assert_array_equal(metrics.foreground_mask(1 - noisy, invert=True), truth)
    # without isolated-noise removal, the salt stays in the foreground
    assert (metrics.foreground_mask(noisy, sigma=0, min_size=1) != truth).sum() > 100
    assert not metrics.foreground_mask(np.full((16, 16), 0.4)).any()


def test_region_psnr_separates_foreground_and_background(ref):
    mask = np.zeros(ref.shape, bool)
    mask[:, :32] = True
    img = ref + np.where(mask, 0.1, 0.0)
    bic = ref + 0.2
    out = metrics.region_psnr(img, ref, mask, bic=bic)
    assert out["psnr_fg"] == pytest.approx(20.0, abs=1e-4)
    assert out["psnr_bg"] == math.inf
    assert out["psnr_fg_bic"] == pytest.approx(20 * math.log10(5), abs=1e-4)
    assert out["dpsnr_fg"] == pytest.approx(20 * math.log10(2), abs=1e-4)
    assert out["dpsnr_bg"] == math.inf
    assert set(metrics.region_psnr(img, ref, mask)) == {"psnr_fg", "psnr_bg"}
    all_fg = metrics.region_psnr(img, ref, np.ones(ref.shape, bool), bic=bic)
    assert math.isnan(all_fg["psnr_bg"]) and math.isnan(all_fg["dpsnr_bg"])


def test_edge_similarity_known_values():
    a = np.zeros((8, 8), bool)
    b = np.zeros((8, 8), bool)
    assert metrics.edge_similarity(a, b) == 1.0  # both empty: identical
    a[1, 1:5] = True  # 4 pixels
    assert metrics.edge_similarity(a, a) == 1.0
    assert metrics.edge_similarity(a, b) == 0.0
    b[6, :] = True
    assert metrics.edge_similarity(a, b) == 0.0  # disjoint
    b[6, :] = False
    b[1, 2:8] = True  # 6 pixels, 3 shared with a: 1 - (1 + 3) / 10
    assert metrics.edge_similarity(a, b) == pytest.approx(0.6)
    assert metrics.edge_similarity(b, a) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="b_sr"):
        metrics.edge_similarity(a[:4], b)


def _bands(shift_a: int = 0, shift_b: int = 0, n: int = 64) -> np.ndarray:
    """Two bright vertical bands, mid-grey edges at columns 10, 22 (+shift_a), 38, 50 (+shift_b)."""
    x = np.arange(n, dtype=float)
    profile = sum(
        np.clip(x - lo + 0.5, 0, 1) * np.clip(hi - x + 0.5, 0, 1)
        for lo, hi in ((10 + shift_a, 22 + shift_a), (38 + shift_b, 50 + shift_b))
    )
    return np.tile(0.2 + 0.6 * profile, (n, 1)).astype(np.float32)


def test_canny_similarity_of_shifted_edges():
    ref = _bands()
    assert metrics.canny_similarity(ref, ref) == 1.0
    # one band moved by one pixel: its two edges are disjoint, the other two coincide
    assert metrics.canny_similarity(_bands(shift_b=1), ref) == pytest.approx(0.5)
    assert metrics.canny_similarity(_bands(1, 1), ref) == 0.0
    # border crops the maps, not the images, so an edge on the crop line is found where it is:
    # edges 12, 24, 38, 50 against 13, 25, 38, 50 (Canny on images cropped by 12 would misplace
    # the first at column 13, making it coincide); border=13 drops column 12: 2·2 / (3 + 4)
    shifted_2, shifted_3 = _bands(shift_a=2), _bands(shift_a=3)
    assert metrics.canny_similarity(shifted_2, shifted_3, border=12) == pytest.approx(0.5)
    assert metrics.canny_similarity(shifted_2, shifted_3, border=13) == pytest.approx(4 / 7)


def test_score_on_simulated_particles(rng):
    ref = np.full((96, 96), 0.25, np.float32)
    for r, c in rng.integers(15, 81, (6, 2)):
        ref[disk((r, c), 9, shape=ref.shape)] = 0.75
    ref = ndi.gaussian_filter(ref, 0.7)
    lr = downscale_local_mean(ref, 2) + rng.normal(0, 0.03, (48, 48))
    bic = bicubic(lr)
    sr = ref + rng.normal(0, 0.01, ref.shape).astype(np.float32)  # a near-perfect SR
    out = metrics.score(sr, bic, ref)
    assert out["dpsnr"] > 3 and not out["failure"] and out["dssim"] > 0
    assert out["dpsnr_fg"] > 0 and out["dpsnr_bg"] > 0
    assert out["canny_sim"] > out["canny_sim_bic"] and out["dcanny_sim"] > 0
    b = metrics.SCORE_BORDER
    mask = metrics.foreground_mask(ref)
    assert out["psnr"] == metrics.psnr(sr, ref, border=b)
    assert out["psnr_fg_bic"] == metrics.psnr(bic, ref, border=b, mask=mask)
    assert out["fg_fraction"] == pytest.approx(mask[b:-b, b:-b].mean())
    assert metrics.score(sr, bic, ref, mask=~mask)["psnr_fg"] == out["psnr_bg"]


@pytest.mark.skipif(not RODS.exists(), reason=f"real EM data not found: {RODS} (needs ../shared)")
def test_background_only_denoising_of_real_nanorods_shows_in_background_only():
    from PIL import Image

    hr = img_as_float32(np.array(Image.open(RODS).convert("L")))
    rng = np.random.default_rng(1)
    bic = bicubic(downscale_local_mean(hr, 2) + rng.normal(0, 0.03, (128, 128)))
    mask = metrics.foreground_mask(hr)
    assert 0.1 < mask.mean() < 0.3  # rods cover about a fifth of this tile
    # a "method" that smooths only the background: foreground PSNR unchanged, background better
    sr = np.where(mask, bic, ndi.gaussian_filter(bic, 2))
    out = metrics.score(sr, bic, hr, mask=mask)
    assert out["dpsnr_fg"] == 0.0
    assert out["dpsnr_bg"] > 1.0
