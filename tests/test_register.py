"""Tests of pairsr.register: accuracy against known mappings, invariances, round trips, the SR-grid
warp, dask tiling, persistence, the figure, the hard cases (smooth or noisy, periodic, inverted,
rotated, small, ×3/×4 pairs), and every refusal."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from skimage.feature import match_template
from skimage.util import img_as_float32

from pairsr.grid import interpolate
from pairsr.region import Region
from pairsr.register import (
    Registration,
    RegistrationError,
    footprint_region,
    plot_registration,
    register_pair,
    warp_hr_to_sr,
)
from pairsr.register._global import _angle_peaks, _levels, _refine
from pairsr.register._images import _decimate, _reduce, _Window
from pairsr.register._local import _ncc_maps
from pairsr.simulate import simulate_pair, true_lr_coords

SCALE = 4.0  # specimen pixels per LR pixel in the exact pairs below
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def _real(name: str) -> np.ndarray:
    """A real micrograph from ../shared/data/real as float32 in [0, 1] (min-max stretched)."""
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (real EM data: see ../shared/data/real/SOURCES.md)")
    image = img_as_float32(np.array(Image.open(path).convert("L") if path.suffix == ".png"
                                    else Image.open(path)))
    return (image - image.min()) / (image.max() - image.min())


def _sim_corner_error(pair, reg):
    """Mean distance (LR px) of ``reg``'s footprint corners from the simulator's truth."""
    t = pair.truth
    return _corner_errors(reg, np.asarray(t["matrix"]), t["offset"]).mean()


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
    """Up to the edge of the accepted zoom range (±3 %), rotated, found with no hint."""
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
    assert reg.local_field is not None and reg.rms_displacement > 0.05
    assert 0 < reg.patches_accepted <= reg.patches_tried
    # The field holds no affine part: that belongs to the matrix (least-squares affine).
    rows, cols = np.indices((h, w))
    design = np.stack([rows.ravel(), cols.ravel(), np.ones(h * w)], 1)
    coef, *_ = np.linalg.lstsq(design, reg.displacement().reshape(2, -1).T, rcond=None)
    assert np.abs(design @ coef).max() < 1e-3


@pytest.mark.parametrize("which", ["lr", "hr"])
def test_invariant_to_gain_and_offset(simulated, which):
    pair, reg = simulated
    images = {"lr": pair.lr / 255.0, "hr": pair.hr / 255.0}
    images[which] = 0.45 * images[which] + 0.3
    other = register_pair(images["lr"], images["hr"])
    assert np.abs(other.footprint - reg.footprint).max() < 1e-3
    assert np.abs(other.displacement() - reg.displacement()).max() < 1e-3
    assert other.patches_accepted == reg.patches_accepted
    assert other.ncc == pytest.approx(reg.ncc, abs=1e-4)


# --- mapping algebra --------------------------------------------------------------------------


def _wavy_model(hr_shape, matrix, offset):
    """A scan-line field model (HR-row and LR-row splines) and known coefficients (K, 2)."""
    from pairsr.register._field import _ScanLineField

    model = _ScanLineField(matrix, np.asarray(offset, float), hr_shape, 100, 6)
    t = np.arange(model.n_coef)
    return model, np.stack([1.5 * np.sin(t / 1.3), 0.8 * np.cos(t / 1.7)], 1)


def _wavy_field(hr_shape, matrix, offset):
    """A scan-line field of known coefficients with an affine part."""
    model, coef = _wavy_model(hr_shape, matrix, offset)
    return model.field(coef, linear=[[0.0, 0.004], [-0.002, 0.0]], shift=[0.1, -0.2])


def test_round_trip_with_local_field():
    h, w = 60, 80
    matrix, offset = 0.5 * _rotation(2.0), [10.0, 20.0]
    field = _wavy_field((h, w), matrix, offset)
    reg = Registration(matrix, offset, (100, 120), (h, w), local_field=field)
    rng = np.random.default_rng(0)
    hr_pts = rng.uniform((0, 0), (h - 1, w - 1), (500, 2)).T
    lr_pts = reg.hr_to_lr(hr_pts)
    assert np.abs(reg.lr_to_hr(lr_pts) - hr_pts).max() < 1e-4
    assert np.abs(reg.hr_to_lr(reg.lr_to_hr(lr_pts)) - lr_pts).max() < 1e-4
    # The field moves points by what it says, its dense form holds the same values.
    at = np.array([[30], [40]], float)
    assert reg.hr_to_lr(at)[:, 0] == pytest.approx(reg.matrix @ (at[:, 0] + field(at)[:, 0])
                                                   + reg.offset)
    assert reg.displacement()[:, 30, 40] == pytest.approx(field(at)[:, 0], abs=1e-6)
    assert np.array_equal(reg.displacement(slice(20, 40), slice(5, 70, 3)),
                          reg.displacement()[:, 20:40, 5:70:3])
    assert np.allclose(reg.hr_to_lr(at, local=False)[:, 0], reg.matrix @ at[:, 0] + reg.offset)
    # Re-expressed against another affine, the whole mapping is unchanged.
    other = 1.01 * matrix, np.add(offset, [0.3, -0.4])
    moved = Registration(*other, (100, 120), (h, w),
                         local_field=field.reexpressed(matrix, np.array(offset), *other))
    assert np.abs(moved.hr_to_lr(hr_pts) - lr_pts).max() < 1e-9
    # The field is bounded where it is extrapolated (constant splines beyond the HR).
    far = np.array([[-5000.0, 4000.0], [9000.0, -3000.0]])
    assert np.all(np.isfinite(reg.lr_to_hr(reg.hr_to_lr(far))))


def test_field_design_matches_its_evaluation_beyond_the_hr():
    # The image fit's Gauss-Newton steps can move an HR coordinate past the splines' base
    # interval; the design must then extrapolate as the field does (constant), not raise.
    h, w = 60, 80
    model, coef = _wavy_model((h, w), 0.5 * _rotation(2.0), [10.0, 20.0])
    coords = np.array([[-9.0, -1.0, 0.0, 30.5, h - 1.0, h + 1.0, h + 9.0],
                       [-7.0, 0.0, 40.0, 79.0, w + 3.0, -4.0, 40.0]])
    assert np.allclose(model.design(coords) @ coef, model.field(coef)(coords).T, atol=1e-12)
    # Beyond the base interval the HR-row spline is constant: rows -9 and -1 see the same term.
    hr_row = model.terms(coef)[0]
    assert np.allclose(hr_row(coords[:, :1]), hr_row(coords[:, 1:2]))


def test_save_and_load(simulated, tmp_path):
    _, reg = simulated
    path = reg.save(tmp_path / "reg.json")
    assert [p.name for p in tmp_path.iterdir()] == ["reg.json"]  # the field is in the JSON
    assert len(reg.to_dict()["local_field"]["terms"]) == 2
    back = Registration.load(path)
    assert np.array_equal(back.matrix, reg.matrix) and np.array_equal(back.offset, reg.offset)
    assert (back.lr_shape, back.hr_shape, back.ncc, back.patches_accepted) == (
        reg.lr_shape, reg.hr_shape, reg.ncc, reg.patches_accepted)
    assert np.allclose(back.footprint, reg.footprint)
    grid = np.indices(reg.hr_shape, dtype=float)[:, ::7, ::5] + 0.3
    assert np.abs(back.hr_to_lr(grid) - reg.hr_to_lr(grid)).max() < 1e-6
    lr_pts = np.indices(reg.lr_shape, dtype=float)[:, 100:200:9, 150:300:11]
    assert np.abs(back.lr_to_hr(lr_pts) - reg.lr_to_hr(lr_pts)).max() < 1e-6


def test_old_record_with_a_dense_field_is_converted(simulated, tmp_path):
    """A reg.json of an older pairsr (field in reg_disp.npy, float32 on every HR pixel) loads,
    its field converted to coefficients; a missing .npy is named."""
    _, reg = simulated
    record = reg.to_dict()
    del record["local_field"]
    record["disp_file"] = "reg_disp.npy"
    (tmp_path / "reg.json").write_text(json.dumps(record))
    with pytest.raises(FileNotFoundError, match=r"reg_disp\.npy, which is missing"):
        Registration.load(tmp_path / "reg.json")
    np.save(tmp_path / "reg_disp.npy", reg.displacement())
    with pytest.warns(UserWarning, match=r"converted the dense local field of reg_disp\.npy"):
        back = Registration.load(tmp_path / "reg.json")
    grid = np.indices(reg.hr_shape, dtype=float)
    assert np.abs(back.hr_to_lr(grid) - reg.hr_to_lr(grid)).max() < 1e-3
    # A dense field of another form is refused, not approximated.
    np.save(tmp_path / "reg_disp.npy", np.random.default_rng(0).normal(
        size=(2, *reg.hr_shape)).astype(np.float32))
    with pytest.raises(ValueError, match="scan-line spline form"):
        Registration.load(tmp_path / "reg.json")


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


def test_region_warp_equals_the_full_warp_cropped(simulated):
    pair, reg = simulated
    full = warp_hr_to_sr(pair.hr, reg)
    window = footprint_region(reg).intersect(Region.of(reg.lr_shape))  # LR px
    np.testing.assert_array_equal(warp_hr_to_sr(pair.hr, reg, region=window),
                                  window.sr(2).crop(full))
    box = footprint_region(reg, 2).intersect(Region.of(full.shape))  # SR px
    outside = np.ones(full.shape, bool)
    outside[box.slices] = False
    assert np.isnan(full[outside]).all() and np.isfinite(box.crop(full)).mean() > 0.9
    # Any region, even one reaching beyond the field, without the local field too.
    region = Region(-3, 200, 150, 300)
    part = warp_hr_to_sr(pair.hr, reg, region=region, local=False)
    padded = np.pad(warp_hr_to_sr(pair.hr, reg, local=False), ((6, 0), (0, 200)),
                    constant_values=np.nan)
    np.testing.assert_array_equal(part, padded[:300, 400:1000])


# --- dask -------------------------------------------------------------------------------------


def _refuse(*args, **kwargs):
    raise AssertionError("registration used the ambient dask scheduler")


def test_chunked_dask_hr_gives_the_same_registration(simulated):
    """A dask HR is read and searched chunk by chunk on registration's own threads, never on
    the ambient scheduler (here one that refuses), with the same result."""
    dask = pytest.importorskip("dask")
    da = pytest.importorskip("dask.array")
    pair, reg = simulated
    lazy = da.from_array(pair.hr, chunks=(pair.hr.shape[0] // 2 + 7, pair.hr.shape[1] // 3))
    with dask.config.set(scheduler=_refuse):
        with pytest.raises(AssertionError, match="ambient"):
            lazy.sum().compute()  # the refusing scheduler is in force
        tiled = register_pair(pair.lr, lazy, threads=2)
    assert np.abs(tiled.footprint - reg.footprint).max() < 1e-6
    assert np.abs(tiled.displacement() - reg.displacement()).max() < 1e-4
    assert (tiled.patches_tried, tiled.patches_accepted) == (reg.patches_tried,
                                                             reg.patches_accepted)


def test_lazy_lr_registers_as_the_in_memory_one(simulated):
    """A chunked dask LR (as read from zarr) is read reduced and around the footprint only,
    with the same result as the array in memory."""
    da = pytest.importorskip("dask.array")
    pair, reg = simulated
    lazy = register_pair(da.from_array(pair.lr, chunks=(97, 130)), pair.hr)
    assert lazy.to_dict() == reg.to_dict()


def test_coarse_level_block_by_block_equals_the_whole():
    da = pytest.importorskip("dask.array")
    image = _specimen((333, 517), seed=3)
    for f in (2, 4, 8):
        whole = _decimate(image, f)
        np.testing.assert_array_equal(_decimate(da.from_array(image, chunks=(100, 77)), f), whole)
        np.testing.assert_allclose(whole, _reduce(image, f), atol=1e-6)


def test_coarse_search_on_threads_finds_the_same_match(spec, monkeypatch):
    """The angles of the coarse search run on ``threads`` threads on large images (here a pool
    of 2, not the calling thread): the same result as one after the other."""
    import threading

    import pairsr.register._global as register

    lr, hr, _, _ = _pair(spec, zoom=2.02, angle=1.3)
    serial = register_pair(lr, hr, local=False, threads=1)
    calls = []
    monkeypatch.setattr(register, "PARALLEL_SEARCH_PIXELS", 0)
    monkeypatch.setattr(register, "_angle_peaks",
                        lambda *a: calls.append(threading.get_ident()) or _angle_peaks(*a))
    parallel = register_pair(lr, hr, local=False, threads=2)
    assert len(calls) > 3 and threading.get_ident() not in calls  # every angle on the pool
    assert parallel.to_dict() == serial.to_dict()
    with pytest.raises(ValueError, match="threads must be >= 1"):
        register_pair(lr, hr, threads=0)


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


# --- hard cases that register (each was refused before) --------------------------------------


def _sparse_particles(shape, n, seed):
    """Smooth specimen: ``n`` soft-edged spheres (radius 25-40 px) on a flat background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    spec = np.full(shape, 0.2)
    for y, x in rng.uniform((0, 0), shape, (n, 2)):
        r2 = rng.uniform(25, 40) ** 2
        spec = np.maximum(spec, 0.7 * np.sqrt(np.clip(1 - ((yy - y) ** 2 + (xx - x) ** 2) / r2,
                                                      0, 1)))
    return ndi.gaussian_filter(spec, 3).astype(np.float32)


def test_smooth_particles_at_noise_level_at_full_resolution():
    """Large smooth particles: at full resolution the structure is at the noise level (the old
    texture pre-check refused the HR), but the search scales register them."""
    sim = simulate_pair(_sparse_particles((500, 600), 20, seed=0), seed=2, scale=2.0,
                        hr_fraction=0.3)
    reg = register_pair(sim.lr, sim.hr, local=False)
    assert _sim_corner_error(sim, reg) < 0.2


def test_low_dose_lr():
    """An LR scan at 3 counts per pixel: at full resolution it is mostly noise (the old texture
    pre-check refused it); the coarse search averages the noise away. The accuracy is then
    noise-limited, a fraction of an LR pixel."""
    sim = simulate_pair(seed=0, lr_shape=(300, 400), hr_fraction=0.3)
    lr = np.random.default_rng(0).poisson(sim.lr / 255.0 * 3) / 3
    reg = register_pair(lr.astype(np.float32), sim.hr)
    assert _sim_corner_error(sim, reg) < 0.5


def test_low_dose_tem_specimen():
    """A low-dose TEM field (Poisson noise at ~1 count/px in the specimen image itself)."""
    sim = simulate_pair(_real("katsuno_lowdose_tem/train_0001.tif"), seed=0)
    reg = register_pair(sim.lr, sim.hr)
    assert _sim_corner_error(sim, reg) < 0.15


def _lattice(shape, period, defects, seed=0):
    """A square lattice of soft atoms (``period`` specimen px), with ``defects`` bright and dark
    discs of 8-20 px radius that break its periodicity."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape, dtype=float)
    spec = 0.45 + 0.2 * np.cos(2 * np.pi * yy / period) * np.cos(2 * np.pi * xx / period)
    for y, x, r, v in zip(*rng.uniform((0, 0, 8, -0.25), (*shape, 20, 0.25), (defects, 4)).T):
        spec += v * (np.hypot(yy - y, xx - x) < r)
    return ndi.gaussian_filter(spec, 1.0).astype(np.float32)


@pytest.mark.parametrize("seed", [4, 9])
def test_global_refinement_on_a_lattice_keeps_a_good_start(seed):
    """The built-in lattice at half the LR's resolution (a pyramid level of the global fit):
    started at the true map, plain Gauss-Newton steps jumped periods away (8 and 32 px, NCC
    0.08 and 0.07, the fit then "explained 1 %" of the LR); steps that raise the residual are
    now halved, so the fit stays within a fraction of a pixel."""
    sim = simulate_pair("lattice", seed=seed, lr_shape=(160, 200), hr_fraction=0.3)
    a = np.linalg.inv(np.asarray(sim.truth["matrix"]))  # LR -> HR
    t = -a @ np.asarray(sim.truth["offset"])
    lr2, hr4 = _reduce(sim.lr / np.float32(255), 2), _reduce(sim.hr / np.float32(255), 4)
    a2, t2, ncc, _ = _refine(_Window(lr2, (0, 0), lr2.shape), hr4, a / 2, t / 4, affine=False)
    shift = np.linalg.solve(a2, -t2) - np.linalg.solve(a / 2, -t / 4)  # level-2 LR px
    assert np.hypot(*shift) < 0.3
    assert ncc > 0.8


def test_periodic_specimen_with_aperiodic_content():
    """Lattice with a few defects: the coarse peaks lie one period apart; refining them decides."""
    lr, hr, matrix, offset = _pair(_lattice((600, 700), 24.0, 12), angle=0.8)
    reg = register_pair(lr, hr, local=False)
    assert _corner_errors(reg, matrix, offset).max() < 0.1


def test_perfect_lattice_is_ambiguous_by_a_period():
    lr, hr, _, _ = _pair(_lattice((600, 700), 24.0, 0), angle=0.8)
    with pytest.raises(RegistrationError, match=r"ambiguous, by one period.*convert --crop"):
        register_pair(lr, hr, local=False)


def test_real_periodic_haadf_stem_small_field():
    """A 5 % HR field of an atomic lattice with a precipitate (HAADF-STEM)."""
    sim = simulate_pair(_real("r_em_haadf_stem/sgl_exp_hrstem_2048.tif"), seed=2,
                        hr_fraction=0.05)
    reg = register_pair(sim.lr, sim.hr)
    assert _sim_corner_error(sim, reg) < 0.15


def test_inverted_contrast_is_accepted_with_a_warning(spec):
    lr, hr, matrix, offset = _pair(spec, angle=-0.7)
    with pytest.warns(UserWarning, match=r"contrast is inverted.*--refuse-inversion"):
        reg = register_pair(lr, 1.0 - hr, local=False)
    assert reg.inverted
    assert _corner_errors(reg, matrix, offset).max() < 0.05
    with pytest.raises(RegistrationError, match=r"contrast seems inverted.*--allow-inversion"):
        register_pair(lr, 1.0 - hr, allow_inversion=False)


def test_inverted_pair_trains_lbnlm_on_the_hr_as_acquired():
    """Downstream: the target is the inverted HR itself, and the paired LB-NLM learns the
    inverting map (out of sample it beats the bicubic LR remapped by the best linear map)."""
    from pairsr.api import fit, prepare_pair
    from pairsr.grid import bicubic

    sim = simulate_pair(seed=2, lr_shape=(160, 224))
    hr = 255 - sim.hr
    with pytest.warns(UserWarning, match="contrast is inverted"):
        pair = prepare_pair(sim.lr, hr)
    assert pair.registration.inverted
    np.testing.assert_allclose(pair.hr, warp_hr_to_sr(hr / 255.0, pair.registration), atol=1e-6)
    sr = fit([pair], "lbnlm", sigma=0.05, L=3000).predict(pair.lr)
    seen = np.isfinite(pair.hr)
    up = bicubic(pair.lr, 2)
    coef = np.polyfit(up[seen], pair.hr[seen], 1)
    truth, unseen = 1 - sim.gt, ~seen
    errors = [np.mean((im[unseen] - truth[unseen]) ** 2) for im in (sr, np.polyval(coef, up))]
    assert errors[0] < 0.6 * errors[1]


def test_rotation_of_eight_degrees_by_default(spec):
    lr, hr, matrix, offset = _pair(spec, angle=8.0)
    reg = register_pair(lr, hr, local=False)
    assert _corner_errors(reg, matrix, offset).max() < 0.05


def test_rotation_beyond_search_range(spec):
    lr, hr, matrix, offset = _pair(spec, angle=12.5)
    with pytest.raises(RegistrationError, match=r"more than 10°.*--max-rotation"):
        register_pair(lr, hr)
    reg = register_pair(lr, hr, max_rotation_deg=15.0, local=False)
    assert _corner_errors(reg, matrix, offset).max() < 0.05


def test_small_scan_from_a_small_real_specimen():
    """A 256² micrograph simulated at 2 specimen px per LR px: a 112² LR and a 112² HR. (The
    simulator's own sizing now lowers the scale to keep a 128² LR; that pair registers 0.7 LR px
    off, a known limit on this specimen, see the robustness benchmark's real-pentacene class.)"""
    sim = simulate_pair(_real("afrl_mdf_nanorods_pentacene/hr_pentacene/test_001.png"), seed=1,
                        scale=2.0)
    assert sim.hr.shape == (112, 112)
    reg = register_pair(sim.lr, sim.hr)
    assert _sim_corner_error(sim, reg) < 0.3


def test_tiny_hr_registers(spec):
    """A 72×80 HR (36×40 LR px, too few patches for their field): the field fitted to the LR
    image (there is no drift) costs little over the global affine, over four noise draws, and
    each draw is placed within twice its own predicted precision."""
    local, affine = [], []
    for seed in range(4):
        lr, hr, matrix, offset = _pair(spec, shape=(72, 80), origin=(10.0, 12.0), seed=seed)
        reg = register_pair(lr, hr)
        assert reg.local_field is not None and reg.patches_accepted == 0
        assert reg.rms_displacement < 0.05
        local.append(_corner_errors(reg, matrix, offset).max())
        assert local[-1] < 2 * reg.corner_sd
        affine.append(_corner_errors(register_pair(lr, hr, local=False), matrix, offset).max())
    assert np.mean(local) < 1.25 * np.mean(affine)


@pytest.mark.parametrize("zoom", [3.0, 4.0])
def test_zoom_three_and_four(spec, zoom):
    lr, hr, matrix, offset = _pair(spec, zoom=zoom, angle=1.5, shape=(160, 192))
    reg = register_pair(lr, hr, zoom=zoom, local=False)
    assert _corner_errors(reg, matrix, offset).max() < 0.1
    assert reg.zoom == pytest.approx(zoom, rel=1e-3)


def test_wrong_zoom_suggests_the_right_one(spec):
    lr, hr, _, _ = _pair(spec, zoom=3.0, shape=(160, 192))
    with pytest.raises(RegistrationError, match="--zoom 3"):
        register_pair(lr, hr, zoom=2.0)


# --- refusals ---------------------------------------------------------------------------------


def test_hr_from_another_field_is_not_found(spec):
    lr, _, _, _ = _pair(spec)
    _, hr, _, _ = _pair(_specimen((600, 700), seed=2))
    with pytest.raises(RegistrationError, match="not found"):
        register_pair(lr, hr)


def test_hr_of_another_real_specimen_is_not_found():
    lr = simulate_pair(_real("deepsem_nanowires/NWs-8kMag_125nm_03_cropped.png"), seed=0,
                       lr_shape=(200, 300)).lr
    hr = simulate_pair(_real("konstanz_colloids_sem/jeol_A-2h-01_x50k_2nm.tif")[:700, :1000],
                       seed=0, hr_fraction=0.1).hr
    with pytest.raises(RegistrationError, match="HR image not found"):
        register_pair(lr, hr)


@pytest.mark.parametrize("which", ["LR", "HR"])
def test_textureless_image(spec, which):
    """Pure noise in place of one image: not found, and the message says which is textureless."""
    lr, hr, _, _ = _pair(spec)
    flat = (0.4 + 0.02 * np.random.default_rng(3).standard_normal(lr.shape)).astype(np.float32)
    with pytest.raises(RegistrationError, match=f"not found.*{which} image is textureless"):
        register_pair(flat if which == "LR" else lr, flat if which == "HR" else hr)


def test_zoom_outside_accepted_range(spec):
    lr, hr, _, _ = _pair(spec, zoom=2.16)
    with pytest.raises(RegistrationError, match=r"zoom 2\.16.* outside the accepted range"):
        register_pair(lr, hr, zoom=2.0)
    assert register_pair(lr, hr, zoom=2.0, zoom_tolerance=0.1, local=False).zoom == (
        pytest.approx(2.16, rel=1e-3))


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


def test_hr_partly_outside_keeps_the_affine_where_the_field_was_measured():
    """A third of the HR outside the LR: the local field is measured inside only, and its affine
    part is taken there (the extrapolated rest had tilted it: corners 0.57 LR px off, now 0.17)."""
    sim = simulate_pair(seed=12001, lr_shape=(358, 430), hr_shape=(418, 503), hr_inside=0.658)
    with pytest.warns(UserWarning, match="outside the LR"):
        reg = register_pair(sim.lr, sim.hr)
    assert reg.patches_accepted > 0  # the local field is used
    assert _sim_corner_error(sim, reg) < 0.3


def test_search_levels_follow_the_hr_and_coarsen_past_8_only_for_a_survey():
    """The template keeps >= 48 coarse px; past level 8 only while the coarse LR is wider than
    2048 px, so a 32k survey is searched at 2048² and smaller fields as before."""
    assert _levels((1000, 1000), (600, 600), 2) == [1, 2, 4]
    assert _levels((16384, 16384), (4096, 4096), 2) == [1, 2, 4, 8]
    assert _levels((32768, 32768), (4096, 4096), 2) == [1, 2, 4, 8, 16]
    assert _levels((65536, 65536), (2048, 2048), 2) == [1, 2, 4, 8, 16]  # the template decides
