import json
import re

import numpy as np
import pytest
from scipy import ndimage as ndi

from pairsr.api import TrainingPair
from pairsr.evaluate import (
    EvalPair,
    is_train,
    overlap_box,
    run,
    subimages,
    training_part,
    write_panel,
    write_report,
)


def _rotated_valid(shape, angle):
    """An SR-grid HR field: values inside a rotated rectangle, NaN outside."""
    rows, cols = np.indices(shape, dtype=float)
    cy, cx = shape[0] / 2, shape[1] / 2
    t = np.deg2rad(angle)
    u = np.cos(t) * (rows - cy) + np.sin(t) * (cols - cx)
    v = -np.sin(t) * (rows - cy) + np.cos(t) * (cols - cx)
    inside = (np.abs(u) < 0.3 * shape[0]) & (np.abs(v) < 0.3 * shape[1])
    return np.where(inside, 0.5, np.nan).astype(np.float32)


@pytest.mark.parametrize("angle", [0.0, 2.0, -4.0])
def test_overlap_box_is_fully_covered_and_splits_3x4(angle):
    hr = _rotated_valid((240, 320), angle)
    y0, y1, x0, x1 = overlap_box(hr)
    assert (y1 - y0) % 3 == 0 and (x1 - x0) % 4 == 0
    assert np.isfinite(hr[2 * y0 : 2 * y1, 2 * x0 : 2 * x1]).all()
    # Close to the largest: the inscribed box of a rotated 0.6-scale rectangle.
    assert (y1 - y0) * (x1 - x0) > 0.6 * (0.6 * 120) * (0.6 * 160)
    boxes = subimages((y0, y1, x0, x1))
    assert len(boxes) == 12
    assert [is_train(i) for i in range(12)] == [True, True, True, False] * 3
    assert sum((b[1] - b[0]) * (b[3] - b[2]) for b in boxes) == (y1 - y0) * (x1 - x0)


def test_overlap_box_without_hr_is_an_error():
    with pytest.raises(ValueError, match="covers no"):
        overlap_box(np.full((40, 40), np.nan, np.float32))


@pytest.fixture(scope="module")
def eval_pair():
    rng = np.random.default_rng(3)
    truth = ndi.gaussian_filter(rng.random((192, 256)), 1.5)
    truth = ((truth - truth.min()) / np.ptp(truth)).astype(np.float32)
    lr = ndi.gaussian_filter(truth, 1.0).reshape(96, 2, 128, 2).mean((1, 3))
    lr = np.clip(0.7 * lr + 0.1 + 0.03 * rng.standard_normal(lr.shape), 0, 1).astype(np.float32)
    hr = np.clip(truth + 0.02 * rng.standard_normal(truth.shape), 0, 1).astype(np.float32)
    hr[:, :8] = np.nan  # the HR scan misses a strip
    return EvalPair("synthetic", TrainingPair(lr, hr, None), gt=truth)


def test_training_part_hides_the_held_out_column(eval_pair):
    eval_pair.boxes = subimages(overlap_box(eval_pair.pair.hr))
    part = training_part(eval_pair)
    for i, (y0, y1, x0, x1) in enumerate(eval_pair.boxes):
        region = part.hr[2 * y0 : 2 * y1, 2 * x0 : 2 * x1]
        assert np.isfinite(region).all() == is_train(i)
        assert np.isnan(region).all() != is_train(i)


def test_protocol_scores_every_subimage_and_writes_a_report(eval_pair, tmp_path):
    crops = {}
    params = {"lbnlm": {"k": 8, "K": 4, "L": 1600}}
    rows = run([eval_pair], ["bicubic", "lbnlm"], params=params, crops=crops)
    lb = [r for r in rows if r["method"] == "lbnlm"]
    assert sorted(r["subimage"] for r in lb) == [-1, *range(12)]
    assert {r["split"] for r in lb} == {"in-sample", "out-of-sample", "whole-field-gt"}
    bic = [r for r in rows if r["method"] == "bicubic"]
    assert all(r["dpsnr"] == 0 for r in bic)
    # The learnt contrast mapping beats bicubic in and out of sample.
    assert all(r["dpsnr"] > 0 for r in lb)
    table = write_report(rows, tmp_path / "rep")
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["summary"] == json.loads(json.dumps(table))
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| self | lbnlm | out-of-sample | 3 |" in text
    # Table II: fit seconds and inference s/MPix of the whole-field prediction (2H × 2W pixels).
    timing = re.search(r"^\| lbnlm \| ([\d.]+) \| – \| ([\d.]+) \|$", text, re.M)
    whole = next(r for r in lb if r["split"] == "whole-field-gt")
    assert float(timing[1]) == pytest.approx(lb[0]["fit_s"], abs=0.05)
    assert whole["predict_mpix"] == 4 * eval_pair.pair.lr.size / 1e6
    assert float(timing[2]) == pytest.approx(whole["predict_s"] / whole["predict_mpix"], abs=0.005)
    with pytest.raises(FileExistsError):
        write_report(rows, tmp_path / "rep")
    panel = write_panel(crops, tmp_path / "rep" / "panel.png")
    assert panel.stat().st_size > 1000
