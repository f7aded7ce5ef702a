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


def _register_case(case):
    """Register a benchmark case's pair directly (no LB-NLM fit): its registration, the
    warnings it gave and its corner error (mean, LR px) against the truth."""
    import warnings

    from pairsr.register import register_pair

    pair, _ = case.make()
    t = pair.truth
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = register_pair(pair.lr, pair.hr, zoom=t["lr_pixel_size_nm"] / t["hr_pixel_size_nm"])
    record = {"matrix": reg.matrix.tolist(), "offset": reg.offset.tolist()}
    return reg, [str(w.message) for w in caught], robustness.corner_error(t, record)[0]


def test_small_hr_misregistration_is_warned_as_imprecise(tmp_path):
    """A 132×184 HR at ×2 with too few patches for a local field: its affine cannot follow the
    scan drift and lands 0.66-0.88 LR px off; before, it was accepted without a word. The
    precision estimate now says so (and is written to reg.json)."""
    from pairsr.register import Registration

    reg, warned, err = _register_case(robustness._synthetic("small-hr", 1006, 768))
    assert err > robustness.MAX_CORNER_ERROR  # the case is at its information limit
    assert reg.corner_sd > 0.25 and err < 3 * reg.corner_sd
    assert any("imprecise registration" in w and "larger HR" in w for w in warned), warned
    assert Registration.load(reg.save(tmp_path / "reg.json")).corner_sd == reg.corner_sd


def test_precision_estimate_on_a_typical_pair():
    """A typical pair: small predicted error, no warning, and the true error within 3× of it
    (negative control for the warning above)."""
    reg, warned, err = _register_case(robustness._synthetic("typical", 0, 768))
    assert reg.corner_sd < 0.25 and err < 3 * reg.corner_sd
    assert not any("imprecise" in w for w in warned), warned


def test_low_dose_fine_fit_uses_the_overlap():
    """A low-dose pair (LR signal 18 %): the fine fit sampled the whole LR on a stride and
    followed a finite-difference gradient, and landed 0.30 LR px off; on every LR pixel under
    the HR with the spline's exact gradient it lands within 0.2."""
    _, _, err = _register_case(robustness._synthetic("low-dose", 6000, 768))
    assert err < 0.2


def test_periodic_candidates_told_apart_by_a_paired_test():
    """A 97×128 LR of the lattice with its precipitate in a ×3 HR: the candidates one period
    apart were compared by totals over different pixels (1.3σ, refused as ambiguous); the
    paired comparison on the pixels both cover registers it."""
    _, _, err = _register_case(robustness._synthetic("wide", 13002, 768))
    assert err < 0.25


def test_overhang_scored_against_the_affine_inside_the_lr():
    """With 35 % of the HR outside the LR the truth's affine over the whole HR includes drift
    no scan measured (0.67 LR px from a registration that is 0.10 px RMS right inside); the
    benchmark compares with the truth's affine over the part inside."""
    case = robustness._synthetic("overhang", 12003, 768)
    pair, _ = case.make()
    assert robustness.inside_affine(pair.truth) is not pair.truth
    _, _, err = _register_case(case)
    assert err < robustness.MAX_CORNER_ERROR
    inside = robustness._synthetic("typical", 0, 768).make()[0].truth
    assert robustness.inside_affine(inside) is inside


def test_printed_warnings_are_captured():
    """The CLI prints its warnings (wrapped by the console), which catch_warnings never saw."""
    out = "registering …\nwarning: imprecise registration: the HR's\ncorners are placed\nwarning: x"
    assert robustness._printed_warnings(out) == [
        "imprecise registration: the HR's corners are placed", "x"]


def test_periodic_case_holds_the_precipitate():
    """wide-13009: the lattice's precipitate lay at the specimen's edge, where no HR placement
    reached it, and the case used its last placement: a lattice field without aperiodic
    content, refused as ambiguous (rightly: none of the candidates' fits was told apart, the
    true one 0.75σ behind a false one). The specimen is now redrawn; the pair registers."""
    _, _, err = _register_case(robustness._synthetic("wide", 13009, 768))
    assert err < 0.25


def test_local_field_stiffness_is_chosen_by_the_lr():
    """rotated-5007 (a 174×290 HR rotated 6.8°) scanned at 200 counts per pixel: the stiff
    field (smoothing 1, the one fixed penalty before) cannot follow the drift across the
    rotated scan lines and does not improve the fine fit (-1.9σ); the field is skipped and the
    corners land 0.21 LR px off. Among the penalties of SMOOTHINGS the LR image confirms a
    softer field (3σ), which is kept and halves the error."""
    import warnings

    from pairsr.register import register_pair

    case = robustness._synthetic("rotated", 5007, 768)
    kw = {k: v for k, v in case.info.items() if k != "specimen"}
    pair = robustness._simulate(None, 5007, {**kw, "lr_dose": 200.0, "hr_dose": 200.0})
    t = pair.truth
    errors = {}
    for smoothing in (1.0, None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg = register_pair(pair.lr, pair.hr, smoothing=smoothing,
                                zoom=t["lr_pixel_size_nm"] / t["hr_pixel_size_nm"])
        record = {"matrix": reg.matrix.tolist(), "offset": reg.offset.tolist()}
        errors[smoothing] = reg.local_field is not None, robustness.corner_error(t, record)[0]
    assert not errors[1.0][0] and errors[1.0][1] > 0.18  # negative control: the stiff field
    assert errors[None][0] and errors[None][1] < 0.6 * errors[1.0][1]


@needs_real
def test_insignificant_local_field_is_not_kept():
    """Simulated scans of a 256² pentacene micrograph (×2, a 205² HR over a 128² LR, -7.7°):
    the local field from 30 patches lowered the fine fit's residual by 0.0006, a 1.6σ rise
    tested on every LR pixel, and was kept; its affine part moved the corners from 0.41 to
    0.54 LR px, with 0.22 predicted and no warning. A field is now kept only where it improves
    the fit significantly (a simulated pair with drift keeps it: test_register)."""
    case = robustness._real_case("pentacene", 2, seed=50902, lr_max=768)
    reg, warned, err = _register_case(case)
    assert reg.local_field is None and reg.patches_accepted == 0
    assert any("does not improve the fit beyond the noise" in w for w in warned), warned
    assert err < robustness.MAX_CORNER_ERROR
