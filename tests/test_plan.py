"""Acquisition planning (pairsr.plan, `pairsr plan`) and several HR scans of one field
(`pairsr fit LR HR1 HR2`, pairsr.api.merge_fields)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage as ndi
from test_cli import pairsr
from test_io import REAL, needs_shared, textured, with_bar

from pairsr.api import TrainingPair, merge_fields
from pairsr.library import sample_patches
from pairsr.plan import plan_acquisition
from pairsr.simulate import simulate_pair, true_lr_coords


def inside(box, rows: int, cols: int) -> bool:
    return box.row >= 0 and box.col >= 0 and box.row + box.rows <= rows and \
        box.col + box.cols <= cols


def test_boxes_inside_the_field_and_above_the_info_bar():
    image = with_bar(textured((300, 420), seed=1), 24)
    for hr_shape, count in (((200, 200), 3), ((540, 800), 1), ((100, 840), 2)):
        plan = plan_acquisition(image, hr_shape, count)
        assert plan.usable_rows == 276
        assert len(plan.boxes) == count
        for box in plan.boxes:
            assert (box.rows, box.cols) == (hr_shape[0] // 2, hr_shape[1] // 2)
            assert inside(box, 276, 420), box
    with pytest.raises(ValueError, match="above its info bar"):
        plan_acquisition(image, (560, 200))  # 280 LR rows: the scan has 276
    # without the bar check the same box fits
    assert inside(plan_acquisition(image, (560, 200), info_bar=False).boxes[0], 300, 420)


def two_textures(gap: int = 120, seed: int = 0) -> np.ndarray:
    """Blob texture on the left, stripes on the right, a blank (noise-only) band between."""
    rng = np.random.default_rng(seed)
    rows, cols = 240, 200 + gap + 140
    image = 0.5 + 0.01 * rng.standard_normal((rows, cols))
    image[:, :200] += 0.8 * ndi.gaussian_filter(rng.standard_normal((rows, 200)), 1.5)
    image[:, 200 + gap:] += 0.15 * np.sin(np.arange(140) * 1.3)
    return np.clip(image, 0, 1).astype(np.float32)


def test_the_second_box_covers_the_other_texture():
    image = two_textures()
    one, two = plan_acquisition(image, (200, 200), 2).boxes  # 100 × 100 LR px boxes
    left = lambda b: b.col + b.cols <= 200  # noqa: E731
    right = lambda b: b.col >= 320  # noqa: E731
    assert (left(one) and right(two)) or (right(one) and left(two)), (one, two)
    assert two.gain > 0.1
    # negative control: a field of one texture gains little from a second box
    same = two_textures()
    same[:, 320:] = same[:, :140]
    _, again = plan_acquisition(same, (200, 200), 2).boxes
    assert again.gain < 0.75 * two.gain


def test_plan_command_writes_boxes_in_pixels_and_nm(tmp_path):
    image = with_bar(textured((300, 420), seed=1), 24)
    lr = tmp_path / "lr.tif"
    tifffile.imwrite(lr, image, resolution=(1e7 / 5.0, 1e7 / 5.0), resolutionunit="CENTIMETER")
    out = tmp_path / "plan.json"
    run = pairsr("plan", lr, "--hr-shape", "160x200", "--count", "2", "--out", out,
                 "--plot", tmp_path / "plan.png")
    assert run.exit_code == 0, run.output
    plan = json.loads(out.read_text())
    assert plan["field"]["rows"] == 276  # the bar was cropped on reading
    for box in plan["boxes"]:
        assert (box["rows"], box["cols"]) == (80, 100)
        assert box["row"] + box["rows"] <= 276 and box["col"] + box["cols"] <= 420
        assert box["row_nm"] == pytest.approx(5.0 * box["row"])
    assert (tmp_path / "plan.png").stat().st_size > 0
    again = pairsr("plan", lr, "--hr-shape", "160x200", "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = pairsr("plan", lr, "--hr-shape", "1000x200", "--out", tmp_path / "p2.json")
    assert bad.exit_code == 1 and "--hr-shape" in bad.output


@needs_shared
def test_plan_keeps_off_a_real_info_bar(tmp_path):
    out = tmp_path / "plan.json"
    run = pairsr("plan", REAL / "konstanz_colloids_sem/jeol_A-2h-01_x50k_2nm.tif", "--hr-shape",
                 "900x900", "--count", "2", "--no-auto-crop", "--out", out)
    assert run.exit_code == 0, run.output
    plan = json.loads(out.read_text())
    assert plan["field"]["usable_rows"] == 960  # the bar found in the pixels
    assert all(b["row"] + b["rows"] <= 960 for b in plan["boxes"])


def two_scans(tmp_path):
    """A simulated field and two HR scans of it (two crops of its HR scan), as files, with
    the exact HR→LR affine of the whole HR scan."""
    sim = simulate_pair(seed=5, lr_shape=(240, 320), hr_fraction=0.6, max_rotation_deg=1.0)
    lr, hr = tmp_path / "lr.tif", sim.hr
    tifffile.imwrite(lr, sim.lr)
    corners = [(0, 0), (hr.shape[0] - 180, hr.shape[1] - 240)]
    paths = []
    for i, (r, c) in enumerate(corners):
        paths.append(tmp_path / f"hr{i + 1}.tif")
        tifffile.imwrite(paths[-1], hr[r : r + 180, c : c + 240])
    return sim, lr, paths, corners


def test_fit_registers_each_hr_scan_and_pools_their_footprints(tmp_path):
    sim, lr, hrs, corners = two_scans(tmp_path)
    out = tmp_path / "model"
    run = pairsr("fit", lr, *hrs, "--out", out, "-p", "L=2000", "-p", "sigma=0.05")
    assert run.exit_code == 0, run.output
    records = json.loads((out / "model.json").read_text())["registrations"]
    assert len(records) == 2
    truth = true_lr_coords(sim.truth)
    for record, (r, c) in zip(records, corners, strict=True):
        centre = np.array([90.0, 120.0])  # of the crop, in its HR pixels
        found = np.array(record["matrix"]) @ centre + np.array(record["offset"])
        expected = truth[:, r + 90, c + 120]
        assert np.allclose(found, expected, atol=0.3), (found, expected)


def test_merge_fields_samples_patches_from_every_footprint():
    rng = np.random.default_rng(0)
    lr = rng.random((40, 60), dtype=np.float32)
    hr1, hr2 = np.full((80, 120), np.nan, np.float32), np.full((80, 120), np.nan, np.float32)
    hr1[:30, :40] = rng.random((30, 40))
    hr2[50:, 70:] = rng.random((30, 50))
    pairs = [TrainingPair(lr, hr1, None), TrainingPair(lr.copy(), hr2, None),
             TrainingPair(lr + 0.1, hr1, None)]  # another field stays apart
    merged = merge_fields(pairs)
    assert len(merged) == 2 and merged[1].lr is pairs[2].lr
    assert np.array_equal(np.isfinite(merged[0].hr), np.isfinite(hr1) | np.isfinite(hr2))
    sample = sample_patches([(np.zeros((80, 120), np.float32), merged[0].hr)], n=5, k=4, L=400)
    rows, cols = sample.where[:, 1], sample.where[:, 2]
    first, second = (rows < 30) & (cols < 40), (rows >= 50) & (cols >= 70)
    assert first.any() and second.any() and np.all(first | second)


def test_evaluate_splits_each_hr_scan_and_self_trains_one_model(tmp_path):
    """A pair folder with hr1 and hr2: each footprint is split 3 × 4 and scored, one model is
    fitted on both (one fit time), the whole field is scored once against gt.tif."""
    sim, _, _, _ = two_scans(tmp_path)
    tifffile.imwrite(tmp_path / "gt.tif", sim.gt)
    run = pairsr("evaluate", tmp_path, "--out", tmp_path / "rep", "-p", "lbnlm.L=2000",
                 "-p", "lbnlm.sigma=0.05", "--no-local")
    assert run.exit_code == 0, run.output
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    lb = [r for r in rows if r["method"] == "lbnlm"]
    field = tmp_path.name
    for scan in ("hr1", "hr2"):
        mine = [r for r in lb if r["pair"] == f"{field}/{scan}"]
        assert sorted(r["subimage"] for r in mine) == list(range(12))
    (whole,) = [r for r in lb if r["split"] == "whole-field-gt"]
    assert whole["pair"] == str(tmp_path / "lr.tif") and whole["dpsnr"] > 0
    assert len({r["fit_s"] for r in lb}) == 1  # one model for the field
    held = [r["dpsnr"] for r in lb if r["split"] == "out-of-sample"]
    assert len(held) == 6 and np.mean(held) > 0


def test_no_hr_scan_trains_where_another_is_held_out(tmp_path):
    """The two scans' footprints overlap: without the field's other scan, a training part keeps
    HR inside the other's held-out sub-images (negative control); with it, none."""
    from pairsr.api import prepare_pair
    from pairsr.evaluate import EvalPair, by_field, overlap_box, subimages, training_part

    sim, _, _, _ = two_scans(tmp_path)
    scans = []
    for i, (r, c) in enumerate([(0, 0), (60, 80)]):  # a third of each crop apart
        pair = prepare_pair(sim.lr, sim.hr[r : r + 180, c : c + 240], local=False)
        scans.append(EvalPair(f"hr{i + 1}", pair, field_name="field",
                              boxes=subimages(overlap_box(pair.hr, pair.zoom))))
    alone = EvalPair("other", scans[0].pair, boxes=scans[0].boxes)
    assert by_field([*scans, alone]) == [scans, [alone]]

    def seen_in_held_out(part, ep, other) -> int:
        total = 0
        for held in other.held_out():
            where = held.intersect(ep.pair.region)
            total += np.isfinite(where.relative_to(ep.pair.region).sr(2).crop(part.hr)).sum()
        return int(total)

    orders = (scans, scans[::-1])
    assert max(seen_in_held_out(training_part(ep), ep, other) for ep, other in orders) > 0
    assert [seen_in_held_out(training_part(ep, scans), ep, other) for ep, other in orders] == [0, 0]
    for ep in scans:  # its own training sub-images outside the other's held-out ones are kept
        kept, own = (np.isfinite(training_part(ep, g).hr).sum() for g in (scans, ()))
        assert 0.5 * own < kept <= own


def test_a_batch_manifest_fits_one_model_on_a_list_of_hr_scans(tmp_path):
    two_scans(tmp_path)
    (tmp_path / "day.toml").write_text(
        '[defaults]\nparams = { L = 2000, sigma = 0.05 }\n'
        '[[pair]]\nlr = "lr.tif"\nhr = ["hr1.tif", "hr2.tif"]\nout = "sr.zarr"\n')
    run = pairsr("batch", tmp_path / "day.toml", "--cluster", "none")
    assert run.exit_code == 0, run.output
    assert len(json.loads((tmp_path / "sr.zarr.model" / "model.json").read_text())
               ["registrations"]) == 2
    assert zarr.open_array(tmp_path / "sr.zarr" / "0", mode="r").shape == (480, 640)
    (tmp_path / "bad.toml").write_text('[[pair]]\nlr = "lr.tif"\nhr = []\nout = "o.zarr"\n')
    bad = pairsr("batch", tmp_path / "bad.toml", "--cluster", "none")
    assert bad.exit_code != 0 and "hr = [] is not a path or a list of paths" in bad.output


def test_hr_sets_are_read_in_order_and_checked_before_any_registration(tmp_path):
    from pairsr.cli import _pair_paths

    folder = tmp_path / "pair"
    folder.mkdir()
    for name in ("lr.tif", "hr.tif", "hr10.tif", "hr2.tif", "hr_notes.txt", "hr.json"):
        (folder / name).touch()
    (folder / "hr.zarr").mkdir()  # the same scan as hr.tif, in another format
    lr, hrs = _pair_paths(str(folder))
    assert lr.name == "lr.tif" and [p.name for p in hrs] == ["hr.tif", "hr2.tif", "hr10.tif"]
    image = tmp_path / "lr.tif"
    tifffile.imwrite(image, textured((60, 80)))
    missing = pairsr("evaluate", f"{image},{image},{tmp_path / 'hr9.tif'}", "--out", tmp_path / "r")
    assert missing.exit_code == 2 and "hr9.tif: no such file" in missing.output
    assert "registering" not in missing.output
    bad = pairsr("evaluate", f"{image},", "--out", tmp_path / "r")
    assert bad.exit_code == 2 and "expected LR,HR or LR,HR1,HR2" in bad.output
