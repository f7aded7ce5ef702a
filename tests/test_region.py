"""The region type (pairsr.region): the SR-grid rule at ×2, ×3, ×4, tiling, context prediction,
the NGFF translation; and training pairs cropped to the HR overlap (pairsr.api)."""

import numpy as np
import pytest

from pairsr.api import TrainingPair, fit, merge_fields, pair_margin, prepare_pair, super_resolve
from pairsr.grid import BICUBIC_HALO, bicubic, sr_to_lr
from pairsr.io import image_dataarray, read_image, to_float32, write_ome_zarr
from pairsr.methods import Bicubic
from pairsr.region import Region, predict_region, sr_translation, window_sums
from pairsr.register import warp_hr_to_sr
from pairsr.simulate import simulate_pair
from pairsr.tiles import apply_tiled

ZOOMS = (2, 3, 4)
#: Context (LR px) of the small test pair: the LB-NLM halo of n = 5 (the fits below) and more.
MARGIN = 20


@pytest.mark.parametrize("zoom", ZOOMS)
def test_sr_region_covers_the_lr_region_exactly(zoom):
    region = Region(5, 7, 11, 4)
    sr = region.sr(zoom)
    assert sr == Region(5 * zoom, 7 * zoom, 11 * zoom, 4 * zoom) and sr.lr(zoom) == region
    # Its SR pixels' centres lie inside the LR region's area; the next ones outside.
    for axis, (first, size) in enumerate(((sr.row, sr.rows), (sr.col, sr.cols))):
        lo, hi = region.start[axis] - 0.5, region.stop[axis] - 0.5
        centres = sr_to_lr(np.arange(first - 1, first + size + 1), zoom)
        assert np.all((centres[1:-1] > lo) & (centres[1:-1] < hi))
        assert centres[0] < lo and centres[-1] > hi
    with pytest.raises(ValueError, match="whole LR pixels"):
        Region(1, 0, zoom + 1, zoom).lr(zoom)


@pytest.mark.parametrize("zoom", ZOOMS)
def test_tiles_of_a_field_partition_it_on_both_grids(zoom):
    field = Region.of((37, 23))
    tiles = field.tiles(8)
    for grid, scale in ((field, 1), (field.sr(zoom), zoom)):
        count = np.zeros(grid.shape, int)
        for tile in tiles:
            (tile.sr(zoom) if scale > 1 else tile).crop(count)[...] += 1
        assert np.all(count == 1)
    assert Region.bounding(tiles) == field


def test_intersect_pad_and_relative_to():
    a, b = Region(2, 3, 10, 10), Region(8, 0, 10, 6)
    assert a.intersect(b) == Region(8, 3, 4, 3)
    assert a.intersect(Region(20, 20, 3, 3)).empty
    assert a.pad(4, (13, 30)) == Region(0, 0, 13, 17)
    assert b.relative_to(a) == Region(6, -3, 10, 6) and b.relative_to(a).shift(a.start) == b
    assert Region.covering(np.array([[1.2, 3.7], [4.0, -0.5]]), margin=0.5) == Region(0, -1, 6, 7)


@pytest.mark.parametrize("zoom", ZOOMS)
def test_predict_region_with_its_halo_equals_the_whole_image_prediction(zoom):
    lr = np.random.default_rng(zoom).random((40, 50), dtype=np.float32)
    whole = bicubic(lr, zoom)
    for region in (Region(10, 12, 9, 15), Region(0, 0, 7, 50), Region(33, 40, 7, 10)):
        part = predict_region(lambda x: bicubic(x, zoom), lr, region, BICUBIC_HALO, zoom)
        np.testing.assert_allclose(part, region.sr(zoom).crop(whole), atol=1e-6)
    # Without context the spline's boundary shows: the halo matters.
    inner = Region(10, 12, 9, 15)
    bare = predict_region(lambda x: bicubic(x, zoom), lr, inner, 0, zoom)
    assert np.abs(bare - inner.sr(zoom).crop(whole)).max() > 1e-3
    with pytest.raises(ValueError, match="predict gave shape"):
        predict_region(lambda x: bicubic(x, zoom)[1:], lr, inner, 2, zoom)


def test_window_sums_match_the_direct_sums():
    a = np.random.default_rng(1).random((2, 9, 11))
    sums = window_sums(a, (3, 4))
    direct = np.array([[[a[k, r : r + 3, c : c + 4].sum() for c in range(8)] for r in range(7)]
                       for k in range(2)])
    np.testing.assert_allclose(sums, direct)
    mask = a[0] > 0.5
    assert window_sums(mask, (2, 2)).dtype == np.int64
    assert window_sums(mask, (2, 2))[3, 4] == mask[3:5, 4:6].sum()


@pytest.mark.parametrize("zoom", ZOOMS)
def test_sr_translation_agrees_with_the_written_sr_image(zoom, tmp_path):
    pixel, origin = 8.0, (100.0, -40.0)
    lr = image_dataarray(np.random.default_rng(0).random((12, 16), dtype=np.float32), pixel,
                         origin, attrs={"pixel_size_nm": pixel, "translation_nm": origin})
    expected = (origin[0] - pixel * (zoom - 1) / (2 * zoom),
                origin[1] - pixel * (zoom - 1) / (2 * zoom))
    assert sr_translation(origin, pixel, zoom) == pytest.approx(expected)
    sr = super_resolve(Bicubic(zoom=zoom), lr)
    write_ome_zarr(tmp_path / "sr.zarr", sr)
    back = read_image(tmp_path / "sr.zarr")
    assert back.attrs["translation_nm"] == pytest.approx(expected)
    assert back.attrs["pixel_size_nm"] == pytest.approx(pixel / zoom)
    # A region's SR origin is the written SR pixel at its top-left corner.
    region = Region(3, 5, 4, 4)
    y, x = region.translation(pixel, origin, zoom)
    assert (y, x) == pytest.approx((float(back.y[3 * zoom]), float(back.x[5 * zoom])))
    assert region.translation(pixel, origin) == pytest.approx((float(lr.y[3]), float(lr.x[5])))


def test_the_tiled_engine_writes_the_same_sr_origin(tmp_path):
    pixel, origin = 5.0, (20.0, 30.0)
    data = np.random.default_rng(2).random((48, 40), dtype=np.float32)
    write_ome_zarr(tmp_path / "lr.zarr", data, pixel_size_nm=pixel, translation_nm=origin,
                   chunks=16)
    out = apply_tiled("bicubic", tmp_path / "lr.zarr", tmp_path / "sr.zarr", tile=16,
                      progress=False)
    back = read_image(out)
    assert back.attrs["translation_nm"] == pytest.approx(sr_translation(origin, pixel, 2))
    np.testing.assert_allclose(back.values, bicubic(data, 2), atol=1e-6)


@pytest.fixture(scope="module")
def small_pair():
    sim = simulate_pair(seed=3, lr_shape=(300, 360), hr_fraction=0.12)
    return sim, prepare_pair(sim.lr, sim.hr, margin=MARGIN)


def test_a_training_pair_holds_the_window_around_the_hr_only(small_pair):
    sim, pair = small_pair
    lr = to_float32(sim.lr)
    reg, zoom, window = pair.registration, pair.zoom, pair.region
    assert pair.field_shape == lr.shape and window.rows * window.cols < lr.size / 2
    np.testing.assert_array_equal(pair.lr, window.crop(lr))
    full = warp_hr_to_sr(to_float32(sim.hr), reg, lr.shape, zoom=zoom)
    np.testing.assert_array_equal(pair.hr, window.sr(zoom).crop(full), strict=True)
    # Every HR pixel of the field is in the window, with the margin around it (within the field).
    assert np.isfinite(full).sum() == np.isfinite(pair.hr).sum()
    rows, cols = np.nonzero(np.isfinite(full))
    hr_box = Region.from_bounds((rows.min() // zoom, cols.min() // zoom),
                                (rows.max() // zoom + 1, cols.max() // zoom + 1))
    assert hr_box.pad(MARGIN, lr.shape).intersect(window) == hr_box.pad(MARGIN, lr.shape)
    np.testing.assert_array_equal(pair.read(), lr)
    # A margin as large as the field keeps the whole field, as before.
    whole = prepare_pair(sim.lr, sim.hr, margin=max(lr.shape))
    assert whole.region == Region.of(lr.shape)
    np.testing.assert_array_equal(whole.hr, full)


@pytest.mark.parametrize("zoom", ZOOMS)
def test_the_default_margin_covers_the_methods_context(zoom):
    from pairsr.lbnlm import halo
    from pairsr.models import build_model

    assert pair_margin(zoom) >= halo(9, zoom)
    for method in ("vdsr", "edsr"):
        assert pair_margin(zoom) >= build_model(method, zoom=zoom).receptive_field


def test_fitting_the_window_equals_fitting_the_whole_field(small_pair):
    sim, pair = small_pair
    lr = to_float32(sim.lr)
    full = TrainingPair(lr, warp_hr_to_sr(to_float32(sim.hr), pair.registration, lr.shape,
                                          zoom=pair.zoom), pair.registration)
    options = {"n": 5, "k": 8, "K": 3, "L": 2000}
    windowed, whole = fit([pair], "lbnlm", **options), fit([full], "lbnlm", **options)
    assert windowed.params["sigma"] == pytest.approx(whole.params["sigma"], rel=1e-5)
    np.testing.assert_allclose(windowed.library.hr, whole.library.hr, atol=1e-6)
    np.testing.assert_allclose(windowed.library.up, whole.library.up, atol=1e-5)


def test_merge_fields_joins_two_windows_of_one_field():
    rng = np.random.default_rng(4)
    field = rng.random((90, 120), dtype=np.float32)
    zoom = 2
    pairs = []
    for region in (Region(5, 10, 30, 40), Region(50, 60, 35, 50)):
        hr = np.full(region.sr(zoom).shape, np.nan, np.float32)
        hr[10:-10, 10:-10] = rng.random((hr.shape[0] - 20, hr.shape[1] - 20))
        pairs.append(TrainingPair(region.crop(field), hr, None, region, field))
    other = TrainingPair(field[:30, :40] + 0.1, pairs[0].hr, None)  # another field
    merged = merge_fields([*pairs, other])
    assert len(merged) == 2 and merged[1] is other
    union = merged[0]
    assert union.region == Region(5, 10, 80, 100)
    np.testing.assert_array_equal(union.lr, union.region.crop(field))
    for p in pairs:
        placed = p.region.sr(zoom).relative_to(union.region.sr(zoom)).crop(union.hr)
        np.testing.assert_array_equal(placed, p.hr)
    assert np.isfinite(union.hr).sum() == sum(np.isfinite(p.hr).sum() for p in pairs)
