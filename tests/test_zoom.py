"""Zoom ×2/×3/×4 end to end: the zoom rule, every method at ×3, the tiled engine at ×3 and ×4,
the command line (simulate, register, fit, apply, evaluate, batch) and the real ×4 pair."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi
from typer.testing import CliRunner

from pairsr.api import TrainingPair, fit, pair_zoom, prepare_pair
from pairsr.cli import app
from pairsr.grid import bicubic
from pairsr.io import from_float32, read_image, to_float32, write_image, write_ome_zarr
from pairsr.methods import load_model, save_model
from pairsr.register import RegistrationError
from pairsr.simulate import save_pair, simulate_pair
from pairsr.tiles import apply_tiled

PSSR = Path(__file__).parents[2] / "shared" / "data" / "real" / "pssr_napari"
PSSR_LR, PSSR_HR = PSSR / "lr_8nm_semisynthetic_small.tif", PSSR / "hr_2nm_tsem_small.tif"
#: Tiny network training: the mechanics at ×3, not the quality.
NET = {"epochs": 1, "steps": 2, "patch": 12, "batch": 4, "progress": False, "device": "cpu"}
SMALL = {"lbnlm": {"k": 8, "K": 4, "L": 800}, "lbnlm-original": {"k": 8, "K": 4, "L": 800},
         "scsr": {"atoms": 32, "L": 1500}, "srsw": {"L": 1500},
         **{m: {"preset": f"{m}-tiny", **NET} for m in ("vdsr", "edsr", "rcan")}}


def run_cli(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def fail_cli(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code != 0, result.output
    return " ".join(result.output.split())


def test_the_zoom_rule():
    """Pixel sizes give the zoom; a given one wins (warned when it contradicts them); the SR grid
    is the nearest integer; a pair without pixel sizes is ×2; non-pair pixel sizes are ignored."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = pair_zoom(8.0, 2.0)
        assert (z.nominal, z.sr, z.source, z.hint()) == (4, 4, "metadata", "")
        z = pair_zoom(8.0, 2.02)  # a calibration off by 1 %: registration starts from 3.96
        assert z.sr == 4 and z.nominal == pytest.approx(3.96, abs=1e-3)
        assert (pair_zoom(None, 2.0).sr, pair_zoom(None, 2.0).source) == (2, "default")
        assert "pass --zoom" in pair_zoom(None, None).hint()
        assert pair_zoom(None, None, 3).sr == 3 and pair_zoom(8.0, 2.0, 4).hint() == ""
    with pytest.warns(UserWarning, match="not close to an integer: the SR output is ×3"):
        assert pair_zoom(10.0, 4.0).sr == 3  # 2.5: halves round up
    with pytest.warns(UserWarning, match=r"--zoom 2 contradicts .* = 4"):
        z = pair_zoom(8.0, 2.0, 2)
    assert (z.nominal, z.sr, z.source) == (2, 2, "option") and "try --zoom 4" in z.hint()
    with pytest.warns(UserWarning, match="do not describe an LR/HR pair"):
        assert pair_zoom(25.4e6 / 72, 25.4e6 / 72).source == "default"  # 72 dpi in both files
    with pytest.raises(ValueError, match="--zoom must be"):
        pair_zoom(None, None, 1.2)


@pytest.fixture(scope="module")
def sim3(tmp_path_factory):
    """A simulated ×3 physical pair saved with its pixel sizes: lr.tif, hr.tif, truth.json."""
    folder = tmp_path_factory.mktemp("sim3")
    run_cli("simulate", folder, "--zoom", 3, "--lr-shape", "120x160", "--hr-fraction", 0.5,
            "--max-rotation", 0.3, "--seed", 2, "--overwrite")
    return folder


def test_prepare_pair_takes_the_zoom_from_the_pixel_sizes(sim3):
    truth = json.loads((sim3 / "truth.json").read_text())
    assert truth["nominal_zoom"] == 3 and abs(truth["rotation_deg"]) <= 0.3
    lr, hr = read_image(sim3 / "lr.tif"), read_image(sim3 / "hr.tif")
    pair = prepare_pair(lr, hr, local=False)
    assert pair.zoom == 3 and pair.hr.shape == (360, 480)
    assert pair.registration.zoom == pytest.approx(truth["zoom"], rel=2e-3)
    # Without the pixel sizes ×2 is assumed, which fails here; the message says what to do.
    with pytest.raises(RegistrationError, match="pass --zoom"):
        prepare_pair(lr.values, hr.values, local=False)


def test_registration_options_reach_the_registration(sim3, tmp_path):
    """--max-rotation, --min-ncc and --allow/--refuse-inversion on the ×3 pair; inverted
    contrast is accepted by default with a warning."""
    lr, hr, out = sim3 / "lr.tif", sim3 / "hr.tif", tmp_path / "r.json"
    run_cli("register", lr, hr, "-o", out, "--no-local")
    found = json.loads(out.read_text())
    assert "rotation" in fail_cli("register", lr, hr, "-o", out, "--no-local", "--overwrite",
                                  "--max-rotation", abs(found["rotation_deg"]) / 3)
    assert "NCC" in fail_cli("register", lr, hr, "-o", out, "--no-local", "--overwrite",
                             "--min-ncc", (1 + found["ncc"]) / 2)
    inverted = tmp_path / "hr_inverted.tif"
    write_image(inverted, 255 - read_image(hr).values, pixel_size_nm=read_image(hr).attrs[
        "pixel_size_nm"])
    said = run_cli("register", lr, inverted, "-o", out, "--no-local", "--overwrite")
    assert "contrast is inverted" in " ".join(said.split())
    assert json.loads(out.read_text())["inverted"]
    assert "inverted" in fail_cli("register", lr, inverted, "-o", out, "--no-local",
                                  "--overwrite", "--refuse-inversion")


@pytest.fixture(scope="module")
def pair3():
    """An aligned ×3 pair: LR the blurred 3×3 mean of the HR texture, contrast-changed and noisy;
    the training HR misses its right quarter (held out)."""
    rng = np.random.default_rng(0)
    hr = ndi.gaussian_filter(rng.random((144, 192)), 1.8)
    hr = ((hr - hr.min()) / np.ptp(hr)).astype(np.float32)
    lr = ndi.gaussian_filter(hr, 1.5).reshape(48, 3, 64, 3).mean((1, 3))
    lr = np.clip(0.8 * lr + 0.1 + 0.02 * rng.standard_normal(lr.shape), 0, 1).astype(np.float32)
    train = hr.copy()
    train[:, 144:] = np.nan
    return lr, hr, train


@pytest.mark.parametrize("method", ["bicubic", *SMALL])
def test_every_method_fits_and_applies_at_x3(pair3, method, tmp_path):
    lr, hr, train = pair3
    folder = {"folder": tmp_path / "net"} if "preset" in SMALL.get(method, {}) else {}
    model = fit([TrainingPair(lr, train, None)], method, **SMALL.get(method, {}), **folder)
    sr = model.predict(lr)
    assert model.zoom == 3 and sr.shape == (144, 192) and np.isfinite(sr).all()
    assert load_model(save_model(model, tmp_path / "m")).zoom == 3
    held_out = np.s_[24:-24, 150:-12]  # in the right quarter, away from the image border
    gain = 10 * np.log10(np.mean((bicubic(lr, 3) - hr)[held_out] ** 2)
                         / np.mean((sr - hr)[held_out] ** 2))
    if method in ("lbnlm", "scsr", "srsw"):  # paired learning beats bicubic out of sample
        assert gain > 0.3
    elif method == "bicubic":
        assert gain == 0


def test_fit_refuses_pairs_of_two_zooms(pair3):
    lr, hr, _ = pair3
    x2 = TrainingPair(lr, bicubic(lr, 2), None)
    with pytest.raises(ValueError, match=r"different zooms \(×2, ×3\)"):
        fit([x2, TrainingPair(lr, hr, None)], "bicubic")
    with pytest.raises(ValueError, match="does not match the pairs' SR grid"):
        fit([x2], "bicubic", zoom=3)
    with pytest.raises(ValueError, match="not on an integer SR grid"):
        TrainingPair(lr, hr[:, :-1], None)


@pytest.mark.parametrize("zoom", [3, 4])
def test_tiled_equals_in_memory_and_grid_transform(tmp_path, zoom):
    """LB-NLM, SRSW (default stride 3 at ×3, 2 at ×4) and EDSR (×4: two pixel-shuffle stages)
    through the tiled engine, with tiles that
    neither divide the image nor exceed the halo; OME-Zarr scale pixel/z, translation
    t − pixel·(z−1)/(2z)."""
    rng = np.random.default_rng(zoom)
    hr = ndi.gaussian_filter(rng.random((32 * zoom, 36 * zoom)), 0.6 * zoom).astype(np.float32)
    hr = (hr - hr.min()) / np.ptp(hr)
    lr = ndi.gaussian_filter(hr, zoom / 2).reshape(32, zoom, 36, zoom).mean((1, 3))
    pair = TrainingPair(lr, hr, None)
    models = {"lbnlm": fit([pair], "lbnlm", n=5, k=4, K=2, L=200, sigma=0.05),
              "srsw": fit([pair], "srsw", n=5, L=300),
              "edsr": fit([pair], "edsr", folder=tmp_path / "edsr", **SMALL["edsr"])}
    values = from_float32(np.clip(lr + 0.05 * rng.random(lr.shape), 0, 1)[:29, :31], np.uint8)
    write_ome_zarr(tmp_path / "lr.zarr", values, chunks=8, pixel_size_nm=6.0,
                   translation_nm=(30.0, -12.0))
    for name, model in models.items():
        folder = save_model(model, tmp_path / f"{name}.model")
        expected = model.predict(to_float32(values))
        for tile in (7, 16):
            out = apply_tiled(folder, tmp_path / "lr.zarr", tmp_path / f"{name}{tile}.zarr",
                              tile=tile, out_dtype="float32", progress=False)
            result = zarr.open_array(out / "0", mode="r")[:]
            assert result.shape == (29 * zoom, 31 * zoom)
            assert np.abs(result - expected).max() <= 1e-4 * np.ptp(expected)
    meta = zarr.open_group(out, mode="r").attrs.asdict()["ome"]["multiscales"][0]
    shift = 6.0 * (zoom - 1) / (2 * zoom)
    assert meta["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [6.0 / zoom] * 2},
        {"type": "translation", "translation": [30.0 - shift, -12.0 - shift]}]


def test_command_line_at_x3(sim3, tmp_path):
    """simulate --zoom 3 → fit (zoom from the pixel sizes) → apply → evaluate; a contradicting
    --zoom is named in the error with the zoom the files give."""
    lr, hr = sim3 / "lr.tif", sim3 / "hr.tif"
    said = run_cli("fit", lr, hr, "-o", tmp_path / "m", "-p", "L=3000", "--no-local")
    assert "SR ×3" in said and "lbnlm ×3" in said
    assert json.loads((tmp_path / "m" / "model.json").read_text())["zoom"] == 3
    run_cli("apply", tmp_path / "m", lr, "-o", tmp_path / "sr.zarr", "--cluster", "none",
            "--tile", 64)
    assert zarr.open_array(tmp_path / "sr.zarr" / "0", mode="r").shape == (360, 480)
    run_cli("evaluate", sim3, "-o", tmp_path / "rep", "--methods", "bicubic,lbnlm",
            "-p", "lbnlm.L=3000", "--no-local")
    summary = json.loads((tmp_path / "rep" / "report.json").read_text())["summary"]
    (lbnlm,) = [r for r in summary if r["method"] == "lbnlm" and r["split"] == "out-of-sample"]
    assert lbnlm["dpsnr"] > 0
    said = fail_cli("register", lr, hr, "-o", tmp_path / "r.json", "--zoom", 2, "--no-local")
    assert "warning: --zoom 2 contradicts the files' pixel sizes" in said
    assert "try --zoom 3" in said


@pytest.mark.skipif(not PSSR_HR.exists(), reason=f"real data not found at {PSSR}")
def test_real_x4_pair_registers_fits_and_applies(tmp_path):
    """The PSSR ×4 pair (2 nm / 8 nm, no pixel sizes in the files): without --zoom, ×2 is assumed
    and the error says to pass --zoom; a batch manifest with zoom = 4 registers it, fits LB-NLM
    and writes the ×4 field, which beats bicubic against the HR."""
    assert read_image(PSSR_LR).attrs["pixel_size_nm"] is None
    said = fail_cli("register", PSSR_LR, PSSR_HR, "-o", tmp_path / "r.json", "--no-local")
    assert "zoom 2 assumed" in said and "--zoom" in said
    run_cli("register", PSSR_LR, PSSR_HR, "-o", tmp_path / "r.json", "--zoom", 4, "--no-local")
    assert json.loads((tmp_path / "r.json").read_text())["zoom"] == pytest.approx(4, rel=0.01)
    (tmp_path / "day.toml").write_text(
        f'[defaults]\nmethod = "lbnlm"\nzoom = 4\nparams = {{ L = 3000 }}\n'
        f'[[pair]]\nlr = "{PSSR_LR}"\nhr = "{PSSR_HR}"\nout = "sr.zarr"\n')
    run_cli("batch", tmp_path / "day.toml", "--cluster", "none")
    sr = zarr.open_array(tmp_path / "sr.zarr" / "0", mode="r")[:]
    assert sr.shape == (600, 900)
    assert json.loads((tmp_path / "sr.zarr.model" / "model.json").read_text())["zoom"] == 4
    lr, hr = to_float32(read_image(PSSR_LR).values), to_float32(read_image(PSSR_HR).values)
    inner = np.s_[40:-40, 40:-40]
    err = lambda x: np.mean((to_float32(x) - hr)[inner] ** 2)  # noqa: E731
    assert err(sr) < 0.8 * err(bicubic(lr, 4))


def test_manifest_registration_keys_are_checked(tmp_path):
    (tmp_path / "bad.toml").write_text(
        '[[pair]]\nlr = "a.tif"\nhr = "b.tif"\nout = "o.zarr"\nzoom = "four"\n')
    assert "zoom = 'four' is not a number" in fail_cli("batch", tmp_path / "bad.toml")
    (tmp_path / "bad.toml").write_text(
        '[defaults]\nallow_inversion = 1\n[[pair]]\nlr = "a"\nhr = "b"\nout = "o.zarr"\n')
    assert "allow_inversion = 1 is not true or false" in fail_cli("batch", tmp_path / "bad.toml")



def test_a_fractional_zoom_registers_and_trains_on_the_nearest_integer_grid(tmp_path):
    """HR pixels 2.4× finer (from the files): registration at 2.4, SR grid ×2,
    with a warning; the HR resampled onto the ×2 grid matches the simulator's ×2 truth as well
    as at an integer zoom (0.81 vs 0.81 for this seed at zoom 2; HR noise, gamma and drift
    keep it below 1)."""
    pair = simulate_pair(lr_shape=(120, 160), zoom=2.4, hr_fraction=0.5, max_rotation_deg=0.3,
                         seed=3)
    save_pair(pair, tmp_path)
    lr, hr = read_image(tmp_path / "lr.tif"), read_image(tmp_path / "hr.tif")
    with pytest.warns(UserWarning, match="not close to an integer: the SR output is ×2"):
        prepared = prepare_pair(lr, hr, local=False)
    assert prepared.zoom == 2 and prepared.hr.shape == pair.gt.shape == (240, 320)
    assert prepared.registration.zoom == pytest.approx(pair.truth["zoom"], rel=3e-3)
    valid = np.isfinite(prepared.hr)
    assert np.corrcoef(prepared.hr[valid], pair.gt[valid])[0, 1] > 0.75


def test_lbnlm_patches_smaller_than_the_zoom_tile_exactly(tmp_path):
    """n=3 at ×4: the always-estimated lattice must divide the zoom and be ≤ n (here 2); the
    tiled output equals the in-memory one (it was refused before: lattice 4 > n)."""
    rng = np.random.default_rng(5)
    hr = ndi.gaussian_filter(rng.random((128, 144)), 2.0).astype(np.float32)
    hr = (hr - hr.min()) / np.ptp(hr)
    lr = hr.reshape(32, 4, 36, 4).mean((1, 3))
    model = fit([TrainingPair(lr, hr, None)], "lbnlm", n=3, k=4, K=2, L=400, sigma=0.05)
    values = from_float32(np.clip(lr + 0.05 * rng.random(lr.shape), 0, 1)[:29, :31], np.uint8)
    write_ome_zarr(tmp_path / "lr.zarr", values, chunks=8, pixel_size_nm=6.0)
    expected = model.predict(to_float32(values))
    assert np.isfinite(expected).all()
    out = apply_tiled(save_model(model, tmp_path / "m"), tmp_path / "lr.zarr",
                      tmp_path / "sr.zarr", tile=7, out_dtype="float32", progress=False)
    result = zarr.open_array(out / "0", mode="r")[:]
    assert np.abs(result - expected).max() <= 1e-4 * np.ptp(expected)
