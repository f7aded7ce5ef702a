"""Tests of pairsr.io: formats, metadata, checks, OME-Zarr layout and streaming conversion."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import xarray as xr
import zarr
from PIL import Image
from skimage.transform import downscale_local_mean

from pairsr import io
from pairsr.io import (
    ImageError,
    OutputExistsError,
    build_pyramid,
    convert,
    create_ome_zarr,
    from_float32,
    parse_crop,
    read_image,
    to_float32,
    write_image,
    write_ome_zarr,
)

SHARED = Path(__file__).parents[2] / "shared"
REAL = SHARED / "data" / "real"
needs_shared = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"real EM data not available ({REAL} is absent)"
)


def random_image(shape=(40, 56), dtype=np.uint16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def snapshot(path: Path) -> dict:
    """Bytes and modification times of every file under ``path`` (or of ``path`` itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


# ----------------------------------------------------------------------------- crop


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":-64,", (slice(None, -64), slice(None))),
        (":690,:", (slice(None, 690), slice(None))),
        ("10:20, -5:", (slice(10, 20), slice(-5, None))),
        (",", (slice(None), slice(None))),
    ],
)
def test_parse_crop(text, expected):
    assert parse_crop(text) == expected


@pytest.mark.parametrize("text", ["1:2", "a:b,", "1:2:3,", "5,:", "1:2,3:4,5:6"])
def test_parse_crop_rejects_malformed_text(text):
    with pytest.raises(ValueError, match="crop"):
        parse_crop(text)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_round_trip_keeps_values_dtype_and_pixel_size(tmp_path, dtype):
    image = random_image(dtype=dtype)
    path = write_image(tmp_path / "a.tif", image, pixel_size_nm=4.466)
    out = read_image(path)
    assert out.dims == ("y", "x")
    assert out.dtype == dtype and out.attrs["dtype"] == np.dtype(dtype).name
    np.testing.assert_array_equal(out.values, image)
    assert out.attrs["pixel_size_nm"] == pytest.approx(4.466, rel=1e-9)
    assert out.attrs["translation_nm"] == (0.0, 0.0)
    assert out.attrs["source"] == str(path)
    np.testing.assert_allclose(out.y, np.arange(40) * 4.466, rtol=1e-9)
    np.testing.assert_allclose(out.x, np.arange(56) * 4.466, rtol=1e-9)


def test_tiff_without_pixel_size_has_pixel_index_coordinates(tmp_path):
    image = random_image()
    out = read_image(write_image(tmp_path / "a.tiff", image))
    assert out.attrs["pixel_size_nm"] is None
    np.testing.assert_array_equal(out.y, np.arange(40))
    np.testing.assert_array_equal(out.x, np.arange(56))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip(tmp_path, dtype):
    image = random_image(dtype=dtype)
    out = read_image(write_image(tmp_path / "a.png", image, pixel_size_nm=2.5))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.values, image)
    assert out.attrs["pixel_size_nm"] == pytest.approx(2.5, rel=1e-6)


def test_png_refuses_float_data(tmp_path):
    with pytest.raises(ValueError, match="uint8 or uint16"):
        write_image(tmp_path / "a.png", random_image(dtype=np.float32))


def test_npy_round_trip_and_pixel_size_override(tmp_path):
    image = random_image(dtype=np.float32)
    path = write_image(tmp_path / "a.npy", image, pixel_size_nm=3.0)
    out = read_image(path)
    np.testing.assert_array_equal(out.values, image)
    assert out.dtype == np.float32 and out.attrs["pixel_size_nm"] is None  # NPY has no metadata
    out = read_image(path, pixel_size=8.0)
    assert out.attrs["pixel_size_nm"] == 8.0
    np.testing.assert_allclose(out.x, np.arange(56) * 8.0)


def test_dataarray_gives_its_pixel_size_to_write_image(tmp_path):
    image = read_image(write_image(tmp_path / "a.tif", random_image(), pixel_size_nm=6.0))
    out = read_image(write_image(tmp_path / "b.png", image))
    assert out.attrs["pixel_size_nm"] == pytest.approx(6.0, rel=1e-6)


@pytest.mark.parametrize("name", ["a.jpg", "a.ome", "a.tif.gz", ".zarr"])
def test_write_image_rejects_unknown_suffix(tmp_path, name):
    with pytest.raises(ValueError, match=r"unknown output format.*\*\.ome\.tif"):
        write_image(tmp_path / name, random_image())
    assert list(tmp_path.iterdir()) == []


def test_write_image_refuses_to_overwrite(tmp_path):
    path = write_image(tmp_path / "a.tif", random_image(seed=1))
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_image(path, random_image(seed=2))
    np.testing.assert_array_equal(read_image(path).values, random_image(seed=1))
    write_image(path, random_image(seed=2), overwrite=True)
    np.testing.assert_array_equal(read_image(path).values, random_image(seed=2))


# ----------------------------------------------------------------------------- OME-Zarr


def block_mean_reference(image: np.ndarray) -> np.ndarray:
    """2×2 mean with odd edges replicated, rounded back to integers (independent of io)."""
    padded = np.pad(image, [(0, n % 2) for n in image.shape], mode="edge").astype(float)
    return np.rint(downscale_local_mean(padded, (2, 2))).astype(image.dtype)


def test_ome_zarr_round_trip_metadata_and_pyramid(tmp_path, ngff):
    image = random_image((37, 50), np.uint16)
    path = write_ome_zarr(
        tmp_path / "a.zarr",
        image,
        chunks=16,
        pixel_size_nm=4.0,
        translation_nm=(100.0, -20.0),
        attrs={"origin": "test"},
        pyramid_levels=3,
    )
    out = read_image(path)
    assert isinstance(out.data, da.Array)
    np.testing.assert_array_equal(out.values, image)
    assert out.dtype == np.uint16
    assert out.attrs["pixel_size_nm"] == 4.0
    assert out.attrs["translation_nm"] == (100.0, -20.0)
    np.testing.assert_allclose(out.y, 100.0 + 4.0 * np.arange(37))
    np.testing.assert_allclose(out.x, -20.0 + 4.0 * np.arange(50))

    group = zarr.open_group(path, mode="r")
    assert group.metadata.zarr_format == 3
    ome = ngff(path)
    assert ome["version"] == "0.5" and group.attrs["pairsr"] == {"origin": "test"}
    (multiscale,) = ome["multiscales"]
    assert multiscale["name"] == "a"
    (channel,) = ome["omero"]["channels"]
    window = channel["window"]
    assert (window["min"], window["max"]) == (0, 65535)  # the dtype's range
    low, high = np.percentile(image, [0.1, 99.9])  # the window: percentiles of the data
    assert abs(window["start"] - low) < 0.02 * 65535 and abs(window["end"] - high) < 0.02 * 65535
    assert multiscale["axes"] == [
        {"name": "y", "type": "space", "unit": "nanometer"},
        {"name": "x", "type": "space", "unit": "nanometer"},
    ]
    assert [d["path"] for d in multiscale["datasets"]] == ["0", "1", "2"]
    expected = image
    for level, dataset in enumerate(multiscale["datasets"]):
        scale, translation = dataset["coordinateTransformations"]
        assert scale == {"type": "scale", "scale": [4.0 * 2**level] * 2}
        assert translation["type"] == "translation"
        array = group[dataset["path"]]
        assert array.metadata.dimension_names == ("y", "x")
        assert array.shape == tuple(math.ceil(n / 2**level) for n in image.shape)
        np.testing.assert_array_equal(array[:], expected)
        # a level-i pixel centre is the mean of the level-0 centres it covers
        block = 2**level
        np.testing.assert_allclose(
            translation["translation"], [out.y[:block].mean(), out.x[:block].mean()]
        )
        expected = block_mean_reference(expected)


def test_ome_zarr_without_pixel_size_is_in_pixels(tmp_path, ngff):
    path = write_ome_zarr(tmp_path / "a.zarr", random_image(), chunks=32)
    axes = ngff(path)["multiscales"][0]["axes"]
    assert all("unit" not in axis for axis in axes)
    out = read_image(path)
    assert out.attrs["pixel_size_nm"] is None
    np.testing.assert_array_equal(out.x, np.arange(56))
    with pytest.raises(ValueError, match="needs pixel_size_nm"):
        create_ome_zarr(tmp_path / "b.zarr", (4, 4), "u1", translation_nm=(1.0, 0.0))


def test_dask_input_is_written_chunk_by_chunk(tmp_path):
    image = random_image((70, 90), np.float32)
    source = da.from_array(image, chunks=(25, 40))  # not aligned with the zarr chunks
    path = write_image(tmp_path / "a.zarr", xr.DataArray(source, attrs={"pixel_size_nm": 2.0}))
    out = read_image(path)
    np.testing.assert_array_equal(out.values, image)
    assert out.attrs["pixel_size_nm"] == 2.0


def test_create_ome_zarr_regions_from_separate_handles_then_pyramid(tmp_path):
    image = random_image((64, 48), np.uint8)
    path = tmp_path / "sr.zarr"
    create_ome_zarr(
        path, image.shape, image.dtype, chunks=(32, 16), pixel_size_nm=1.0, pyramid_levels=2
    )
    for rows in (slice(0, 32), slice(32, 64)):  # as two worker processes would
        zarr.open_array(path / "0", mode="r+")[rows] = image[rows]
    build_pyramid(zarr.open_group(path, mode="r+"))
    group = zarr.open_group(path, mode="r")
    assert group["0"].chunks == (32, 16) and group["1"].chunks == (32, 16)
    np.testing.assert_array_equal(group["0"][:], image)
    np.testing.assert_array_equal(group["1"][:], block_mean_reference(image))


def test_create_ome_zarr_overwrite_rules(tmp_path):
    path = tmp_path / "a.zarr"
    create_ome_zarr(path, (8, 8), "u1")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        create_ome_zarr(path, (8, 8), "u1")
    assert create_ome_zarr(path, (4, 6), "u2", overwrite=True)["0"].shape == (4, 6)
    folder = tmp_path / "not_a_store"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="not a zarr store"):
        create_ome_zarr(folder, (8, 8), "u1", overwrite=True)
    assert (folder / "keep.txt").read_text() == "precious"


def test_zarr_read_is_lazy_read_only_and_checks_blocks(tmp_path, monkeypatch):
    image = random_image((40, 40), np.float32)
    image[35, 5] = np.nan
    path = write_ome_zarr(tmp_path / "nan.zarr", image, chunks=16)
    before = snapshot(path)
    modes = []
    real_open = zarr.open
    monkeypatch.setattr(
        io.zarr, "open", lambda *a, **k: modes.append(k.get("mode")) or real_open(*a, **k)
    )
    out = read_image(path)
    assert modes == ["r"]
    assert isinstance(out.data, da.Array)
    np.testing.assert_array_equal(out[:16, :16].values, image[:16, :16])  # clean block computes
    with pytest.raises(ImageError, match=r"nan\.zarr: 1 NaN/Inf"):
        out.values  # noqa: B018
    assert snapshot(path) == before


def test_plain_zarr_array_and_crop(tmp_path):
    image = random_image((30, 20), np.uint16)
    zarr.create_array(tmp_path / "plain.zarr", data=image, chunks=(8, 8))
    out = read_image(tmp_path / "plain.zarr", pixel_size=2.0, crop="5:,:-4")
    np.testing.assert_array_equal(out.values, image[5:, :-4])
    assert out.attrs["translation_nm"] == (10.0, 0.0)
    np.testing.assert_allclose(out.y, 10.0 + 2.0 * np.arange(25))


# ----------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("compression", [None, "lzw"])
def test_convert_multi_chunk_tiff_matches_source(tmp_path, compression, ngff):
    image = random_image((300, 260), np.uint16)
    src = tmp_path / "big.tif"
    tifffile.imwrite(
        src,
        image,
        compression=compression,
        rowsperstrip=7,
        resolution=(1e7 / 3.5, 1e7 / 3.5),
        resolutionunit="CENTIMETER",
    )
    before = snapshot(src)
    dst = convert(src, tmp_path / "big.zarr", chunk=64)
    assert ngff(dst)["multiscales"][0]["name"] == "big"
    level0 = zarr.open_group(dst, mode="r")["0"]
    assert level0.chunks == (64, 64)
    np.testing.assert_array_equal(level0[:], image)
    out = read_image(dst)
    assert out.attrs["pixel_size_nm"] == pytest.approx(3.5, rel=1e-9)
    assert zarr.open_group(dst, mode="r").attrs["pairsr"]["source"] == str(src)
    assert snapshot(src) == before
    with pytest.raises(OutputExistsError):
        convert(src, dst)
    convert(src, dst, chunk=128, crop="1:,", overwrite=True)
    level0 = zarr.open_group(dst, mode="r")["0"]
    assert level0.chunks == (128, 128)
    np.testing.assert_array_equal(level0[:], image[1:])


def test_convert_runs_locally_when_a_distributed_client_is_the_default(tmp_path):
    """The source is open in this process; a default Client must not take the tasks."""
    distributed = pytest.importorskip("distributed")
    image = random_image((200, 150), np.uint8)
    src = tmp_path / "scan.tif"
    tifffile.imwrite(src, image, compression="lzw", rowsperstrip=16)
    with distributed.Client(n_workers=1, threads_per_worker=1, dashboard_address=None):
        dst = convert(src, tmp_path / "scan.zarr", chunk=64)
    np.testing.assert_array_equal(zarr.open_group(dst, mode="r")["0"][:], image)


def test_convert_crop_and_pixel_size_override(tmp_path):
    image = random_image((100, 90), np.uint8)
    src = tmp_path / "a.npy"
    np.save(src, image)
    dst = convert(src, tmp_path / "a.zarr", chunk=32, pixel_size=2.0, crop="10:-10,:50")
    out = read_image(dst)
    np.testing.assert_array_equal(out.values, image[10:-10, :50])
    assert out.attrs["translation_nm"] == (20.0, 0.0)
    assert zarr.open_group(dst, mode="r").attrs["pairsr"]["origin_px"] == [10, 0]


def test_failed_convert_leaves_no_output(tmp_path):
    rgb = np.zeros((80, 80, 3), np.uint8)
    rgb[..., 0] = random_image((80, 80), np.uint8)
    src = tmp_path / "colour.tif"
    tifffile.imwrite(src, rgb, photometric="rgb", rowsperstrip=8, compression="zlib")
    with pytest.raises(ImageError, match=r"colour\.tif: a colour image"):
        convert(src, tmp_path / "out.zarr", chunk=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["colour.tif"]


# ----------------------------------------------------------------------------- pixel sizes


def test_tiff_resolution_units(tmp_path):
    image = random_image()
    dpi72 = tmp_path / "dpi72.tif"
    tifffile.imwrite(dpi72, image, resolution=(72, 72), resolutionunit="INCH")
    assert read_image(dpi72).attrs["pixel_size_nm"] is None  # a print setting, not a scan
    inch = tmp_path / "inch.tif"
    tifffile.imwrite(inch, image, resolution=(2.54e7 / 5, 2.54e7 / 5), resolutionunit="INCH")
    assert read_image(inch).attrs["pixel_size_nm"] == pytest.approx(5.0, rel=1e-9)
    imagej = tmp_path / "imagej.tif"
    tifffile.imwrite(imagej, image, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "nm"})
    assert read_image(imagej).attrs["pixel_size_nm"] == pytest.approx(0.5)
    oblong = tmp_path / "oblong.tif"
    tifffile.imwrite(oblong, image, resolution=(1e6, 2e6), resolutionunit="CENTIMETER")
    with pytest.raises(ImageError, match=r"oblong\.tif: non-square pixels"):
        read_image(oblong)
    assert read_image(oblong, pixel_size=7.0).attrs["pixel_size_nm"] == 7.0


def test_jeol_sidecar_micron_bar(tmp_path):
    path = tmp_path / "jeol.tif"
    tifffile.imwrite(path, random_image(dtype=np.uint8))
    path.with_suffix(".txt").write_text(
        "$CM_FORMAT JEOL-SEM\n$CM_MAG 50000\n$$SM_MICRON_BAR 160\n$$SM_MICRON_MARKER 500nm\n"
    )
    assert read_image(path).attrs["pixel_size_nm"] == pytest.approx(500 / 160)


def test_palette_tiff_reads_stored_indices(tmp_path):
    indices = random_image(dtype=np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[0] = np.arange(256)[::-1] * 257  # a red ramp reversed: colour != index
    path = tmp_path / "palette.tif"
    tifffile.imwrite(path, indices, photometric="palette", colormap=colormap)
    np.testing.assert_array_equal(read_image(path).values, indices)


def test_grey_rgb_and_rgba_become_2d(tmp_path):
    grey = random_image(dtype=np.uint8)
    rgba = np.stack([grey, grey, grey, random_image(dtype=np.uint8, seed=5)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    tifffile.imwrite(
        tmp_path / "planar.tif", np.stack([grey] * 3), photometric="rgb", planarconfig="separate"
    )
    for name in ("rgba.png", "planar.tif"):
        out = read_image(tmp_path / name)
        assert out.shape == grey.shape
        np.testing.assert_array_equal(out.values, grey)


def test_crop_keeps_physical_coordinates(tmp_path):
    image = random_image()
    path = write_image(tmp_path / "a.tif", image, pixel_size_nm=2.0)
    for crop in (":-4,2:", (slice(None, -4), slice(2, None))):
        out = read_image(path, crop=crop)
        np.testing.assert_array_equal(out.values, image[:-4, 2:])
        assert out.attrs["origin_px"] == (0, 2)
        assert out.attrs["translation_nm"] == (0.0, 4.0)
        assert float(out.x[0]) == 4.0 and float(out.y[-1]) == 2.0 * 35


# ----------------------------------------------------------------------------- bad inputs


def _write_bad(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"bad_{case}"
    rng = np.random.default_rng(0)
    if case == "colour":
        path = path.with_suffix(".png")
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    elif case == "pages":
        path = path.with_suffix(".tif")
        tifffile.imwrite(
            path, rng.integers(0, 255, (3, 16, 16), dtype=np.uint8), photometric="minisblack"
        )
    elif case == "stack":
        path = path.with_suffix(".npy")
        np.save(path, rng.random((5, 16, 16)))
    elif case == "empty":
        path = path.with_suffix(".npy")
        np.save(path, np.zeros((0, 16), np.uint8))
    elif case == "constant":
        path = path.with_suffix(".tif")
        tifffile.imwrite(path, np.full((16, 16), 7, np.uint8))
    elif case in ("nan", "inf"):
        path = path.with_suffix(".tif")
        data = rng.random((16, 16), dtype=np.float32)
        data[3, 4] = np.nan if case == "nan" else -np.inf
        tifffile.imwrite(path, data)
    elif case == "unknown":
        path = path.with_suffix(".tif")
        path.write_text("not an image")
    elif case in ("truncated_tiff", "truncated_png"):
        good = tmp_path / ("good.tif" if case == "truncated_tiff" else "good.png")
        write_image(good, random_image((64, 64), np.uint8))
        path = path.with_suffix(good.suffix)
        path.write_bytes(good.read_bytes()[:300])
    elif case == "missing":
        path = path.with_suffix(".tif")
    elif case == "folder":
        path.mkdir()
    elif case == "no_multiscales":
        path = path.with_suffix(".zarr")
        zarr.create_group(path).create_array("0", data=np.eye(4))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("colour", "colour image"),
        ("pages", "3 pages"),
        ("stack", "3-D data"),
        ("empty", "empty image"),
        ("constant", "constant image"),
        ("nan", "NaN/Inf"),
        ("inf", "NaN/Inf"),
        ("unknown", "unknown image format"),
        ("truncated_tiff", "unreadable TIFF"),
        ("truncated_png", "unreadable PNG"),
        ("missing", "no such file"),
        ("folder", "not a zarr store"),
        ("no_multiscales", "without OME-NGFF multiscales"),
    ],
)
def test_bad_inputs_raise_image_error_naming_the_file(tmp_path, case, message):
    path = _write_bad(tmp_path, case)
    with pytest.raises(ImageError, match=message) as error:
        read_image(path)
    assert str(path) in str(error.value)


def test_crop_that_leaves_nothing(tmp_path):
    path = write_image(tmp_path / "a.npy", random_image())
    with pytest.raises(ImageError, match=r"a\.npy: crop '10:10,' leaves nothing of the 40x56"):
        read_image(path, crop="10:10,")


# ----------------------------------------------------------------------------- intensities


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.bool_])
def test_float32_round_trip(dtype):
    if dtype is np.bool_:
        image = random_image(dtype=np.uint8) > 127
    elif dtype is np.int16:
        image = random_image(dtype=np.uint16).astype(np.int32) - 32767  # -32768 maps to -1 too
        image = image.astype(np.int16)
    else:
        image = random_image(dtype=dtype)
    x = to_float32(image)
    assert x.dtype == np.float32
    if np.dtype(dtype).kind == "u":
        assert x.min() >= 0 and x.max() <= 1
    back = from_float32(x, dtype)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, image)


def test_from_float32_clips_and_rounds():
    x = np.array([-0.2, 0.0, 0.4 / 255, 0.6 / 255, 0.5, 1.0, 1.3], np.float32)
    np.testing.assert_array_equal(from_float32(x, np.uint8), [0, 0, 0, 1, 128, 255, 255])
    np.testing.assert_array_equal(to_float32(np.array([0, 255], np.uint8)), [0.0, 1.0])


# ----------------------------------------------------------------------------- real EM files


@needs_shared
def test_real_zeiss_palette_tiff_cz_sem_pixel_size():
    path = REAL / "konstanz_colloids_sem" / "zeiss_GM59_20_spheres_4.466nm.tif"
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.photometric == tifffile.PHOTOMETRIC.PALETTE
    out = read_image(path, crop=":700,")
    assert out.shape == (700, 1024) and out.dtype == np.uint8
    assert out.attrs["pixel_size_nm"] == pytest.approx(4.466, rel=1e-9)
    np.testing.assert_array_equal(out.values, np.asarray(Image.open(path))[:700])  # indices


@needs_shared
def test_real_jeol_lzw_tiff_makernote_pixel_size():
    path = REAL / "konstanz_colloids_sem" / "jeol_A-2h-01_x50k_2nm.tif"
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.LZW
    out = read_image(path, crop=":960,")  # 66-row info bar below
    assert out.shape == (960, 1280)
    assert out.attrs["pixel_size_nm"] == pytest.approx(2.0)  # not the 254-dpi resolution tags
    np.testing.assert_array_equal(out.values, np.asarray(Image.open(path))[:960])


@needs_shared
def test_real_jeol_tem_lzw_uint16_tags_pixel_size():
    path = REAL / "katsuno_lowdose_tem" / "train_0001.tif"
    out = read_image(path)
    assert out.dtype == np.uint16 and out.shape == (512, 512)
    assert out.attrs["pixel_size_nm"] == pytest.approx(2.98846, rel=1e-5)  # tag 65009, in µm
    np.testing.assert_array_equal(out.values, np.asarray(Image.open(path)))


@needs_shared
def test_real_files_without_pixel_size_and_grey_rgba_png():
    stem = read_image(REAL / "r_em_haadf_stem" / "sgl_exp_hrstem_2048.tif")  # zlib, unit NONE
    assert stem.dtype == np.uint16 and stem.attrs["pixel_size_nm"] is None
    imagej = read_image(REAL / "pssr_napari" / "hr_2nm_tsem_small.tif")  # ImageJ, no unit
    assert imagej.shape == (600, 900) and imagej.attrs["pixel_size_nm"] is None
    png = REAL / "afrl_mdf_nanorods_pentacene" / "real_lr" / "realLRgoldnano.png"
    out = read_image(png)
    assert out.shape == (128, 128)
    np.testing.assert_array_equal(out.values, np.asarray(Image.open(png))[..., 0])


# ----------------------------------------------------------------------------- info bars

REAL_IMAGES = sorted(REAL.rglob("*.tif")) + sorted(REAL.rglob("*.png")) if REAL.is_dir() else []
#: Real files with an info bar (SOURCES.md): its first row.
BARS = {"jeol_A-2h-01_x50k_2nm.tif": 960, "zeiss_GM59_20_spheres_4.466nm.tif": 701}


def textured(shape=(240, 320), seed=0) -> np.ndarray:
    """A scan-like uint8 image: smooth structure plus noise, many grey levels in every row."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    smooth = 100 + 50 * np.sin(x / 9.0) * np.cos(y / 13.0)
    return np.clip(smooth + rng.normal(0, 12, shape), 0, 255).astype(np.uint8)


def with_bar(image: np.ndarray, rows: int, seed=1) -> np.ndarray:
    """``image`` with its last ``rows`` rows replaced by a black bar holding white 'text'."""
    out = image.copy()
    out[-rows:] = 0
    rng = np.random.default_rng(seed)
    for col in range(10, image.shape[1] - 10, 12):  # glyph-like blocks on two text lines
        for line in (rows // 4, rows // 2 + 2):
            h, w = rng.integers(3, 7), rng.integers(2, 8)
            out[-rows + line : -rows + line + h, col : col + w] = 255
    return out


def test_find_info_bar_on_a_synthetic_bar_and_negative_controls():
    image = textured()
    assert io.find_info_bar(image) is None
    assert io.find_info_bar(with_bar(image, 18)) == 240 - 18
    assert io.find_info_bar(da.from_array(with_bar(image, 18), chunks=64)) == 240 - 18
    blank = image.copy()
    blank[-18:] = 0  # blank last rows (a scan that stopped): no text, not a bar
    assert io.find_info_bar(blank) is None
    tall = with_bar(image, 80)  # a third of the image: not an info bar
    assert io.find_info_bar(tall) is None
    fade = image.astype(float)
    fade[-40:] *= np.linspace(1, 0, 40)[:, None]  # the scan fading out: no sharp boundary
    assert io.find_info_bar(fade.astype(np.uint8)) is None
    # The specimen's edge: a few small bright particles on a saturated background (rows as
    # flat as a bar's, but the particles take many grey levels, glyphs a few).
    particles = textured((240, 640))
    particles[-30:] = 0
    y, x = np.mgrid[-30:0, :640]
    for cx in (100, 300, 500):
        blob = np.exp(-((x - cx) ** 2 + (y + 15) ** 2) / 12.0)
        noisy = 60 + 180 * blob + np.random.default_rng(cx).normal(0, 10, blob.shape)
        particles[-30:] = np.where(blob > 0.2, np.clip(noisy, 0, 255), particles[-30:])
    assert io.find_info_bar(particles) is None


def test_read_image_crops_a_found_bar_with_a_message_and_obeys_crop_and_auto_crop(tmp_path):
    image = with_bar(textured(), 18)
    path = write_image(tmp_path / "scan.tif", image, pixel_size_nm=3.0)
    with pytest.warns(io.InfoBarCropped, match=r"scan\.tif: cropped an info bar, rows 222:240 "
                      r"\(18 rows, found in the pixels\).*--no-auto-crop"):
        out = read_image(path)
    np.testing.assert_array_equal(out.values, image[:222])
    assert out.attrs["info_bar"] == {"rows": (222, 240), "found": "found in the pixels"}
    assert read_image(path, auto_crop=False).shape == image.shape
    assert read_image(path, crop=":230,").shape == (230, 320)  # --crop overrides


@needs_shared
@pytest.mark.parametrize("path", REAL_IMAGES, ids=lambda p: p.name)
def test_real_images_cropped_only_where_they_have_a_bar(path):
    """Negative control on every real image: only the JEOL and Zeiss files have bars."""
    full = read_image(path, auto_crop=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = read_image(path)
    cropped = [w for w in caught if issubclass(w.category, io.InfoBarCropped)]
    assert len(cropped) == (path.name in BARS)
    if path.name in BARS:
        assert out.shape == (BARS[path.name], full.shape[1])
        assert out.attrs["info_bar"]["rows"] == (BARS[path.name], full.shape[0])
        np.testing.assert_array_equal(out.values, full.values[: BARS[path.name]])
    else:
        assert out.shape == full.shape and out.attrs["info_bar"] is None


@needs_shared
def test_real_jeol_bar_from_makernote_matches_the_pixels():
    path = REAL / "konstanz_colloids_sem" / "jeol_A-2h-01_x50k_2nm.tif"
    with pytest.warns(io.InfoBarCropped, match=r"JEOL MakerNote \$CM_IMAGE_SIZE 1280 960"):
        out = read_image(path)
    assert out.attrs["pixel_size_nm"] == pytest.approx(2.0)
    assert io.find_info_bar(read_image(path, auto_crop=False).values) == 960


@needs_shared
def test_real_zeiss_data_zone_cropped_with_cz_sem_pixel_size():
    path = REAL / "konstanz_colloids_sem" / "zeiss_GM59_20_spheres_4.466nm.tif"
    with pytest.warns(io.InfoBarCropped, match=r"rows 701:768 \(67 rows, Zeiss data zone"):
        out = read_image(path)
    assert out.shape == (701, 1024) and out.attrs["pixel_size_nm"] == pytest.approx(4.466)


def test_fei_tiff_pixel_size_and_databar_from_its_tag(tmp_path):
    image = with_bar(textured(), 20)
    header = ("[User]\r\nDate=01/01/2024\r\n[Scan]\r\nPixelWidth=1.25e-09\r\n"
              "PixelHeight=1.25e-09\r\n[Image]\r\nResolutionX=320\r\nResolutionY=220\r\n")
    path = tmp_path / "fei.tif"
    tifffile.imwrite(path, image, extratags=[(34682, "s", 0, header, True)],
                     resolution=(72, 72), resolutionunit="INCH")
    with pytest.warns(io.InfoBarCropped, match=r"FEI \[Image\] ResolutionY=220"):
        out = read_image(path)
    assert out.shape == (220, 320)
    assert out.attrs["pixel_size_nm"] == pytest.approx(1.25)


def test_hitachi_sidecar_pixel_size_and_data_size(tmp_path):
    image = with_bar(textured(), 20)
    path = tmp_path / "hitachi.tif"
    tifffile.imwrite(path, image)
    path.with_suffix(".txt").write_text(
        "[SemImageFile]\r\nInstructName=S-4800\r\nDataSize=320x220\r\nPixelSize=7.5\r\n")
    with pytest.warns(io.InfoBarCropped, match=r"Hitachi hitachi\.txt DataSize=320x220"):
        out = read_image(path)
    assert out.shape == (220, 320) and out.attrs["pixel_size_nm"] == pytest.approx(7.5)


# ----------------------------------------------------------------------------- OME-TIFF


@pytest.mark.parametrize(("size", "unit", "nm"), [(0.0025, "µm", 2.5), (2.5, "nm", 2.5),
                                                  (25.0, "Å", 2.5), (0.004, None, 4.0)])
def test_ome_tiff_physical_size_with_units(tmp_path, size, unit, nm):
    image = random_image()
    metadata = {"axes": "YX", "PhysicalSizeX": size, "PhysicalSizeY": size}
    if unit is not None:  # OME's default unit is µm
        metadata.update(PhysicalSizeXUnit=unit, PhysicalSizeYUnit=unit)
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, image, ome=True, metadata=metadata)
    out = read_image(path)
    assert out.attrs["pixel_size_nm"] == pytest.approx(nm, rel=1e-9)
    np.testing.assert_array_equal(out.values, image)


def test_pyramidal_ome_tiff_reads_level0_with_its_pixel_size(tmp_path):
    image = random_image((64, 96), np.uint8)
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        options = {"tile": (16, 16), "photometric": "minisblack"}
        tif.write(image, subifds=1, metadata={"axes": "YX", "PhysicalSizeX": 0.01,
                                               "PhysicalSizeY": 0.01}, **options)
        tif.write(image[::2, ::2], subfiletype=1, **options)
    assert len(tifffile.TiffFile(path).series[0].levels) == 2
    out = read_image(path)
    np.testing.assert_array_equal(out.values, image)
    assert out.attrs["pixel_size_nm"] == pytest.approx(10.0)
    streamed = read_image(convert(path, tmp_path / "pyramid.zarr", chunk=32))  # lazy level 0
    np.testing.assert_array_equal(streamed.values, image)
    assert streamed.attrs["pixel_size_nm"] == pytest.approx(10.0)


def test_write_ome_tiff_round_trip_through_tifffiles_ome_parser(tmp_path):
    image = random_image()
    path = write_image(tmp_path / "sr.ome.tif", image, pixel_size_nm=1.5,
                       translation_nm=(-0.375, 10.0))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
    assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeXUnit"]) == (1.5, "nm")
    assert (pixels["PhysicalSizeY"], pixels["PhysicalSizeYUnit"]) == (1.5, "nm")
    assert (pixels["Plane"]["PositionY"], pixels["Plane"]["PositionX"]) == (-0.375, 10.0)
    out = read_image(path)
    np.testing.assert_array_equal(out.values, image)
    assert out.attrs["pixel_size_nm"] == 1.5 and out.attrs["translation_nm"] == (-0.375, 10.0)
    assert not tifffile.TiffFile(write_image(tmp_path / "plain.tif", image)).is_ome


def test_convert_streams_tiff_and_ome_tiff_outputs_and_keeps_a_tiff_a_tiff(tmp_path):
    image = random_image((700, 600), np.uint16)
    src = write_image(tmp_path / "in.tif", image, pixel_size_nm=2.0)
    for name in ("out.ome.tif", "out.tif"):
        dst = convert(src, tmp_path / name)
        assert dst.is_file() and tifffile.TiffFile(dst).is_ome == name.endswith(".ome.tif")
        np.testing.assert_array_equal(read_image(dst).values, image)
        assert read_image(dst).attrs["pixel_size_nm"] == pytest.approx(2.0)
    existing = write_image(tmp_path / "existing.tif", random_image())
    convert(src, existing, overwrite=True)  # a TIFF stays a TIFF, not a zarr folder
    assert existing.is_file()
    np.testing.assert_array_equal(read_image(existing).values, image)
    with pytest.raises(ValueError, match=r"convert writes \*\.zarr, \*\.ome\.tif or \*\.tif"):
        convert(src, tmp_path / "out.png")


def test_read_image_opens_what_write_image_wrote(tmp_path):
    image = random_image((50, 60), np.uint16)
    for name, keeps_origin in [("w.zarr", True), ("w.ome.tif", True), ("w.tif", False),
                               ("w.png", False)]:
        path = write_image(tmp_path / name, image, pixel_size_nm=2.5, translation_nm=(5.0, -2.5))
        out = read_image(path)
        np.testing.assert_array_equal(out.values, image)
        assert out.attrs["pixel_size_nm"] == pytest.approx(2.5, rel=1e-6)
        assert out.attrs["translation_nm"] == ((5.0, -2.5) if keeps_origin else (0.0, 0.0))


# ----------------------------------------------------------------------------- xarray


def test_dataarrays_carry_name_units_and_long_names(tmp_path):
    from pairsr.api import super_resolve

    known = read_image(write_image(tmp_path / "known.tif", random_image(), pixel_size_nm=2.0))
    unknown = read_image(write_image(tmp_path / "unknown.tif", random_image()))
    assert known.name == "known.tif"
    for dim in ("y", "x"):
        assert known[dim].attrs == {"units": "nm", "long_name": dim}
        assert unknown[dim].attrs == {"units": "pixel", "long_name": dim}
    sr = super_resolve("bicubic", known)
    assert sr.name == "known.tif-sr" and sr.attrs["pixel_size_nm"] == 1.0
    assert sr.x.attrs["units"] == "nm" and float(sr.x[0]) == pytest.approx(-0.5)
    sr = super_resolve("bicubic", unknown)
    assert sr.x.attrs["units"] == "LR pixel" and float(sr.x[1] - sr.x[0]) == 0.5
