import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from pairsr.grid import bicubic
from pairsr.io import to_float32
from pairsr.lbnlm import LBNLM, LBNLMOriginal
from pairsr.methods import (
    Bicubic,
    ModelError,
    load_model,
    model_hash,
    save_model,
)
from pairsr.metrics import psnr
from pairsr.register import Registration, warp_hr_to_sr
from pairsr.simulate import simulate_pair


@pytest.fixture(scope="module")
def training_pair():
    """A small aligned pair: HR texture on the SR grid, LR a blurred, noisy 2x2 area mean."""
    rng = np.random.default_rng(0)
    hr = ndi.gaussian_filter(rng.random((128, 160)), 1.2)
    hr = ((hr - hr.min()) / np.ptp(hr)).astype(np.float32)
    lr = ndi.gaussian_filter(hr, 1.0).reshape(64, 2, 80, 2).mean((1, 3))
    lr = np.clip(0.8 * lr + 0.1 + 0.02 * rng.standard_normal(lr.shape), 0, 1).astype(np.float32)
    return lr, hr


@pytest.fixture(scope="module")
def lbnlm_model(training_pair):
    return LBNLM.fit([training_pair], k=8, K=4, L=800, sigma="auto")


def test_lbnlm_fit_selects_sigma_and_beats_bicubic(lbnlm_model, training_pair):
    lr, hr = training_pair
    search = lbnlm_model.params["sigma_search"]
    tried = dict(search["tried"])
    assert not search["fallback"] and lbnlm_model.params["sigma"] == min(tried, key=tried.get)
    sr = lbnlm_model.predict(lr)
    assert sr.shape == hr.shape
    err = lambda x: np.mean((x - hr)[8:-8, 8:-8] ** 2)  # noqa: E731
    assert err(sr) < 0.9 * err(bicubic(lr))


def test_model_folder_round_trip(tmp_path, lbnlm_model, training_pair):
    lr, _ = training_pair
    folder = save_model(lbnlm_model, tmp_path / "m", extra={"registrations": [{"ncc": 0.9}]})
    loaded = load_model(folder)
    assert isinstance(loaded, LBNLM) and loaded.params == lbnlm_model.params
    assert np.array_equal(loaded.predict(lr), lbnlm_model.predict(lr))
    assert model_hash(folder) == json.loads((folder / "model.json").read_text())["hash"]
    with pytest.raises(FileExistsError, match="overwrite"):
        save_model(lbnlm_model, folder)


def test_corrupt_or_mismatched_model_folder_is_a_clear_error(tmp_path, lbnlm_model):
    folder = save_model(lbnlm_model, tmp_path / "m")
    with pytest.raises(ModelError, match=r"no model\.json"):
        load_model(tmp_path / "missing")
    # A replaced data file fails its checksum.
    lib = folder / "library.npz"
    data = lib.read_bytes()
    lib.write_bytes(data[:-10] + bytes(10))
    with pytest.raises(ModelError, match="checksum"):
        load_model(folder)
    lib.write_bytes(data)
    # An edited parameter breaks the content hash.
    cfg = json.loads((folder / "model.json").read_text())
    cfg["params"]["sigma"] = 1.0
    (folder / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="hash"):
        load_model(folder)
    (folder / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="corrupt"):
        load_model(folder)


def test_bicubic_needs_no_folder_and_original_lbnlm_shares_the_library(lbnlm_model, training_pair):
    lr, hr = training_pair
    assert np.array_equal(load_model("bicubic").predict(lr), bicubic(lr))
    assert isinstance(load_model("bicubic"), Bicubic)
    orig = LBNLMOriginal(params={**lbnlm_model.params, "sigma": 0.05}, library=lbnlm_model.library)
    out = orig.predict(lr)
    assert out.shape == hr.shape and np.isfinite(out).all()
    assert orig.halo == lbnlm_model.halo > Bicubic().halo


def test_network_model_folder_round_trip(tmp_path, training_pair):
    from pairsr.methods import method_class

    lr, hr = training_pair
    folder = tmp_path / "net"
    model = method_class("edsr").fit([(lr, hr)], preset="edsr-tiny", folder=folder, epochs=1,
                                     steps=2, patch=16, batch=4, progress=False)
    save_model(model, folder)
    loaded = load_model(folder)
    assert loaded.name == "edsr" and loaded.resources == {"GPU": 1}
    assert loaded.halo == model.net.receptive_field > 0
    out = loaded.predict(lr)
    assert out.shape == hr.shape
    assert np.array_equal(out, model.predict(lr))


@pytest.mark.parametrize(("n", "stride"), [(9, 3), (9, 0), (1, 1)])
def test_lbnlm_patch_grid_must_suit_the_tiles(training_pair, n, stride):
    """A stride that does not divide the zoom would misalign the patch grids of adjacent tiles."""
    lr, hr = training_pair
    with pytest.raises(ValueError, match=r"stride must divide zoom=2|patch size n"):
        LBNLM.fit([(lr, hr)], n=n, stride=stride, sigma=0.05)


def _split_physical_pair(seed, lr_shape, fraction, rotation=3.0):
    """A simulated physical pair aligned by the simulator's true affine (independent of the
    registration): the LR, the HR on the SR grid with the left 30 % of its footprint's columns
    (and a 9-px gap) removed, and the mask of those held-out pixels."""
    sim = simulate_pair(seed=seed, lr_shape=lr_shape, hr_fraction=fraction,
                        max_rotation_deg=rotation)  # fmt: skip
    lr, hr = to_float32(sim.lr), to_float32(sim.hr)
    reg = Registration(np.array(sim.truth["matrix"]), np.array(sim.truth["offset"]), lr.shape,
                       hr.shape)  # fmt: skip
    hr_sr = warp_hr_to_sr(hr, reg, lr.shape, local=False)
    valid = np.isfinite(hr_sr)
    cols = np.flatnonzero(valid.any(axis=0))
    cut = cols[0] + int(0.3 * len(cols))
    held_out = valid & (np.arange(valid.shape[1]) < cut)
    train = np.where(np.arange(valid.shape[1]) >= cut + 9, hr_sr, np.nan).astype(np.float32)
    return lr, train, hr_sr, held_out, sim


def _held_out_gain(model, lr, hr_sr, held_out):
    """ΔPSNR (dB) over bicubic on the held-out HR pixels."""
    ref = np.nan_to_num(hr_sr)
    sr, bic = (np.clip(x, 0, 1) for x in (model.predict(lr), bicubic(lr, model.zoom)))
    return psnr(sr, ref, mask=held_out) - psnr(bic, ref, mask=held_out)


@pytest.mark.parametrize(("seed", "fraction"), [(3, 0.25), (1, 0.3)])
def test_rotated_sub_area_and_30_percent_pairs_fit_and_gain_out_of_sample(seed, fraction):
    """A rotated HR ~220 px wide (left 30 % held out) and a 30 % HR fraction: the old validation
    wanted a NaN-free square inside a 20 % column strip of the rotated footprint and failed
    ("no NaN-free validation window"); the folds find validation pixels in any footprint."""
    lr, train, hr_sr, held_out, sim = _split_physical_pair(seed, (240, 320), fraction)
    assert abs(sim.truth["rotation_deg"]) > 2
    model = LBNLM.fit([(lr, train)])
    assert not model.params["sigma_search"]["fallback"]
    assert _held_out_gain(model, lr, hr_sr, held_out) > 1.0


def test_tiny_hr_fits_with_a_scaled_library():
    """An HR 128 px wide (about 7000 training patches, fewer than L = 20000): the library keeps
    what exists, σ is still validated, and the model gains out of sample."""
    lr, train, hr_sr, held_out, sim = _split_physical_pair(5, (160, 200), 0.1)
    assert sim.truth["hr_shape"][1] == 126
    model = LBNLM.fit([(lr, train)])
    lib = model.library
    assert lib.params["available"] == lib.params["sampled"] < 20000
    assert len(lib) <= lib.params["sampled"] and lib.k <= 50
    assert not model.params["sigma_search"]["fallback"]
    assert _held_out_gain(model, lr, hr_sr, held_out) > 0.5


@pytest.mark.parametrize("zoom", [3, 4])
def test_lbnlm_fits_and_gains_at_zoom_3_and_4(zoom):
    rng = np.random.default_rng(zoom)
    hr = ndi.gaussian_filter(rng.random((36 * zoom, 48 * zoom)), 0.6 * zoom)
    hr = ((hr - hr.min()) / np.ptp(hr)).astype(np.float32)
    lr = ndi.gaussian_filter(hr, 0.5 * zoom).reshape(36, zoom, 48, zoom).mean((1, 3))
    lr = np.clip(0.8 * lr + 0.1 + 0.01 * rng.standard_normal(lr.shape), 0, 1).astype(np.float32)
    held_out = np.zeros(hr.shape, bool)
    held_out[:, 36 * zoom :] = True
    model = LBNLM.fit([(lr, np.where(held_out, np.nan, hr))], zoom=zoom, k=8, K=4, L=800)
    assert model.zoom == zoom and model.predict(lr).shape == hr.shape
    assert not model.params["sigma_search"]["fallback"]
    held_out[:, -8:] = False  # the image's edge
    assert _held_out_gain(model, lr, hr, held_out) > 0.5


def test_every_method_implements_the_interface():
    """SRMethod is abstract (halo, predict); every registered method is a concrete subclass."""
    from pairsr.methods import SRMethod, method_class, method_names

    with pytest.raises(TypeError, match="abstract"):
        SRMethod()
    for name in method_names():
        cls = method_class(name)
        assert issubclass(cls, SRMethod) and not cls.__abstractmethods__, name
        assert cls.name == name
