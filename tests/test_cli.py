"""Tests of the command line as a microscopist meets it: real vendor files in, viewer-ready files
out, messages, progress, exit statuses, and checks that come before the expensive work."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import check_ngff
from test_io import REAL, needs_shared, textured, with_bar
from typer.testing import CliRunner

from pairsr import __version__, tiles
from pairsr.cli import UsageError, _check_method, app
from pairsr.io import read_image, write_image, write_ome_zarr

ROOT = Path(__file__).parents[1]
REAL_TIFFS = sorted(REAL.rglob("*.tif")) if REAL.is_dir() else []
#: Real TIFFs: (rows of scan data, pixel size in nm or None), from SOURCES.md.
EXPECTED = {
    "jeol_A-2h-01_x50k_2nm.tif": (960, 2.0),
    "zeiss_GM59_20_spheres_4.466nm.tif": (701, 4.466),
    "train_0001.tif": (512, 2.98846),
    "train_0002.tif": (512, 2.98846),
    "hr_2nm_tsem_small.tif": (600, None),
    "lr_8nm_semisynthetic_small.tif": (150, None),
    "lr_8nm_ssem_large_00.tif": (4106, None),
    "sgl_exp_hrstem_2048.tif": (2048, None),
}


def pairsr(*args: str | Path):
    """Run the CLI in-process; the result has ``exit_code`` and ``output`` (stdout + stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def geometry(store: Path) -> tuple[list, list, str | None]:
    """(scale, translation, unit) of level 0 of an OME-Zarr image, after validating it."""
    multiscale = check_ngff(store)["multiscales"][0]
    scale, translation = multiscale["datasets"][0]["coordinateTransformations"]
    return scale["scale"], translation["translation"], multiscale["axes"][0].get("unit")


# ----------------------------------------------------------------------------- first contact


def test_version_and_python_m():
    assert pairsr("--version").output.strip() == f"pairsr {__version__}"
    run = subprocess.run([sys.executable, "-m", "pairsr", "--version"], capture_output=True,
                         text=True, check=True)
    assert run.stdout.strip() == f"pairsr {__version__}"


@needs_shared
@pytest.mark.parametrize("path", REAL_TIFFS, ids=lambda p: p.name)
def test_apply_bicubic_on_every_real_tiff(path, tmp_path):
    """No options: the SR of the scan without its info bar, at the file's physical scale."""
    rows, pixel = EXPECTED[path.name]
    result = pairsr("apply", "bicubic", path, "--out", tmp_path / "x.zarr")
    assert result.exit_code == 0, result.output
    lr = read_image(path, auto_crop=False)
    out = zarr.open_group(tmp_path / "x.zarr", mode="r")["0"]
    assert out.shape == (2 * rows, 2 * lr.shape[1]) and out.dtype == lr.dtype
    scale, translation, unit = geometry(tmp_path / "x.zarr")
    step = pixel if pixel is not None else 1.0  # without a pixel size: LR pixels
    assert scale == pytest.approx([step / 2] * 2, rel=1e-5)
    assert translation == pytest.approx([-step / 4] * 2, rel=1e-5)
    assert unit == ("nanometer" if pixel is not None else None)
    assert ("cropped an info bar" in result.output) == (rows < lr.shape[0])
    assert ("no pixel size" in result.output) == (pixel is None)


@pytest.mark.parametrize("vendor", ["fei", "hitachi"])
def test_apply_on_vendor_files_without_a_real_sample(vendor, tmp_path):
    """FEI/Thermo and Hitachi: the bar and pixel size from the vendor's metadata."""
    image = with_bar(textured(), 20)
    path = tmp_path / f"{vendor}.tif"
    if vendor == "fei":
        header = "[Scan]\r\nPixelWidth=5e-09\r\nPixelHeight=5e-09\r\n[Image]\r\nResolutionY=220\r\n"
        tifffile.imwrite(path, image, extratags=[(34682, "s", 0, header, True)])
    else:
        tifffile.imwrite(path, image)
        path.with_suffix(".txt").write_text("[SemImageFile]\r\nDataSize=320x220\r\nPixelSize=5\r\n")
    result = pairsr("apply", "bicubic", path, "--out", tmp_path / "x.zarr")
    assert result.exit_code == 0, result.output
    assert "cropped an info bar, rows 220:240" in result.output
    assert zarr.open_group(tmp_path / "x.zarr")["0"].shape == (440, 640)
    assert geometry(tmp_path / "x.zarr")[0] == [2.5, 2.5]


def test_apply_to_ome_tiff_round_trips_through_tifffile(tmp_path):
    image = textured((100, 120))
    lr = write_image(tmp_path / "lr.tif", image, pixel_size_nm=4.0)
    result = pairsr("apply", "bicubic", lr, "--out", tmp_path / "sr.ome.tif", "--tile", "32")
    assert result.exit_code == 0, result.output
    out = tmp_path / "sr.ome.tif"
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["lr.tif", "sr.ome.tif"]
    with tifffile.TiffFile(out) as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        data = tif.asarray()
    assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeXUnit"]) == (2.0, "nm")
    assert (pixels["Plane"]["PositionX"], pixels["Plane"]["PositionXUnit"]) == (-1.0, "nm")
    pairsr("apply", "bicubic", lr, "--out", tmp_path / "sr.zarr", "--tile", "32")
    np.testing.assert_array_equal(data, zarr.open_group(tmp_path / "sr.zarr")["0"][:])
    sr = read_image(out)
    assert sr.attrs["pixel_size_nm"] == 2.0 and sr.attrs["translation_nm"] == (-1.0, -1.0)


def test_missing_pixel_size_warns_once_and_writes_lr_pixel_geometry(tmp_path):
    lr = write_image(tmp_path / "lr.tif", textured((64, 80)))
    result = pairsr("apply", "bicubic", lr, "--out", tmp_path / "sr.zarr", "--tile", "16")
    assert result.exit_code == 0
    assert result.output.count("warning: lr.tif: no pixel size in the file") == 1
    assert geometry(tmp_path / "sr.zarr") == ([0.5, 0.5], [-0.25, -0.25], None)


# ----------------------------------------------------------------------------- conventions


def test_warnings_print_as_messages_and_quiet_keeps_only_them(tmp_path):
    lr = write_image(tmp_path / "lr.tif", with_bar(textured(), 20), pixel_size_nm=2.0)
    loud = pairsr("apply", "bicubic", lr, "--out", tmp_path / "a.zarr")
    assert "warning: lr.tif: cropped an info bar, rows 220:240" in loud.output
    assert "warnings.warn" not in loud.output and ".py:" not in loud.output
    assert "super-resolving" in loud.output and "wrote" in loud.output
    quiet = pairsr("--quiet", "apply", "bicubic", lr, "--out", tmp_path / "b.zarr")
    assert quiet.exit_code == 0
    assert [line for line in quiet.output.splitlines() if line] == [
        line for line in loud.output.splitlines() if line.startswith("warning:")]


def test_apply_progress_counts_output_pixels(tmp_path, monkeypatch):
    """The bar's total and steps are output pixels (blank and busy tiles weigh by area)."""
    seen = {"advanced": []}
    real = tiles._progress

    def spy(total, enabled):
        seen["total"] = total
        with real(total, enabled) as advance:
            yield lambda n: (seen["advanced"].append(n), advance(n))

    monkeypatch.setattr(tiles, "_progress", tiles.contextmanager(spy))
    lr = write_image(tmp_path / "lr.tif", textured((50, 70)), pixel_size_nm=1.0)
    tiles.apply_tiled("bicubic", lr, tmp_path / "sr.zarr", tile=32, progress=False)
    assert seen["total"] == 4 * 50 * 70 == sum(seen["advanced"])
    assert sorted(seen["advanced"]) == sorted(4 * r * c for r in (32, 18) for c in (32, 32, 6))


def test_convert_progress_and_suffixes(tmp_path):
    src = write_image(tmp_path / "scan.tif", textured((300, 200)), pixel_size_nm=2.0)
    result = pairsr("convert", src, tmp_path / "scan.zarr", "--chunk", "64")
    assert result.exit_code == 0 and "converting scan.tif" in result.output
    check_ngff(tmp_path / "scan.zarr")
    existing = write_image(tmp_path / "existing.tif", textured((10, 10)))
    assert pairsr("convert", src, existing).exit_code == 2  # exists: nothing replaced
    assert read_image(existing).shape == (10, 10)
    assert pairsr("convert", src, existing, "--overwrite").exit_code == 0
    assert existing.is_file() and read_image(existing).shape == (300, 200)
    bad = pairsr("convert", src, tmp_path / "scan.jpg")
    assert bad.exit_code == 2 and "unknown output format" in bad.output
    assert not (tmp_path / "scan.jpg").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "{tmp}/x.jpg"], "unknown output format"),
    (["--out", "{tmp}/x.png"], "--out must be *.zarr or *.ome.tif or *.tif"),
    (["--out", "{tmp}/taken.zarr"], "taken.zarr exists; pass --overwrite"),
    (["--out", "/proc/x.zarr"], "cannot write in /proc"),
])
def test_apply_refuses_bad_outputs_before_reading(tmp_path, args, message):
    (tmp_path / "taken.zarr").mkdir()
    lr = write_image(tmp_path / "lr.tif", with_bar(textured(), 20))
    result = pairsr("apply", "bicubic", lr, *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2 and message in result.output
    assert "cropped" not in result.output  # refused before the input was read
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.tif", "taken.zarr"]


def test_usage_errors_exit_2_before_registration_and_failures_exit_1(tmp_path):
    lr = write_image(tmp_path / "lr.tif", textured((60, 80)))
    hr = write_image(tmp_path / "hr.tif", textured((60, 80), seed=1))
    cases = {
        ("--method", "nope"): "unknown method 'nope'",
        ("-p", "sigmaa=0.1"): "lbnlm has no parameter 'sigmaa'",
        ("-p", "L=lots"): '-p L="lots": L of lbnlm must be int',
        ("-p", "residual=3"): "residual of lbnlm must be bool",
        ("--method", "vdsr", "-p", "epochs=ten"): "epochs of vdsr must be int",
    }
    for args, message in cases.items():
        result = pairsr("fit", lr, hr, "--out", tmp_path / "model", *args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "registering" not in result.output
    assert pairsr("apply", "lbnlm", lr, "--out", tmp_path / "x.zarr").exit_code == 2
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\0" + bytes(100))
    result = pairsr("apply", "bicubic", broken, "--out", tmp_path / "y.zarr")
    assert result.exit_code == 1 and "broken.tif: TIFF with 0 pages" in result.output


def test_check_method_follows_signatures():
    _check_method("lbnlm", {"sigma": 0.05, "L": 5000, "residual": True, "device": None})
    _check_method("vdsr", {"epochs": 3, "lr_rate": 1e-3, "preset": "small"})
    _check_method("bicubic", {})
    with pytest.raises(UsageError, match="bicubic has no parameter 'sigma'"):
        _check_method("bicubic", {"sigma": 0.1})


def test_a_run_stopped_by_a_bad_tile_says_how_to_resume(tmp_path):
    image = textured((64, 64)).astype(np.float32) / 255
    image[60, 60] = np.nan  # in tile (1, 1) of 32 px, beyond the halo of the others
    lr = write_ome_zarr(tmp_path / "lr.zarr", image, chunks=32, pixel_size_nm=2.0)
    out = tmp_path / "sr.zarr"
    result = pairsr("apply", "bicubic", lr, "--out", out, "--tile", "32", "--cluster", "none")
    assert result.exit_code == 1
    assert "stopped after 3 of 4 tiles" in result.output
    assert "run again with --resume" in result.output
    assert len(list((out / ".pairsr" / "done").glob("*.json"))) == 3  # the partial output is kept
    zarr.open_group(lr, mode="r+")["0"][60, 60] = 0.5  # fix the input, then finish
    result = pairsr("apply", "bicubic", lr, "--out", out, "--tile", "32", "--cluster", "none",
                    "--resume")
    assert result.exit_code == 0, result.output
    log = json.loads((out / ".pairsr" / "log.json").read_text())
    assert (log["tasks_total"], log["tasks_skipped"], len(log["tasks"])) == (4, 3, 1)
    assert zarr.open_group(out).attrs["pairsr"]["complete"] is True


def test_fit_reports_its_stages(tmp_path):
    assert pairsr("simulate", tmp_path / "pair", "--lr-shape", "240x320").exit_code == 0
    result = pairsr("fit", tmp_path / "pair" / "lr.tif", tmp_path / "pair" / "hr.tif", "--out",
                    tmp_path / "model", "-p", "L=2000", "-p", "k=10")
    assert result.exit_code == 0, result.output
    stages = ["registering hr.tif inside lr.tif", "fitting lbnlm on 1 pair(s): σ selection",
              "fitted lbnlm ×2 on 1 pair(s)"]
    positions = [result.output.find(stage) for stage in stages]
    assert -1 not in positions and positions == sorted(positions)
    assert "cropped" not in result.output  # simulated scans have no info bar


def test_apply_crop_of_a_zarr_input_matches_the_cropped_image(tmp_path):
    image = textured((96, 80))
    tif = write_image(tmp_path / "lr.tif", image[10:, 5:], pixel_size_nm=2.0)
    store = write_ome_zarr(tmp_path / "lr.zarr", image, chunks=32, pixel_size_nm=2.0)
    whole = pairsr("apply", "bicubic", tif, "--out", tmp_path / "a.zarr", "--tile", "32")
    assert whole.exit_code == 0
    result = pairsr("apply", "bicubic", store, "--out", tmp_path / "b.zarr", "--tile", "32",
                    "--crop", "10:,5:", "--cluster", "none")
    assert result.exit_code == 0, result.output
    a, b = (zarr.open_group(tmp_path / n, mode="r")["0"][:] for n in ("a.zarr", "b.zarr"))
    np.testing.assert_array_equal(a, b)
    assert geometry(tmp_path / "b.zarr")[1] == [10 * 2.0 - 0.5, 5 * 2.0 - 0.5]  # source nm


# ----------------------------------------------------------------------------- dashboard


def test_bokeh_is_a_core_dependency_and_the_dashboard_serves_its_page():
    from pairsr.cluster import dashboard_link, get_client

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(dep.split(">")[0].strip() == "bokeh" for dep in project["dependencies"])
    with get_client(workers=1, threads_per_worker=1, memory_limit="1GiB") as client:
        link = dashboard_link(client)
        assert link.startswith("http://127.0.0.1:")
        page = urllib.request.urlopen(link, timeout=30).read().decode()
    assert "Dask Diagnostic UI" in page and "needs bokeh" not in page.lower()


def test_simulate_scales_a_dim_real_specimen_to_full_signal(tmp_path):
    """A 16-bit micrograph whose counts fill 1.7 % of the range (as the low-dose TEM frames
    do): read by its dtype, it would be simulated as a blank field of read noise (signal
    ≤ 0.017 at doses of counts per unit signal). `pairsr simulate --specimen` now scales its
    brightest pixel to full signal (pairsr.simulate.load_specimen), as every benchmark does."""
    from pairsr.simulate import load_specimen

    rng = np.random.default_rng(0)
    texture = np.clip(0.5 + 0.2 * rng.standard_normal((300, 300)), 0, 1)
    counts = np.round(1100 * texture).astype(np.uint16)  # at most 1100 of 65535
    tifffile.imwrite(tmp_path / "dim.tif", counts)
    spec = load_specimen(tmp_path / "dim.tif")
    assert spec.dtype == np.float32 and float(spec.max()) == 1.0
    assert np.allclose(spec.values, counts / counts.max(), atol=1e-6)  # proportional
    result = pairsr("simulate", tmp_path / "pair", "--specimen", tmp_path / "dim.tif",
                    "--seed", "1")
    assert result.exit_code == 0, result.output
    truth = json.loads((tmp_path / "pair" / "truth.json").read_text())
    hr_scan = truth["hr_scan"]
    gt = read_image(tmp_path / "pair" / "gt.tif").values.astype(float)
    signal = ((gt / np.iinfo(gt.dtype).max if gt.dtype.kind == "u" else gt) - hr_scan["offset"])
    signal = np.clip(signal / hr_scan["gain"], 0, None) ** (1 / hr_scan["gamma"])
    assert 0.3 < np.median(signal) < 0.7  # the specimen's mid-grey, not 1.7 % of it


def test_simulate_options_reach_the_simulator(tmp_path):
    """Acquisition options: a built-in lattice at ×3, a set rotation, doses, an inverted HR; and
    --wide draws a whole acquisition (same seed, same pair)."""
    result = pairsr("simulate", tmp_path / "a", "--specimen", "lattice", "--lr-shape", "96x128",
                    "--zoom", "3", "--rotation", "6", "--lr-dose", "5", "--hr-gamma", "1.5",
                    "--hr-inverted")
    assert result.exit_code == 0, result.output
    truth = json.loads((tmp_path / "a" / "truth.json").read_text())
    assert truth["nominal_zoom"] == 3 and truth["hr_scan"]["rotation_deg"] == 6
    assert truth["lr_scan"]["dose"] == 5 and truth["hr_scan"]["gamma"] == 1.5
    assert truth["hr_scan"]["inverted"] and not truth["lr_scan"]["inverted"]
    assert read_image(tmp_path / "a" / "gt.tif").shape == (288, 384)
    for name in ("b", "c"):
        assert pairsr("simulate", tmp_path / name, "--wide", "--seed", "4").exit_code == 0
    same = [(tmp_path / name / "truth.json").read_text() for name in ("b", "c")]
    assert same[0] == same[1]
    assert pairsr("simulate", tmp_path / "d", "--specimen", "nothing.tif").exit_code == 2
