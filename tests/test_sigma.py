"""Tests of the automatic LB-NLM σ (pairsr.sigma): validation that exists for any footprint,
holds out what it scores, scales with the data, picks well, and falls back with a warning."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import psnr
from scipy import ndimage as ndi

from pairsr.grid import bicubic
from pairsr.lbnlm import lbnlm_filter
from pairsr.library import sample_patches
from pairsr.sigma import DEFAULT_RATIO, select_sigma


def _pair(shape, rng, noise=0.02):
    """``(up, hr)`` on one grid: HR a smooth texture, up the bicubic ×2 of its blurred, binned,
    noisy, differently scaled copy (a physical-like LR)."""
    hr = ndi.gaussian_filter(rng.random(shape), 1.5)
    hr = ((hr - hr.min()) / np.ptp(hr)).astype(np.float32)
    h, w = shape[0] // 2, shape[1] // 2
    lr = ndi.gaussian_filter(hr, 1.0)[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean((1, 3))
    lr = 0.1 + 0.7 * lr + noise * rng.standard_normal(lr.shape)
    return bicubic(lr.astype(np.float32)), hr


def _rotated(shape, size, degrees):
    """Boolean footprint: a ``size`` rectangle rotated by ``degrees`` about the image centre."""
    rows, cols = np.mgrid[: shape[0], : shape[1]] - (np.array(shape) - 1)[:, None, None] / 2
    t = np.deg2rad(degrees)
    u, v = np.cos(t) * rows + np.sin(t) * cols, -np.sin(t) * rows + np.cos(t) * cols
    return (np.abs(u) < size[0] / 2) & (np.abs(v) < size[1] / 2)


def _masked(pair, mask):
    up, hr = pair
    return up, np.where(mask, hr, np.nan).astype(np.float32)


def _psnr(a, b):
    return psnr(a, b, border=8)


@pytest.fixture(scope="module")
def texture():
    rng = np.random.default_rng(0)
    return _pair((160, 200), rng), _pair((96, 96), rng)


def test_rotated_thin_footprints_always_have_validation_data(texture):
    """A footprint 60 px tall, rotated by 4°: no NaN-free square inside a 20 % strip exists,
    yet every fold has validation pixels."""
    (up, hr), _ = texture
    for mask in (_rotated(up.shape, (60, 180), 4.0), _rotated(up.shape, (150, 60), -6.0)):
        train = [_masked((up, hr), mask)]
        sample = sample_patches(train, n=7, k=8, K=4, L=800)
        choice = select_sigma(sample, train, lbnlm_filter)
        assert not choice.fallback and choice.folds == 5
        assert choice.pixels == mask.sum()  # fewer than the budget: all of them
        errors = np.array(list(choice.tried.values()))
        assert np.isfinite(errors).all() and choice.tried[choice.sigma] == errors.min()
        assert choice.scale / 16 <= choice.sigma <= 16 * choice.scale


def test_the_folds_hold_out_what_they_score():
    """Negative control: HR pure noise, unrelated to ``up``. A fold library holding the scored
    patches would reproduce them at a tiny σ (error ~0); held out, nothing predicts them: every
    σ errs by about the noise variance, the widest (the category mean) least."""
    rng = np.random.default_rng(1)
    up, _ = _pair((96, 96), rng)
    hr = rng.random(up.shape).astype(np.float32)
    train = [(up, hr)]
    choice = select_sigma(sample_patches(train, n=5, k=4, K=4, L=400), train, lbnlm_filter,
                          candidates=[1e-4, 1e-2, 10.0])  # fmt: skip
    assert choice.sigma == 10.0
    assert choice.tried[10.0] > 0.9 * hr.var() and choice.tried[1e-4] > 0.9 * hr.var()


def test_sigma_scales_with_the_contrast(texture):
    (up, hr), _ = texture
    train = [_masked((up, hr), _rotated(up.shape, (120, 160), 3.0))]
    low = [(0.2 + 0.25 * u, 0.2 + 0.25 * h) for u, h in train]
    chosen = [select_sigma(sample_patches(t, n=7, k=8, K=4, L=800), t, lbnlm_filter, pixels=8192)
              for t in (train, low)]  # fmt: skip
    assert chosen[1].scale / chosen[0].scale == pytest.approx(0.25, rel=0.05)
    assert 0.25 / 1.5 < chosen[1].sigma / chosen[0].sigma < 0.25 * 1.5


def test_the_chosen_sigma_is_near_the_best_on_unseen_data(texture):
    """Scored on another pair of the same kind, the automatic σ is within 0.1 dB of the best of
    a fine grid, and a σ chosen among given candidates within 0.3 dB of the best of those."""
    train, (up, hr) = texture
    train = [train]
    sample = sample_patches(train, n=7, k=8, K=4, L=800)
    library = sample.library()
    grid = 0.002 * 2 ** (np.arange(12) / 2)
    scores = {s: _psnr(lbnlm_filter(up, library, sigma=s), hr) for s in grid}
    auto = select_sigma(sample, train, lbnlm_filter, pixels=16384)
    assert _psnr(lbnlm_filter(up, library, sigma=auto.sigma), hr) > max(scores.values()) - 0.1
    candidates = list(grid[::2])
    picked = select_sigma(sample, train, lbnlm_filter, candidates=candidates, pixels=8192).sigma
    assert picked in candidates
    assert scores[picked] > max(scores[c] for c in candidates) - 0.3


def test_too_little_hr_falls_back_to_a_scaled_default_with_a_warning(texture):
    (up, hr), _ = texture
    mask = np.zeros(up.shape, bool)
    mask[60:88, 80:108] = True  # 28 × 28: fewer validation pixels than 16 n²
    train = [_masked((up, hr), mask)]
    sample = sample_patches(train, n=7, k=8, K=4, L=800)
    with pytest.warns(UserWarning, match="too little held-out HR.*-p sigma="):
        choice = select_sigma(sample, train, lbnlm_filter)
    assert choice.fallback and choice.record()["fallback"]
    assert choice.sigma == pytest.approx(DEFAULT_RATIO * choice.scale) and choice.scale > 0.005
    low = [(0.25 * u, 0.25 * h) for u, h in train]  # the default scales with the data too
    with pytest.warns(UserWarning):
        scaled = select_sigma(sample_patches(low, n=7, k=8, K=4, L=800), low, lbnlm_filter)
    assert scaled.sigma / choice.sigma == pytest.approx(0.25, rel=0.05)


def test_select_sigma_errors(texture):
    train = [texture[0]]
    sample = sample_patches(train, n=7, k=8, K=4, L=800)
    with pytest.raises(ValueError, match="folds >= 2"):
        select_sigma(sample, train, lbnlm_filter, folds=1)
    with pytest.raises(ValueError, match="positive"):
        select_sigma(sample, train, lbnlm_filter, candidates=[])
