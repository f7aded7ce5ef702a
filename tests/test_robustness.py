"""The robustness benchmark's CI version: one small case per failure class of issue 12.

Each case simulates a physical pair (``benchmarks/robustness.py`` builds it), runs the CLI's
``pairsr fit LR HR --out model`` and ``pairsr apply model LR --out sr.zarr`` with their defaults,
and checks the outcome against the simulator's truth: a pair that a careful human registers must
fit and apply, register within ``MAX_CORNER_ERROR`` LR px and gain over bicubic on the part of the
field the model never saw; a negative control must be refused with a handled error (a perfect
lattice may instead be accepted with a warning that names the ambiguity), and so may a pair
whose LR shows nothing at its resolution (``expect`` "blind").
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "robustness", Path(__file__).parents[1] / "benchmarks" / "robustness.py")
robustness = sys.modules.setdefault("robustness", importlib.util.module_from_spec(_SPEC))
_SPEC.loader.exec_module(robustness)

LR_MAX = 192  # LR longer side, px: small pairs, a few seconds each
POSITIVE = ["typical", "small-hr", "fraction-low", "rotated", "low-dose", "gamma", "inverted",
            "periodic", "x3", "x4", "overhang"]
NEGATIVE = ["neg-other", "neg-noise", "neg-outside", "neg-perfect-lattice"]
needs_real = pytest.mark.skipif(not robustness.REAL.is_dir(),
                                reason=f"real EM images absent: {robustness.REAL}")


def _check(row: dict) -> None:
    detail = "; ".join(f"{k}={row.get(k)}" for k in ("status", "lr", "hr", "zoom", "rotation",
                                                     "reg_err", "dpsnr", "dpsnr_in", "message",
                                                     "warnings"))
    if row["expect"] == "refuse" or (row["expect"] == "blind" and row["fit"] != "ok"):
        assert row["status"] in ("refused", "warned"), detail
        if row["status"] == "refused":  # a handled error that says what is wrong
            assert row["message"].startswith("error:") and len(row["message"]) > 30, detail
        return
    assert row["fit"] == "ok" and row["apply"] == "ok", detail
    assert row["reg_err"] < robustness.MAX_CORNER_ERROR, detail
    assert row["holdout_lr_px"] >= robustness.MIN_HOLDOUT, detail
    assert np.isfinite(row["dpsnr"]) and row["dpsnr"] > 0, detail


@pytest.mark.parametrize("cls", POSITIVE + NEGATIVE)
def test_default_workflow_on_class(cls, tmp_path):
    seed = (POSITIVE + NEGATIVE).index(cls) + 1  # a different pair for every class
    case = robustness._synthetic(cls, seed=seed, lr_max=LR_MAX)
    _check(robustness.run_case(case, tmp_path))


@needs_real
def test_default_workflow_on_small_real_specimen(tmp_path):
    """A 300×300 crop of a real micrograph as specimen, sized by the simulator itself."""
    _check(robustness.run_case(robustness._small_specimen_case(seed=1), tmp_path))


@needs_real
def test_default_workflow_on_real_periodic_specimen(tmp_path):
    """Simulated scans of the real nanowire array (periodic, with defects), rotation drawn."""
    case = robustness._real_case("nanowires-125", 0, seed=1, lr_max=LR_MAX)
    _check(robustness.run_case(case, tmp_path))


def test_scoring_regions_and_corner_error():
    """The held-out area lies outside the footprint by the margin; the corner error of the truth
    against itself is 0 and grows with a shift."""
    from pairsr.simulate import simulate_pair

    pair = simulate_pair(lr_shape=(96, 128), seed=2)
    inside, held = robustness.regions(pair.truth, 2)
    assert inside.any() and held.any() and not (inside & held).any()
    assert abs(inside.mean() - 0.25) < 0.05
    record = {"matrix": pair.truth["matrix"], "offset": pair.truth["offset"]}
    assert robustness.corner_error(pair.truth, record) == (0.0, 0.0)
    shifted = {**record, "offset": (np.asarray(record["offset"]) + np.array([0.3, 0.4])).tolist()}
    assert robustness.corner_error(pair.truth, shifted) == pytest.approx((0.5, 0.5))
