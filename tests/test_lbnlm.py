"""Tests of the paired LB-NLM filter (pairsr.lbnlm) against direct references."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import psnr
from skimage import draw, filters, transform

from pairsr.grid import BICUBIC_HALO, bicubic
from pairsr.lbnlm import (
    LBNLM,
    _numpy_attention,
    _prepared,
    flat_lattice,
    halo,
    lbnlm_filter,
    lbnlm_original,
    window_align,
)
from pairsr.library import Library, build_library
from pairsr.region import Region, predict_region

SHARED = Path(__file__).parents[2] / "shared"
JEOL = SHARED / "data/real/konstanz_colloids_sem/jeol_A-2h-01_x50k_2nm.tif"


def _reflect(i: int, size: int) -> int:
    """Half-sample symmetric index: ... 1 0 | 0 1 ... size-1 | size-1 size-2 ..."""
    i %= 2 * size
    return i if i < size else 2 * size - 1 - i


def _centres(size: int, n: int, stride: int) -> list[int]:
    """Patch centres along an axis: every ``stride``-th pixel, one more if the end is uncovered."""
    centres = list(range(0, size, stride))
    if centres[-1] + n // 2 < size - 1:
        centres.append(centres[-1] + stride)
    return centres


def reference(up, keys, values, labels, centroids, n, sigma, *, m=1, stride=1, residual=False):
    """Algorithm 1 steps 5-9 in plain Python loops over pixels, library entries and categories."""
    h, w = up.shape
    r = (n - 1) // 2
    sums = [[0.0] * w for _ in range(h)]
    count = [[0] * w for _ in range(h)]
    for ci in _centres(h, n, stride):
        for cj in _centres(w, n, stride):
            q = [float(up[_reflect(ci - r + a, h), _reflect(cj - r + b, w)])
                 for a in range(n) for b in range(n)]  # fmt: skip
            dist = [sum((x - y) ** 2 for x, y in zip(q, c, strict=True)) for c in centroids]
            nearest = sorted(range(len(centroids)), key=dist.__getitem__)[:m]
            total, est = 0.0, [0.0] * (n * n)
            for key, value, label in zip(keys, values, labels, strict=True):
                if label in nearest:
                    d2 = sum((x - y) ** 2 for x, y in zip(q, key, strict=True))
                    weight = math.exp(-d2 / (2 * n * n * sigma**2))
                    total += weight
                    est = [e + weight * v for e, v in zip(est, value, strict=True)]
            for t in range(n * n):
                i, j = ci - r + t // n, cj - r + t % n
                if 0 <= i < h and 0 <= j < w:
                    sums[i][j] += est[t] / total + (q[t] if residual else 0.0)
                    count[i][j] += 1
    return np.array(sums) / np.array(count)


@pytest.fixture(scope="module")
def tiny():
    """A 3×3-patch library of 40 pairs in 4 categories and a 7×6 query image."""
    rng = np.random.default_rng(1)
    hr = rng.random((14, 14), dtype=np.float32)
    up = (hr + 0.2 * rng.random((14, 14))).astype(np.float32)
    lib = build_library([(up, hr)], n=3, k=4, K=2, L=40, seed=0)
    return lib, (0.2 + 0.6 * rng.random((7, 6))).astype(np.float32)


@pytest.mark.parametrize(
    ("sigma", "m", "stride", "residual"),
    [(0.2, 1, 1, False), (0.05, 1, 1, False), (0.2, 2, 1, False), (0.2, 1, 2, False),
     (0.1, 3, 3, False), (0.2, 1, 1, True), (0.1, 2, 2, True)],
)  # fmt: skip
def test_filter_matches_loop_reference(tiny, sigma, m, stride, residual):
    lib, up = tiny
    out = lbnlm_filter(up, lib, sigma=sigma, categories=m, stride=stride, residual=residual,
                       exact=True)  # fmt: skip
    values = lib.hr - lib.up if residual else lib.hr
    ref = reference(up, lib.up, values, lib.labels, lib.centroids, lib.n, sigma, m=m,
                    stride=stride, residual=residual)  # fmt: skip
    assert out.shape == up.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=2e-6)


def test_original_matches_loop_reference(tiny):
    lib, up = tiny
    out = lbnlm_original(up, lib, sigma=0.15)
    ref = reference(up, lib.hr, lib.hr, np.zeros(len(lib)), [lib.hr.mean(0)], lib.n, 0.15)
    np.testing.assert_allclose(out, ref, atol=2e-6)


def _mosaic_queries(up, n):
    """The patches of a (n+1)×(n+1) image at stride n: centres 0 and n on each axis."""
    r = (n - 1) // 2
    padded = np.pad(up, ((r, n),) * 2, mode="symmetric")
    return {(ci, cj): padded[ci : ci + n, cj : cj + n].ravel() for ci in (0, n) for cj in (0, n)}


def _assemble(patches, n, size):
    """Write each patch (flat, centred at its key) into a ``size²`` image: the stride-n output."""
    r = (n - 1) // 2
    out = np.zeros((size + n, size + n))
    for (ci, cj), p in patches.items():
        out[ci : ci + n, cj : cj + n] = p.reshape(n, n)
    return out[r : r + size, r : r + size]


@pytest.mark.parametrize("residual", [False, True])
def test_sigma_limits(tiny, residual):
    lib, _ = tiny
    n = lib.n
    up = np.random.default_rng(7).random((n + 1, n + 1)).astype(np.float32)
    values = lib.hr - lib.up if residual else lib.hr
    nearest, means = {}, {}
    for pos, q in _mosaic_queries(up, n).items():
        c = np.argmin(((lib.centroids - q) ** 2).sum(1))
        members = np.flatnonzero(lib.labels == c)
        best = members[np.argmin(((lib.up[members] - q) ** 2).sum(1))]
        nearest[pos] = values[best] + (q if residual else 0)
        means[pos] = values[members].mean(0) + (q if residual else 0)
    small = lbnlm_filter(up, lib, sigma=1e-4, stride=n, residual=residual, exact=True)
    np.testing.assert_allclose(small, _assemble(nearest, n, n + 1), atol=1e-6)
    large = lbnlm_filter(up, lib, sigma=1e4, stride=n, residual=residual, exact=True)
    np.testing.assert_allclose(large, _assemble(means, n, n + 1), atol=1e-6)


def test_all_categories_equal_one_category(tiny):
    lib, up = tiny
    single = Library(lib.up, lib.hr, np.zeros(len(lib)), lib.up.mean(0, keepdims=True), lib.n)
    for residual in (False, True):
        expected = lbnlm_filter(up, single, sigma=0.1, residual=residual)
        got = lbnlm_filter(up, lib, sigma=0.1, categories=lib.k, residual=residual)
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_blocks_and_workers_do_not_change_the_result(tiny):
    lib, up = tiny
    big = np.tile(up, (5, 6))
    expected = lbnlm_filter(big, lib, sigma=0.1, categories=2, workers=1)
    for block, workers in ((1, 1), (100, 2), (700, 3)):
        got = lbnlm_filter(big, lib, sigma=0.1, categories=2, block=block, workers=workers)
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_far_queries_and_tiny_sigma_stay_finite(tiny):
    lib, _ = tiny
    far = np.full((5, 5), 50.0, np.float32)  # every library patch is far: all logits < -1e6
    out = lbnlm_filter(far, lib, sigma=1e-3)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("categories", [1, 2])
def test_torch_path_matches_numpy(tiny, categories):
    pytest.importorskip("torch")
    lib, up = tiny
    big = np.tile(up, (3, 3))
    for residual in (False, True):
        expected = lbnlm_filter(big, lib, sigma=0.1, categories=categories, residual=residual)
        got = lbnlm_filter(big, lib, sigma=0.1, categories=categories, residual=residual,
                           device="cpu")  # fmt: skip
        np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(
        lbnlm_original(big, lib, sigma=0.1, device="cpu"),
        lbnlm_original(big, lib, sigma=0.1),
        atol=1e-5,
    )


def test_torch_path_with_empty_bases(tiny):
    """A large σ averages a whole category: bases of rank 0, which the device takes too."""
    pytest.importorskip("torch")
    lib, up = tiny
    prepare = _prepared(lib.up, lib.hr, lib.labels, 1 / (lib.n**2 * 100.0**2), False)
    assert prepare((0,))[3].shape == (1, lib.n**2)  # [Cᵀ; ν] with C of rank 0: ν alone
    np.testing.assert_allclose(lbnlm_filter(up, lib, sigma=100.0, device="cpu"),
                               lbnlm_filter(up, lib, sigma=100.0), atol=1e-5)  # fmt: skip


def test_filter_errors(tiny):
    lib, up = tiny
    bad = {"sigma": 0.0, "categories": lib.k + 1, "stride": lib.n + 1, "block": 0, "workers": 0}
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            lbnlm_filter(up, lib, **{"sigma": 0.1, name: value})
    with pytest.raises(ValueError, match="finite 2-D"):
        lbnlm_filter(np.full((5, 5), np.nan), lib, sigma=0.1)


def _texture(shape, rng):
    """Bright disks (nanoparticles) on a dark background, lightly smoothed."""
    img = np.full(shape, 0.2, np.float32)
    for _ in range(shape[0] * shape[1] // 60):
        rr, cc = draw.disk(rng.uniform(0, shape, 2), rng.uniform(2, 4), shape=shape)
        img[rr, cc] = rng.uniform(0.6, 0.9)
    return filters.gaussian(img, 0.6).astype(np.float32)


def _simulated_pair(hr, rng):
    """``(up, hr)``: up is the bicubic ×2 of a blurred, 2×2-binned, noisy copy of ``hr``."""
    lr = transform.downscale_local_mean(filters.gaussian(hr, 1.0), (2, 2))
    return bicubic((lr + rng.normal(0, 0.01, lr.shape)).astype(np.float32)), hr


def _psnr(a, b):
    return psnr(a, b, border=6)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    sizes = ((128, 128), (96, 96), (96, 96))
    train, _, test = (_simulated_pair(_texture(size, rng), rng) for size in sizes)
    return build_library([train], n=7, k=8, K=5, L=800, seed=0), test


def test_lbnlm_beats_bicubic_on_a_synthetic_pair(synthetic):
    lib, (up, hr) = synthetic
    bicubic_psnr = _psnr(up, hr)
    assert _psnr(lbnlm_filter(up, lib, sigma=0.02), hr) > bicubic_psnr + 0.8
    assert _psnr(lbnlm_filter(up, lib, sigma=0.02, residual=True), hr) > bicubic_psnr + 2


@pytest.mark.parametrize("residual", [False, True])
def test_reduced_filter_is_close_to_the_exact_one(synthetic, residual):
    """The default (reduced attention, flat background on a lattice) against the exact path."""
    lib, (up, hr) = synthetic
    exact = lbnlm_filter(up, lib, sigma=0.02, residual=residual, exact=True)
    reduced = lbnlm_filter(up, lib, sigma=0.02, residual=residual)
    assert not np.array_equal(reduced, exact)
    assert abs(_psnr(reduced, hr) - _psnr(exact, hr)) < 0.05
    assert np.abs(reduced - exact).mean() < 2e-3


def test_a_query_equal_to_a_library_patch(synthetic):
    """For a small σ (0.002) a category's own up patches get their HR patches: exactly on the
    exact path, and their projections on the category's HR basis on the reduced path."""
    lib, _ = synthetic
    scale = 1 / (lib.n**2 * 0.002**2)
    for c in range(lib.k):
        rows = np.flatnonzero(lib.labels == c)
        exact, reduced = np.empty_like(lib.hr[rows]), np.empty_like(lib.hr[rows])
        _numpy_attention(_prepared(lib.up, lib.hr, lib.labels, scale, True))(lib.up[rows], (c,),
                                                                            exact)  # fmt: skip
        prepare = _prepared(lib.up, lib.hr, lib.labels, scale, False)
        _numpy_attention(prepare)(lib.up[rows], (c,), reduced)
        _, basis, _, v_out, _ = prepare((c,))  # v_out: [Cᵀ; ν]
        assert basis.shape[1] < lib.n**2  # reduced indeed
        np.testing.assert_allclose(exact, lib.hr[rows], atol=2e-3)
        projected = lib.hr[rows]
        if v_out is not None:
            v_basis, v_mean = v_out[:-1].T, v_out[-1]
            projected = v_mean + (projected - v_mean) @ v_basis @ v_basis.T
        np.testing.assert_allclose(reduced, projected, atol=2e-3)


def test_halo_makes_tiles_exact(tiny):
    assert halo(9) == 4 + BICUBIC_HALO and halo(9, zoom=3) == 3 + BICUBIC_HALO
    assert halo(8) == 4 + BICUBIC_HALO
    lib, _ = tiny
    lr = np.random.default_rng(4).random((40, 40)).astype(np.float32)
    up = bicubic(lr)
    full = lbnlm_filter(up, lib, sigma=0.1)
    core = np.s_[34:50, 30:54]  # SR pixels of LR rows 17..25, cols 15..27

    def tile(image, context, scale):
        """Filter the core of ``image`` (``scale`` SR pixels per pixel) with ``context`` pixels
        around it, bicubic-upsampled first if ``scale`` is 2; return the core of the result."""
        r0, r1, c0, c1 = (v // scale for v in (34, 50, 30, 54))
        window = image[r0 - context : r1 + context, c0 - context : c1 + context]
        out = lbnlm_filter(window if scale == 1 else bicubic(window), lib, sigma=0.1)
        margin = context * scale
        return out[margin:-margin, margin:-margin]

    reach = lib.n - 1  # SR pixels of context an output pixel depends on
    np.testing.assert_allclose(tile(up, reach, scale=1), full[core], atol=1e-6)
    assert not np.allclose(tile(up, reach - 1, scale=1), full[core], atol=1e-3)
    np.testing.assert_allclose(tile(lr, halo(lib.n), scale=2), full[core], atol=1e-5)


def test_windows_on_the_method_alignment_agree_with_the_whole_image():
    """With 9×9 patches at ×2 the flat background's lattice is 3 SR px, so windows must start
    on multiples of 3 LR px (``align``): then any window agrees with the whole image, and
    windows that start elsewhere do not (the negative control)."""
    assert (flat_lattice(9, 2), window_align(9, 2)) == (3, 3)
    assert [(flat_lattice(9, z), window_align(9, z)) for z in (3, 4)] == [(3, 1), (4, 1)]
    assert (flat_lattice(5, 2), window_align(5, 2)) == (2, 1)  # as windows on any LR px allow
    rng = np.random.default_rng(2)
    hr = _texture((160, 160), rng)
    hr[:, 80:] = 0.5  # flat background: where the lattice matters
    up, hr = _simulated_pair(hr, rng)
    lr = transform.downscale_local_mean(up, (2, 2)).astype(np.float32)
    model = LBNLM.fit([(lr, hr)], zoom=2, n=9, k=6, K=3, L=600, sigma=0.02)
    assert model.align == 3
    full = model.predict(lr)
    apart = 0.0
    for start in (1, 2, 4):
        region = Region(start + 20, start + 24, 20, 26)  # its window: off the image border
        tile = predict_region(model.predict, lr, region, model.halo, 2, model.align)
        np.testing.assert_allclose(tile, region.sr(2).crop(full), atol=1e-5)
        off = predict_region(model.predict, lr, region, model.halo, 2)
        apart = max(apart, float(np.abs(off - region.sr(2).crop(full)).max()))
    assert apart > 1e-4


def _contrast_pair(hr, rng):
    """``(up, hr)`` with a physical-like LR: blurred, binned, another contrast curve, noisy."""
    lr = transform.downscale_local_mean(filters.gaussian(hr, 1.0), (2, 2))
    lr = 0.15 + 0.6 * lr**1.5 + rng.normal(0, 0.01, lr.shape)
    return bicubic(lr.astype(np.float32)), hr


@pytest.mark.skipif(not JEOL.is_file(), reason=f"real EM data not found at {JEOL}")
def test_lbnlm_learns_the_lr_to_hr_mapping_on_real_sem():
    import tifffile
    from skimage.util import img_as_float32

    hr = img_as_float32(tifffile.imread(JEOL)[300:492, 400:656])  # colloids, above the info bar
    up, hr = _contrast_pair(hr, np.random.default_rng(0))
    lib = build_library([(up[:, :160], hr[:, :160])], n=7, k=10, K=5, L=1000)
    test = np.s_[:, 176:]  # held out, beyond the reach of the training patches
    bicubic_psnr = _psnr(up[test], hr[test])  # about 17 dB: bicubic keeps the LR contrast
    assert _psnr(lbnlm_filter(up[test], lib, sigma=0.02), hr[test]) > bicubic_psnr + 10
