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


def _bin(gt: np.ndarray, z: int) -> np.ndarray:
    return gt.reshape(gt.shape[0] // z, z, gt.shape[1] // z, z).mean((1, 3))


@pytest.mark.parametrize("zoom", [3, 4])
def test_zoom_3_and_4_pairs_and_gt_grid(zoom, tmp_path):
    p = simulate_pair(lr_shape=(64, 80), seed=zoom, zoom=zoom)
    t = p.truth
    assert p.gt.shape == (64 * zoom, 80 * zoom)
    assert p.hr.shape == (round(32 * zoom), round(40 * zoom))  # 25 % of the field at zoom× density
    # The affine truth includes the scans' drift, which is large against so small a field.
    assert abs(t["zoom"] / zoom - 1) < 0.05
    # The SR-grid truth, binned back to LR pixels, lines up with the LR scan.
    assert _ncc(_bin(p.gt, zoom), p.lr.astype(np.float32)) > 0.7
    # The pixel sizes written with the images give the zoom back, and gt is on the SR grid.
    from pairsr.io import read_image

    save_pair(p, tmp_path)
    px = {n: read_image(tmp_path / f"{n}.tif").attrs["pixel_size_nm"] for n in ("lr", "hr", "gt")}
    assert round(px["lr"] / px["hr"]) == zoom and abs(px["lr"] / px["hr"] / zoom - 1) < 0.006
    assert px["gt"] == pytest.approx(px["lr"] / zoom)


def test_explicit_keywords_change_only_what_they_name():
    base = simulate_pair(lr_shape=(80, 100), seed=4)
    other = simulate_pair(lr_shape=(80, 100), seed=4, rotation_deg=-6.5, hr_dose=3.0,
                          hr_gamma=1.6)
    assert other.truth["hr_scan"]["rotation_deg"] == -6.5
    # The LR scan is untouched by the HR's keywords; the HR follows them.
    assert np.array_equal(base.lr, other.lr)
    assert other.truth["hr_scan"]["dose"] == 3.0 and other.truth["hr_scan"]["gamma"] == 1.6
    assert not np.array_equal(base.hr, other.hr)
    # A lower dose is a noisier scan.
    lap = lambda x: np.std(ndi.laplace(x.astype(np.float64)))  # noqa: E731
    low = simulate_pair(lr_shape=(80, 100), seed=4, lr_dose=2.0)
    assert lap(low.lr) > 1.5 * lap(base.lr)
    sized = simulate_pair(lr_shape=(80, 100), seed=4, hr_shape=(50, 70))
    assert sized.hr.shape == (50, 70)


def test_inverted_detectors(specimen):
    normal = simulate_pair(specimen, lr_shape=(96, 128), seed=6)
    lr_inv = simulate_pair(specimen, lr_shape=(96, 128), seed=6, lr_inverted=True)
    hr_inv = simulate_pair(specimen, lr_shape=(96, 128), seed=6, hr_inverted=True)
    lr = lambda p: p.lr.astype(np.float32)  # noqa: E731
    assert _ncc(_bin(normal.gt, 2), lr(normal)) > 0.7
    # gt is rendered with the HR detector: an inverted LR (e.g. TSEM vs SE) anti-correlates with
    # it, an inverted HR inverts gt and the HR scan itself.
    assert _ncc(_bin(lr_inv.gt, 2), lr(lr_inv)) < -0.7
    assert _ncc(_bin(hr_inv.gt, 2), lr(hr_inv)) < -0.7
    assert _ncc(interpolate(lr(hr_inv), true_lr_coords(hr_inv.truth)), hr_inv.hr) < -0.5
    assert lr_inv.truth["lr_scan"]["inverted"] and not lr_inv.truth["hr_scan"]["inverted"]


@pytest.mark.parametrize("inside", [0.4, 0.8])
def test_hr_partly_outside_the_lr_field(inside):
    p = simulate_pair(lr_shape=(80, 100), seed=2, hr_inside=inside)
    c = true_lr_coords(p.truth)
    frac = np.mean((c[0] > -0.5) & (c[0] < 79.5) & (c[1] > -0.5) & (c[1] < 99.5))
    assert abs(frac - inside) < 0.03 and abs(p.truth["hr_inside"] - inside) < 0.01
    # The specimen extends beyond the LR field: the overhanging HR shows structure, not an edge
    # smeared out.
    outside = ~((c[0] > -0.5) & (c[0] < 79.5) & (c[1] > -0.5) & (c[1] < 99.5))
    assert p.hr[outside].std() > 0.5 * p.hr[~outside].std()
    # An HR too large to fit is centred on the field rather than refused.
    big = simulate_pair(lr_shape=(80, 100), seed=2, hr_fraction=1.0, rotation_deg=5.0)
    assert big.hr.shape == (160, 200) and 0.85 < big.truth["hr_inside"] < 1.0


@pytest.mark.parametrize("kw", [{"hr_fraction": 1.0, "rotation_deg": 7.0, "zoom": 3},
                                {"hr_inside": 0.4}, {"hr_inside": 0.6, "hr_shape": (200, 200)}])
def test_a_real_specimen_holds_the_overhanging_hr(specimen, kw):
    """The LR field shrinks so that the part of the HR outside it is still on the specimen."""
    from pairsr.simulate import _scan_positions

    p = simulate_pair(specimen, seed=1, **kw)
    x = _scan_positions(p.truth["hr_scan"], p.hr.shape)
    assert x.min() >= 0 and x[0].max() <= specimen.shape[0] - 1
    assert x[1].max() <= specimen.shape[1] - 1
    assert p.truth["hr_inside"] < 0.99


def _period_ncc(image: np.ndarray, exclude: float = 6) -> float:
    """NCC of an image with itself shifted by its strongest period (the highest autocorrelation
    peak farther than ``exclude`` px from zero shift), over the overlap."""
    a = image - image.mean()
    ac = np.fft.fftshift(np.real(np.fft.ifft2(np.abs(np.fft.fft2(a)) ** 2)))
    centre = np.array(ac.shape) // 2
    yy, xx = np.indices(ac.shape) - centre[:, None, None]
    ac[(np.hypot(yy, xx) < exclude) | (np.abs(yy) > image.shape[0] // 4)
       | (np.abs(xx) > image.shape[1] // 4)] = -np.inf
    dy, dx = np.unravel_index(np.argmax(ac), ac.shape) - centre
    h, w = image.shape
    one = image[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
    two = image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return _ncc(one, two, smooth=0.0)


def test_lattice_specimens_are_periodic_and_the_defects_break_the_period():
    from pairsr.simulate import builtin_specimen

    shape = (256, 256)
    for seed in range(3):
        perfect = builtin_specimen("lattice-perfect", shape, np.random.default_rng(seed), 2.0)
        defect = builtin_specimen("lattice", shape, np.random.default_rng(seed), 2.0)
        assert perfect.dtype == np.float32 and 0 <= perfect.min() and perfect.max() <= 1
        # One period away, the perfect lattice repeats itself (up to the integer shift); the
        # precipitate, vacancies and thickness gradient make the real one less self-similar.
        p, d = _period_ncc(perfect), _period_ncc(defect)
        assert p > 0.96 and d < p - 0.03, (seed, p, d)
    with pytest.raises(ValueError, match="unknown built-in specimen"):
        simulate_pair("graphene", lr_shape=(64, 64))


def test_lattice_pair_round_trip():
    p = simulate_pair("lattice", lr_shape=(96, 128), seed=1, zoom=3, rotation_deg=4.0)
    assert p.gt.shape == (288, 384)
    good = _ncc(interpolate(p.lr.astype(np.float32), true_lr_coords(p.truth)), p.hr)
    assert good > 0.5


def test_draw_acquisition_within_ranges_and_seeded():
    from pairsr.simulate import WIDE_RANGES, default_scale, draw_acquisition

    a = draw_acquisition(np.random.default_rng(3), lr_max=256)
    assert a == draw_acquisition(np.random.default_rng(3), lr_max=256)
    rng = np.random.default_rng(0)
    for _ in range(40):
        kw = draw_acquisition(rng, lr_max=512)
        assert kw["zoom"] in WIDE_RANGES["zoom"]
        assert 128 <= max(kw["lr_shape"]) <= 512
        assert abs(kw["rotation_deg"]) <= WIDE_RANGES["rotation_deg"]
        for key in ("lr_dose", "hr_dose"):
            assert WIDE_RANGES["dose"][0] <= kw[key] <= WIDE_RANGES["dose"][1]
        for key in ("lr_gamma", "hr_gamma"):
            assert WIDE_RANGES["gamma"][0] <= kw[key] <= WIDE_RANGES["gamma"][1]
        assert not (kw["lr_inverted"] and kw["hr_inverted"])
        fraction = np.prod(kw["hr_shape"]) / kw["zoom"] ** 2 / np.prod(kw["lr_shape"])
        assert 0.09 <= fraction <= 1.0
    # The drawn HR fits inside the LR field; a real specimen bounds the LR field.
    kw = draw_acquisition(np.random.default_rng(5), lr_max=160)
    assert simulate_pair(seed=5, **kw).truth["hr_inside"] == 1.0
    kw = draw_acquisition(np.random.default_rng(5), specimen_shape=(300, 420))
    scale = default_scale((300, 420), kw["zoom"])
    assert all(n <= (m - 32) / scale for n, m in zip(kw["lr_shape"], (300, 420)))
    simulate_pair(np.zeros((300, 420), np.float32), seed=5, **kw)  # the specimen covers it
    with pytest.raises(ValueError, match="unknown acquisition"):
        draw_acquisition(rng, vary=("dwell",))


def test_small_specimen_gives_a_pair_inside_the_field():
    rng = np.random.default_rng(1)
    small = ndi.gaussian_filter(rng.standard_normal((300, 300)), 3.0).astype(np.float32)
    small = (small - small.min()) / np.ptp(small)
    for zoom in (2, 4):
        # At x4 the default scale (4 specimen px per LR px) would leave a 67-px LR field; the
        # simulator lowers it to keep MIN_LR_SIDE px, so the HR covers 64 LR px at 25 %.
        p = simulate_pair(small, seed=0, zoom=zoom)
        assert min(p.lr.shape) >= 128 and min(p.hr.shape) >= 128 * 0.5 * zoom
        assert p.truth["hr_inside"] == 1.0 and p.gt.shape == (p.lr.shape[0] * zoom,
                                                              p.lr.shape[1] * zoom)
        c = true_lr_coords(p.truth)
        assert c.min() > 0 and c[0].max() < p.lr.shape[0] - 1 and c[1].max() < p.lr.shape[1] - 1
    with pytest.raises(ValueError, match=r"at least 1\.5"):
        simulate_pair(small, zoom=1.2)
    p = simulate_pair(small, seed=0, zoom=2.4)  # a fractional ratio: gt on the nearest grid, ×2
    assert p.gt.shape == (2 * p.lr.shape[0], 2 * p.lr.shape[1])


def test_gt_drift_follows_the_lr_scan(specimen):
    """With ``gt_drift`` the SR-grid truth samples where the LR scan did: it lines up with the LR
    better than the drift-free one, and nothing else changes."""
    plain = simulate_pair(specimen, seed=8, lr_shape=(96, 128))
    drift = simulate_pair(specimen, seed=8, lr_shape=(96, 128), gt_drift=True)
    assert np.array_equal(plain.lr, drift.lr) and np.array_equal(plain.hr, drift.hr)
    assert not np.allclose(plain.gt, drift.gt)
    lr = drift.lr.astype(np.float32)
    assert _ncc(_bin(drift.gt, 2), lr, smooth=0.5) > _ncc(_bin(plain.gt, 2), lr, smooth=0.5)
