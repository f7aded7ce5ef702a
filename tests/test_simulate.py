import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from pairsr.grid import interpolate
from pairsr.simulate import save_pair, simulate_pair, true_lr_coords


@pytest.fixture(scope="module")
def specimen():
    rng = np.random.default_rng(7)
    tex = ndi.gaussian_filter(rng.standard_normal((420, 520)), 2.0)
    return ((tex - tex.min()) / np.ptp(tex)).astype(np.float32)


@pytest.fixture(scope="module")
def pair(specimen):
    return simulate_pair(specimen, seed=3, max_rotation_deg=2.0)


def _ncc(a, b, smooth=1.0):
    """Normalised cross-correlation after a light blur that averages the scans' shot noise."""
    a, b = ndi.gaussian_filter(a, smooth), ndi.gaussian_filter(b, smooth)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_shapes_and_geometry(pair):
    t = pair.truth
    h, w = pair.lr.shape
    assert pair.gt.shape == (2 * h, 2 * w)
    assert pair.hr.shape == tuple(t["hr_shape"])
    # ~25 % of the field at 2x density: the HR is about as many pixels as the LR.
    assert abs(pair.hr.size / pair.lr.size - 1.0) < 0.05
    assert abs(t["zoom"] - 2.0) < 0.02
    assert abs(t["rotation_deg"]) <= 2.0 + 1e-6
    m = np.asarray(t["matrix"])
    assert np.allclose(m / np.sqrt(abs(np.linalg.det(m))), m @ np.linalg.inv(m) @ m / np.sqrt(
        abs(np.linalg.det(m))))
    # The footprint lies inside the LR field.
    lr_of_hr = true_lr_coords(t)
    assert lr_of_hr[0].min() > 0 and lr_of_hr[0].max() < h - 1
    assert lr_of_hr[1].min() > 0 and lr_of_hr[1].max() < w - 1


def test_truth_mapping_reproduces_hr_better_than_wrong_mappings(pair):
    """LR resampled through the truth matches the HR scan far better than a shifted mapping."""
    lr = pair.lr.astype(np.float32)
    hr = pair.hr.astype(np.float32)
    exact = true_lr_coords(pair.truth)
    good = _ncc(interpolate(lr, exact), hr)
    assert good > 0.5
    # The truth is the correlation peak: wrong mappings score lower, the further off the lower.
    for direction in ([1.0, 0.0], [0.0, 1.0], [-0.7, 0.7]):
        scores = [
            _ncc(interpolate(lr, exact + d * np.array(direction)[:, None, None]), hr)
            for d in (0.25, 0.5, 1.0)
        ]
        assert good > scores[0] > scores[1] > scores[2], (direction, good, scores)
        assert good - scores[2] > 0.05
    # The affine fit is the global part: residual is small but the local field is real.
    m, off = np.asarray(pair.truth["matrix"]), np.asarray(pair.truth["offset"])
    rows, cols = np.indices(hr.shape, dtype=float)
    affine = np.tensordot(m, np.stack([rows, cols]), axes=1) + off[:, None, None]
    resid = np.sqrt(((affine - exact) ** 2).sum(0))
    assert 0.01 < resid.mean() < 1.5
    assert _ncc(interpolate(lr, affine), hr) > good - 0.05


def test_scans_are_independent_physical_acquisitions(pair):
    t = pair.truth
    lr_s, hr_s = t["lr_scan"], t["hr_scan"]
    for key in ("dose", "gain", "gamma", "offset"):
        assert lr_s[key] != hr_s[key]
    assert not np.allclose(lr_s["drift"], 0) and not np.allclose(hr_s["drift"], 0)


def test_gt_is_noise_free_hr_rendering_of_whole_field(pair):
    gt = pair.gt
    assert gt.dtype == np.float32 and 0.0 <= gt.min() and gt.max() <= 1.0
    # Area-mean of the SR-grid truth lines up with the LR scan (up to drift and blur).
    binned = gt.reshape(gt.shape[0] // 2, 2, gt.shape[1] // 2, 2).mean((1, 3))
    assert _ncc(binned, pair.lr.astype(np.float32)) > 0.7
    # Noise-free: much smoother than the LR scan at the pixel level.
    lap = lambda x: np.std(ndi.laplace(x.astype(np.float64)))  # noqa: E731
    assert lap(binned) < 0.5 * lap(pair.lr / 255.0)


def test_seeded_and_deterministic(specimen):
    a = simulate_pair(specimen, seed=11, lr_shape=(96, 128))
    b = simulate_pair(specimen, seed=11, lr_shape=(96, 128))
    c = simulate_pair(specimen, seed=12, lr_shape=(96, 128))
    assert np.array_equal(a.lr, b.lr) and np.array_equal(a.hr, b.hr) and a.truth == b.truth
    assert not np.array_equal(a.lr, c.lr)


def test_builtin_specimen_and_save(tmp_path):
    p = simulate_pair(seed=0, lr_shape=(120, 160))
    assert p.lr.shape == (120, 160) and p.lr.std() > 5
    save_pair(p, tmp_path / "pair")
    truth = json.loads((tmp_path / "pair" / "truth.json").read_text())
    assert truth["matrix"] == p.truth["matrix"]
    with pytest.raises(FileExistsError, match=r"lr\.tif"):
        save_pair(p, tmp_path / "pair")


def test_specimen_too_small_is_an_error(specimen):
    with pytest.raises(ValueError, match="covers at most"):
        simulate_pair(specimen, lr_shape=(1000, 1000))
