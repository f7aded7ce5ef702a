"""Tests of pairsr.register: accuracy against known mappings, invariances, round trips, the SR-grid
warp, dask tiling, persistence, the figure, and every failure mode."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from skimage.feature import match_template

from pairsr.grid import interpolate
from pairsr.register import (
    Registration,
    RegistrationError,
    _angle_peaks,
    _ncc_maps,
    plot_registration,
    register_pair,
    warp_hr_to_sr,
)
from pairsr.simulate import simulate_pair, true_lr_coords

SCALE = 4.0  # specimen pixels per LR pixel in the exact pairs below


def _rotation(deg):
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def _specimen(shape, seed):
    """Smooth random texture with soft blobs, float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    tex = ndi.gaussian_filter(rng.standard_normal(shape), 6.0)
    spec = 0.5 + 0.25 * tex / tex.std()
    yy, xx = np.indices(shape)
    for y, x, r in rng.uniform((0, 0, 6), (*shape, 20), (60, 3)):
        spec += 0.3 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * r**2))
    return np.clip(spec, 0, 1).astype(np.float32)


def _pair(spec, *, zoom=2.0, angle=0.0, origin=(30.0, 40.0), shape=(128, 160), noise=0.02,
          seed=0):
    """An LR scan and an HR scan of ``spec`` with an exactly known HR→LR affine and no drift.

    The LR is blurrier; the HR has its own gain, offset and gamma. Returns lr, hr, matrix, offset.
    """
    rng = np.random.default_rng(seed)
    matrix, offset = _rotation(angle) / zoom, np.asarray(origin, float)
    lr = interpolate(ndi.gaussian_filter(spec, 0.9 * SCALE), SCALE * np.indices(shape, dtype=float))
    lr_of_hr = np.tensordot(matrix, np.indices(shape, dtype=float), axes=1) + offset[:, None, None]
    hr = interpolate(ndi.gaussian_filter(spec, 0.5 * SCALE / zoom), SCALE * lr_of_hr)
    hr = 0.8 * np.clip(hr, 0, None) ** 0.8 + 0.1
    lr, hr = (im + noise * rng.standard_normal(im.shape) for im in (lr, hr))
    return lr.astype(np.float32), hr.astype(np.float32), matrix, offset


def _corner_errors(reg, matrix, offset):
    """Distances (LR px) between ``reg``'s footprint corners and those of the true affine."""
    h, w = reg.hr_shape
    corners = np.array([[-0.5, -0.5], [-0.5, w - 0.5], [h - 0.5, w - 0.5], [h - 0.5, -0.5]]).T
    return np.hypot(*(reg.footprint.T - (matrix @ corners + np.asarray(offset)[:, None])))


@pytest.fixture(scope="module")
def spec():
    return _specimen((600, 700), seed=1)


@pytest.fixture(scope="module")
def simulated():
    """A small physical pair from the simulator (drift, independent noise, gain, gamma)."""
    pair = simulate_pair(seed=1, lr_shape=(360, 480))
    return pair, register_pair(pair.lr, pair.hr)


# --- accuracy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("zoom", "angle"), [(2.02, 1.3), (1.945, -4.5), (2.055, 4.5)])
def test_exact_pair_with_rotation_and_zoom_error(spec, zoom, angle):
    """Up to the edges of the accepted ranges (zoom ±3 %, rotation ±5°), found with no hint."""
    lr, hr, matrix, offset = _pair(spec, zoom=zoom, angle=angle)
    reg = register_pair(lr, hr, local=False)
    assert _corner_errors(reg, matrix, offset).max() < 0.05
    assert abs(reg.rotation_deg - angle) < 0.02
    assert abs(reg.zoom / zoom - 1) < 1e-3
    assert reg.ncc > 0.9 and reg.peak_ratio > 2 and reg.fit_ncc > 0.9
    assert reg.inside_fraction == 1.0 and not reg.inverted


def test_simulated_pair_within_tolerances(simulated):
    pair, reg = simulated
    t = pair.truth
    errors = _corner_errors(reg, np.asarray(t["matrix"]), t["offset"])
    assert errors.mean() < 0.1 and errors.max() < 0.2
    assert abs(reg.rotation_deg - t["rotation_deg"]) < 0.05
    assert abs(reg.zoom / t["zoom"] - 1) < 2e-3
    # Local field: the whole correspondence (drift included), in HR px, everywhere.
    h, w = pair.hr.shape
    est = reg.hr_to_lr(np.indices((h, w), dtype=float))
    err = np.tensordot(np.linalg.inv(reg.matrix), est - true_lr_coords(t), axes=1)
    assert np.sqrt((err**2).sum(0).mean()) < 0.3
    assert reg.disp.shape == (2, h, w) and reg.rms_displacement > 0.05
    assert 0 < reg.patches_accepted <= reg.patches_tried
    # The field holds no affine part: that belongs to the matrix (least-squares affine).
    rows, cols = np.indices((h, w))
    design = np.stack([rows.ravel(), cols.ravel(), np.ones(h * w)], 1)
    coef, *_ = np.linalg.lstsq(design, reg.disp.reshape(2, -1).T, rcond=None)
    assert np.abs(design @ coef).max() < 1e-3


@pytest.mark.parametrize("which", ["lr", "hr"])
def test_invariant_to_gain_and_offset(simulated, which):
    pair, reg = simulated
    images = {"lr": pair.lr / 255.0, "hr": pair.hr / 255.0}
    images[which] = 0.45 * images[which] + 0.3
    other = register_pair(images["lr"], images["hr"])
    assert np.abs(other.footprint - reg.footprint).max() < 1e-3
    assert np.abs(other.disp - reg.disp).max() < 1e-3
    assert other.patches_accepted == reg.patches_accepted
    assert other.ncc == pytest.approx(reg.ncc, abs=1e-4)


# --- mapping algebra --------------------------------------------------------------------------


def test_round_trip_with_local_field():
    h, w = 60, 80
    rows, cols = np.indices((h, w), dtype=float)
    disp = np.stack([1.5 * np.sin(rows / 9.0) + 0.2 * cols / w,
                     0.8 * np.cos(rows / 7.0 + cols / 30)])
    reg = Registration(0.5 * _rotation(2.0), [10.0, 20.0], (100, 120), (h, w), disp=disp)
    rng = np.random.default_rng(0)
    hr_pts = rng.uniform((0, 0), (h - 1, w - 1), (500, 2)).T
    lr_pts = reg.hr_to_lr(hr_pts)
    assert np.abs(reg.lr_to_hr(lr_pts) - hr_pts).max() < 1e-4
    assert np.abs(reg.hr_to_lr(reg.lr_to_hr(lr_pts)) - lr_pts).max() < 1e-4
    # The field moves points by what it says (at pixel centres, where no interpolation is needed).
    at = np.array([[30], [40]], float)
    assert reg.hr_to_lr(at)[:, 0] == pytest.approx(
        reg.matrix @ (at[:, 0] + disp[:, 30, 40]) + reg.offset)
    assert np.allclose(reg.hr_to_lr(at, local=False)[:, 0], reg.matrix @ at[:, 0] + reg.offset)


def test_save_and_load(simulated, tmp_path):
    _, reg = simulated
    path = reg.save(tmp_path / "reg.json")
    assert (tmp_path / "reg_disp.npy").is_file()
    back = Registration.load(path)
    assert np.array_equal(back.matrix, reg.matrix) and np.array_equal(back.offset, reg.offset)
    assert np.array_equal(back.disp, reg.disp)
    assert (back.lr_shape, back.hr_shape, back.ncc, back.patches_accepted) == (
        reg.lr_shape, reg.hr_shape, reg.ncc, reg.patches_accepted)
    assert np.allclose(back.footprint, reg.footprint)


def test_disp_shape_is_checked():
    with pytest.raises(ValueError, match="disp must have shape"):
        Registration(np.eye(2) / 2, [0, 0], (50, 50), (40, 40), disp=np.zeros((2, 40, 41)))


# --- the SR-grid training target --------------------------------------------------------------


def test_warp_reproduces_hr_on_pure_x2_pair(spec):
    field = spec[:200, :240]
    lr = field.reshape(100, 2, 120, 2).mean((1, 3))  # ×2 area binning: SR pixel p = field pixel p
    a, b, h, w = 30, 40, 96, 112
    hr = field[2 * a : 2 * a + h, 2 * b : 2 * b + w]
    exact = Registration(np.eye(2) / 2, [a - 0.25, b - 0.25], lr.shape, hr.shape)
    sr = warp_hr_to_sr(hr, exact)
    assert sr.shape == (200, 240) and sr.dtype == np.float32
    np.testing.assert_allclose(sr[2 * a : 2 * a + h, 2 * b : 2 * b + w], hr, atol=1e-5)
    inside = np.zeros(sr.shape, bool)
    inside[2 * a : 2 * a + h, 2 * b : 2 * b + w] = True
    assert np.isnan(sr[~inside]).all()
    # Registration finds that mapping, so its warp reproduces the HR too.
    reg = register_pair(lr, hr, local=False)
    assert np.abs(reg.matrix - np.eye(2) / 2).max() < 1e-3
    assert np.abs(reg.offset - [a - 0.25, b - 0.25]).max() < 0.02
    found = warp_hr_to_sr(hr, reg)[2 * a + 2 : 2 * a + h - 2, 2 * b + 2 : 2 * b + w - 2]
    assert np.abs(found - hr[2:-2, 2:-2]).mean() < 0.01 * hr.std()


# --- dask -------------------------------------------------------------------------------------


def test_chunked_dask_hr_gives_the_same_registration(simulated):
    da = pytest.importorskip("dask.array")
    pair, reg = simulated
    lazy = da.from_array(pair.hr, chunks=(pair.hr.shape[0] // 2 + 7, pair.hr.shape[1] // 3))
    tiled = register_pair(pair.lr, lazy)
    assert np.abs(tiled.footprint - reg.footprint).max() < 1e-6
    assert np.abs(tiled.disp - reg.disp).max() < 1e-4
    assert (tiled.patches_tried, tiled.patches_accepted) == (reg.patches_tried,
                                                             reg.patches_accepted)


def test_coarse_search_as_dask_tasks_finds_the_same_match(spec, monkeypatch):
    """The angles of the coarse search run as dask tasks on large images: same result."""
    import pairsr.register as register

    lr, hr, _, _ = _pair(spec, zoom=2.02, angle=1.3)
    serial = register_pair(lr, hr, local=False)
    calls = []
    monkeypatch.setattr(register, "PARALLEL_SEARCH_PIXELS", 0)
    monkeypatch.setattr(register, "_angle_peaks",
                        lambda *a: calls.append(a[2]) or _angle_peaks(*a))  # fmt: skip
    parallel = register_pair(lr, hr, local=False)
    assert len(calls) > 3  # every angle went through the dask path
    assert parallel.to_dict() == serial.to_dict()


# --- helpers and figure -----------------------------------------------------------------------


def test_batched_ncc_equals_skimage_match_template():
    rng = np.random.default_rng(0)
    search = rng.random((3, 40, 40)).astype(np.float32)
    tmpl = rng.random((3, 28, 28)).astype(np.float32)
    tmpl[1] = 2 * search[1, 5:33, 7:35] + 1
    maps = _ncc_maps(search, tmpl)
    for s, t, m in zip(search, tmpl, maps):
        np.testing.assert_allclose(m, match_template(s, t), atol=1e-5)
    assert np.unravel_index(maps[1].argmax(), maps[1].shape) == (5, 7)
    assert maps[1].max() == pytest.approx(1.0, abs=1e-5)


def test_plot_registration(simulated, tmp_path):
    pair, reg = simulated
    path = plot_registration(pair.lr, pair.hr, reg, tmp_path / "reg.png")
    rgb = np.asarray(Image.open(path))
    assert rgb.shape[0] == pair.lr.shape[0] and rgb.shape[2] == 3
    red = (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)
    yellow = (rgb[..., 0] == 255) & (rgb[..., 1] == 255) & (rgb[..., 2] == 0)
    assert red[:, : pair.lr.shape[1]].sum() > 200  # the footprint's outline
    assert yellow[:, pair.lr.shape[1] :].sum() > 50  # the displacement arrows


# --- failure modes ----------------------------------------------------------------------------


def test_hr_from_another_field_is_not_found(spec):
    lr, _, _, _ = _pair(spec)
    _, hr, _, _ = _pair(_specimen((600, 700), seed=2))
    with pytest.raises(RegistrationError, match="not found"):
        register_pair(lr, hr)


@pytest.mark.parametrize("which", ["LR", "HR"])
def test_textureless_image(spec, which):
    lr, hr, _, _ = _pair(spec)
    flat = (0.4 + 0.02 * np.random.default_rng(3).standard_normal(lr.shape)).astype(np.float32)
    with pytest.raises(RegistrationError, match=f"{which} image is textureless"):
        register_pair(flat if which == "LR" else lr, flat if which == "HR" else hr)


def test_zoom_outside_accepted_range(spec):
    lr, hr, _, _ = _pair(spec, zoom=2.16)
    with pytest.raises(RegistrationError, match=r"zoom 2\.16.* outside the accepted range"):
        register_pair(lr, hr, zoom=2.0)
    assert register_pair(lr, hr, zoom=2.0, zoom_tolerance=0.1, local=False).zoom == (
        pytest.approx(2.16, rel=1e-3))


def test_rotation_beyond_search_range(spec):
    lr, hr, matrix, offset = _pair(spec, angle=8.0)
    with pytest.raises(RegistrationError, match="edge of the rotation search range"):
        register_pair(lr, hr, max_rotation_deg=5.0)
    reg = register_pair(lr, hr, max_rotation_deg=10.0, local=False)
    assert _corner_errors(reg, matrix, offset).max() < 0.05


def test_hr_partly_outside_warns_with_inside_fraction(spec):
    lr, hr, matrix, offset = _pair(spec, origin=(-20.0, 40.0))  # HR rows span 64 LR rows
    with pytest.warns(UserWarning, match="lies outside the LR image"):
        reg = register_pair(lr, hr, local=False)
    assert reg.inside_fraction == pytest.approx(1 - 19.75 / 64, abs=0.02)
    assert _corner_errors(reg, matrix, offset).max() < 0.05


def test_hr_mostly_outside_is_an_error(spec):
    lr, hr, _, _ = _pair(spec, origin=(-40.0, 40.0))
    with pytest.raises(RegistrationError, match=r"only 3\d % of the HR image lies inside"):
        register_pair(lr, hr)


def test_inverted_contrast(spec):
    lr, hr, matrix, offset = _pair(spec, angle=-0.7)
    with pytest.raises(RegistrationError, match="contrast seems inverted"):
        register_pair(lr, 1.0 - hr)
    reg = register_pair(lr, 1.0 - hr, allow_inversion=True, local=False)
    assert reg.inverted
    assert _corner_errors(reg, matrix, offset).max() < 0.05


def test_bad_arguments(spec):
    lr, hr, _, _ = _pair(spec)
    with pytest.raises(ValueError, match="hr must be a 2-D image"):
        register_pair(lr, hr[None])
    with pytest.raises(ValueError, match="zoom must be positive"):
        register_pair(lr, hr, zoom=0)


def test_scan_line_knots_without_patches_do_not_break_the_local_fit():
    """Regression: this pair left spline knots unconstrained (a singular normal matrix)."""
    sim = simulate_pair(seed=1, lr_shape=(472, 640))
    reg = register_pair(sim.lr, sim.hr)
    err = reg.hr_to_lr(np.indices(sim.hr.shape, dtype=float)) - true_lr_coords(sim.truth)
    assert np.sqrt((err**2).sum(0).mean()) < 0.15
