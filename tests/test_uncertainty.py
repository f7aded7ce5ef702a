"""The uncertainty map: tile-invariant, higher on structure absent from the HR, calibrated so that
predicted and measured RMS agree on held-out HR, kept by the model folder, written by the CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from test_cli import geometry, pairsr

from pairsr.api import TrainingPair, fit, super_resolve
from pairsr.grid import interpolate
from pairsr.io import read_image, write_image
from pairsr.methods import load_model
from pairsr.register import Registration, warp_hr_to_sr
from pairsr.simulate import builtin_specimen, simulate_pair
from pairsr.tiles import apply_tiled
from pairsr.uncertainty import UncertaintyError, UncertaintyMap, calibrate, noise_model

SMALL = {"lbnlm": {"n": 5, "k": 8, "K": 4, "L": 1500},
         "srsw": {"n": 5, "L": 1500}}


def truth_pair(sim) -> TrainingPair:
    """The simulated pair registered by its own truth (no registration cost or doubt)."""
    t = sim.truth
    lr, hr = sim.lr.astype(np.float32) / 255, sim.hr.astype(np.float32) / 255
    reg = Registration(np.array(t["matrix"]), np.array(t["offset"]), lr.shape, hr.shape)
    return TrainingPair(lr, warp_hr_to_sr(hr, reg, lr.shape, local=False), reg)


@pytest.fixture(scope="module")
def two_specimens():
    """A field whose left half is the nanocomposite and right half a crystal lattice, with a
    registered HR of nearly all of it, and the ground truth (SR grid)."""
    lr_shape, scale = (96, 128), 1.5
    shape = tuple(int(np.ceil(n * scale + 64)) for n in lr_shape)
    rng = np.random.default_rng(3)
    spec = builtin_specimen("nanocomposite", shape, rng, scale)
    spec[:, shape[1] // 2 :] = builtin_specimen("lattice", shape, rng, scale)[:, shape[1] // 2 :]
    sim = simulate_pair(spec, seed=3, scale=scale, lr_shape=lr_shape, hr_fraction=0.9,
                        max_rotation_deg=0.0)
    return truth_pair(sim), sim.gt


@pytest.fixture(scope="module")
def model(two_specimens, tmp_path_factory):
    """LB-NLM fitted (and calibrated) on the pair's HR, saved."""
    pair, _ = two_specimens
    folder = tmp_path_factory.mktemp("model") / "model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit([pair], "lbnlm", out=folder, **SMALL["lbnlm"]), folder


@pytest.mark.parametrize("method", ["lbnlm", "srsw"])
def test_structure_absent_from_the_hr_is_more_uncertain(two_specimens, method):
    pair, _ = two_specimens
    w = pair.hr.shape[1]
    left = np.full_like(pair.hr, np.nan)
    left[:, : w // 2 - 8] = pair.hr[:, : w // 2 - 8]  # the HR covers the first specimen only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = fit([TrainingPair(pair.lr, left, None)], method, uncertainty=True,
                     **SMALL[method])
    assert fitted.calibration.kind == ("attention" if method == "lbnlm" else "novelty")
    u = UncertaintyMap(fitted).predict(pair.lr)
    assert u.shape == pair.hr.shape and np.isfinite(u).all() and (u > 0).all()
    covered, absent = u[8:-8, 8 : w // 2 - 16], u[8:-8, w // 2 + 16 : -8]
    assert np.sqrt(np.mean(absent**2)) > 1.1 * np.sqrt(np.mean(covered**2))
    # above the HR scan's noise floor (the part of the map that is about the SR), by more
    floor = fitted.calibration.noise
    assert np.mean(absent**2) - floor > 1.5 * (np.mean(covered**2) - floor)


def test_noise_model_measures_the_noise_of_an_hr_resampled_onto_the_sr_grid():
    """Shot-like noise (variance 0.004 · I) on a smooth scan, resampled by the SR grid's spline
    with a rotation and a magnification error as a registered HR is: the model's variance is
    the resampled noise's (which is lower than the scan's, and correlated), at every
    intensity; without the resampling's correction it would be about 20 % low."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    clean = gaussian_filter(rng.random((260, 260)), 8)
    clean = 0.1 + 0.8 * (clean - clean.min()) / np.ptp(clean)
    noisy = clean + np.sqrt(0.004 * clean) * rng.standard_normal(clean.shape)
    t = np.deg2rad(1.5)
    rows, cols = np.mgrid[0:200, 0:200].astype(float)
    coords = 1.003 * np.stack([np.cos(t) * rows - np.sin(t) * cols,
                               np.sin(t) * rows + np.cos(t) * cols]) + 30
    hr, ideal = interpolate(noisy, coords), interpolate(clean, coords)
    a, b = noise_model([(None, hr)])
    noise = (hr - ideal) ** 2
    assert noise.mean() < 0.9 * 0.004 * ideal.mean()  # resampling lowered the variance
    for part in (ideal < np.median(ideal), ideal >= np.median(ideal)):
        model = np.exp(a + b * np.log(ideal[part]))
        assert model.mean() == pytest.approx(noise[part].mean(), rel=0.1)
    assert b == pytest.approx(1.0, abs=0.2)


def test_calibration_matches_held_out_rms(two_specimens, model):
    """The calibration's own record, and an independent check: fitted on the left part, the
    map's RMS on a held-out band of the HR is within 30 % of the measured RMS there."""
    pair, _ = two_specimens
    record = model[0].calibration.record
    assert record["pixels"] > 1000
    assert record["predicted_rms"] == pytest.approx(record["measured_rms"], rel=0.01)
    w = pair.hr.shape[1]
    train = pair.hr.copy()
    train[:, 3 * w // 8 :] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = fit([TrainingPair(pair.lr, train, None)], "lbnlm", uncertainty=True,
                     **SMALL["lbnlm"])
    sr, u = fitted.predict(pair.lr), UncertaintyMap(fitted).predict(pair.lr)
    band = np.s_[8:-8, 3 * w // 8 + 16 : w // 2 - 8]  # held out, same specimen
    measured = np.sqrt(np.nanmean((sr[band] - pair.hr[band]) ** 2))
    assert np.sqrt(np.mean(u[band] ** 2)) == pytest.approx(measured, rel=0.3)


def test_map_is_tile_invariant_and_matches_the_api(two_specimens, model, tmp_path):
    pair, _ = two_specimens
    fitted, folder = model
    lr = np.round(pair.lr * 255).astype(np.uint8)
    write_image(tmp_path / "lr.zarr", lr)
    maps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tile in (32, 64):
            out = tmp_path / f"sr{tile}.zarr"
            apply_tiled(folder, tmp_path / "lr.zarr", out, tile=tile, uncertainty=True,
                        progress=False)
            maps.append(read_image(out / "uncertainty").values)
        _, whole = super_resolve(folder, lr, uncertainty=True)
    assert maps[0].dtype == np.float32 and maps[0].shape == pair.hr.shape
    # (up to float32 rounding between the engine's and the API's input paths, which the map's
    # powers of features amplify at a few pixels)
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(maps[0], whole.values, rtol=5e-4, atol=1e-4)
    # in the output's units (uint8 in, uint8 out): 255 × the map of [0, 1] intensities
    expected = 255 * UncertaintyMap(fitted).predict(lr.astype(np.float32) / 255)
    np.testing.assert_allclose(whole.values, expected, rtol=5e-4)


def test_model_folder_keeps_the_calibration(model, two_specimens, tmp_path):
    fitted, folder = model
    pair, _ = two_specimens
    loaded = load_model(folder)
    assert loaded.calibration.to_dict() == fitted.calibration.to_dict()
    np.testing.assert_array_equal(UncertaintyMap(loaded).predict(pair.lr[:40, :40]),
                                  UncertaintyMap(fitted).predict(pair.lr[:40, :40]))
    config = json.loads((folder / "model.json").read_text())
    assert config["uncertainty"]["kind"] == "attention"
    # a model fitted without a calibration is refused with a message saying what to do
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = fit([pair], "lbnlm", out=tmp_path / "plain", uncertainty=False,
                    **SMALL["lbnlm"])
    assert "uncertainty" not in json.loads((tmp_path / "plain" / "model.json").read_text())
    with pytest.raises(UncertaintyError, match="pairsr fit"):
        UncertaintyMap(load_model(tmp_path / "plain"))
    with pytest.raises(UncertaintyError, match="bicubic"):
        calibrate(load_model("bicubic"), [(pair.lr, pair.hr)])
    assert plain.calibration is None


def test_novelty_model_round_trip(two_specimens, tmp_path):
    pair, _ = two_specimens
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = fit([pair], "srsw", out=tmp_path / "m", **SMALL["srsw"])
    assert (tmp_path / "m" / "uncertainty" / "library.npz").is_file()
    loaded = load_model(tmp_path / "m")
    crop = pair.lr[:32, :32]
    np.testing.assert_array_equal(UncertaintyMap(loaded).predict(crop),
                                  UncertaintyMap(fitted).predict(crop))


def test_cli_apply_uncertainty(model, two_specimens, tmp_path):
    pair, _ = two_specimens
    _, folder = model
    lr = tmp_path / "lr.tif"
    write_image(lr, np.round(pair.lr * 255).astype(np.uint8), pixel_size_nm=3.0)
    out = tmp_path / "sr.zarr"
    result = pairsr("--quiet", "apply", folder, lr, "--out", out, "--uncertainty",
                    "--tile", 64)
    assert result.exit_code == 0, result.output
    assert geometry(out / "uncertainty") == geometry(out)
    assert geometry(out)[0] == [1.5, 1.5]
    u = read_image(out / "uncertainty")
    assert u.shape == pair.hr.shape and float(u.min()) > 0
    # refused before any work: bicubic has nothing to measure novelty against; TIFF outputs
    refused = pairsr("apply", "bicubic", lr, "--out", tmp_path / "b.zarr", "--uncertainty")
    assert refused.exit_code == 2 and "bicubic" in refused.output
    refused = pairsr("apply", folder, lr, "--out", tmp_path / "sr.tif", "--uncertainty")
    assert refused.exit_code == 2 and "zarr" in refused.output
    assert not (tmp_path / "b.zarr").exists()
