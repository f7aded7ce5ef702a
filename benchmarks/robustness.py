"""Robustness benchmark: the default workflow, end to end, on a wide matrix of physical pairs.

    .venv/bin/python benchmarks/robustness.py [--quick] [--cases N] [--seed S] [--csv FILE]
        [--subprocess] [--sigmas 0.01,0.02,...] [--keep DIR] [--only NAME,CLASS,...]
        [--register-only]

Each case simulates a physical pair (:func:`pairsr.simulate.simulate_pair`, two independent scans)
with acquisition settings drawn from :data:`pairsr.simulate.WIDE_RANGES` (HR 128-4096 px, HR
fraction 10-100 %, rotation ±8°, dose 2-200, gamma 0.6-1.7, inverted detectors, ×2/×3/×4, periodic
specimens), or of a real HR micrograph from ``../shared/data/real`` (info bars cropped), writes
``lr.tif`` and ``hr.tif`` with their pixel sizes, and runs what a user runs::

    pairsr fit LR HR --out model          # CLI defaults: LB-NLM, zoom and options automatic
    pairsr apply model LR --out sr.zarr

By default both commands run in this process through the CLI's own entry point (typer's
``CliRunner``: the same option parsing and code as the ``pairsr`` executable, without ~1.5 s of
interpreter start-up and imports per command); ``--subprocess`` runs the ``pairsr`` executable.

Classes (``CLASSES``; each draws what it names from the wide ranges and keeps the simulator's
defaults otherwise: ×2, HR 25 % of the field, rotation ±2°, doses 15-60, gammas 0.8-1.25, LR
256-768 px): ``typical``; ``small-hr`` (HR 128-600 px, 10-30 % of the field, ±3°); ``large-hr``
(HR 2048-4096 px, ×3/×4, LR ≤ 1280 px); ``fraction-low`` (10-15 %, the LR long enough
for an HR of 128 px or more, the wide ranges' least), ``fraction-high``
(60-100 %, capped to what fits rotated); ``rotated`` (5-8°); ``low-dose`` (2-8 counts/px, each
scan); ``gamma`` (0.6-0.75 or 1.4-1.7, each scan); ``inverted`` (the LR's or the HR's detector);
``periodic`` (the built-in lattice with a precipitate and vacancies, ±4°, the HR field holding the
precipitate); ``x3``, ``x4``;
``overhang`` (60-95 % of the HR inside the LR); ``wide`` (everything at once, built-in
nanocomposite or lattice, the HR holding the lattice's precipitate); ``small-specimen`` (a
300×300 crop of a real micrograph, sized by the simulator, ±3°); ``real-<specimen>`` (each
real micrograph: rotation within ±3°; zoom, rotation and fraction drawn; everything drawn);
negative controls ``neg-other`` (the HR of another specimen),
``neg-noise`` (a white-noise HR), ``neg-outside`` (20-45 % of the HR inside the LR) and
``neg-perfect-lattice`` (a lattice without aperiodic content: ambiguous by a period).

Per case it reports:

* ``class``: what the case stresses (``CLASSES``), ``expect``: ``accept``, ``refuse`` or
  ``blind`` (an acquisition whose LR shows nothing at its resolution: the noise-free truth
  explains under ``MIN_LR_SIGNAL`` of its variance, ``lr_signal`` in the CSV; it may be refused,
  and if fitted it must register like an ``accept``);
* ``reg_err``: registration corner error vs truth, LR px: the mean distance of the HR image's 4
  corners mapped by the fitted model's registration record (``model.json``) and by the
  simulator's ``truth.json`` affine (max in the CSV); for an HR partly outside the LR, the
  truth's least-squares affine over the part inside (the registration measures no more);
  ``reg_sd`` (``pred``): the registration's own prediction of it (``corner_sd``);
* ``fit`` / ``apply``: exit status; ``message``: the error (or warnings) the CLI printed;
* ``dpsnr``: out-of-sample ΔPSNR (dB) of ``sr.zarr`` over bicubic, both against the simulator's
  noise-free ``gt`` (the HR detector's rendering of the whole field on the SR grid, where the LR
  scan sampled it: ``gt_drift``), over the SR
  pixels more than ``HOLDOUT_MARGIN`` LR px outside the true HR footprint: the part of the field
  the model never saw (NaN when that is under ``MIN_HOLDOUT`` LR px; ``dpsnr_in``, inside the
  footprint against ``gt``, is in the CSV). Bicubic keeps the LR detector's response, so
  ``dpsnr`` also credits the learned intensity mapping; ``dpsnr_matched`` is the gain over a
  bicubic whose intensities are mapped to the HR's by the least-squares affine fitted inside
  the footprint (the training area): the gain beyond a two-parameter contrast match;
* ``status``: ``ok``; for the negative controls (HR of another specimen, pure noise, under half
  of the HR inside the LR, a perfect lattice) ``refused`` (as expected: a handled error) or
  ``warned`` (a perfect lattice accepted with a warning that names the ambiguity); failures:
  ``FAIL-refused`` (a pair that should fit), ``FAIL-crash`` (an unhandled exception),
  ``FAIL-misregistered`` (corner error > ``MAX_CORNER_ERROR`` LR px without the registration's
  "imprecise registration" warning; with it the case is ``imprecise``), ``FAIL-worse`` (dpsnr ≤ 0),
  ``FAIL-accepted`` (a negative control accepted silently).

It prints one row per case as it goes (time per case included), then the failure count by class
and the registration error and ΔPSNR distributions. ``--sigmas`` also fits LB-NLM with each fixed
σ on every accepted case (same registration, through ``pairsr.api``) to compare the automatic σ
with the best single σ an oracle would choose afterwards. ``--register-only`` registers each pair
in this process as ``pairsr fit`` does and stops there (:func:`register_case`: the same zoom,
options, refusals, warnings and corner error, no model, no ΔPSNR), in a fraction of the time: the
run to repeat while working on the registration. Exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pairsr.grid import bicubic, sr_to_lr
from pairsr.io import read_image, to_float32, write_image
from pairsr.metrics import psnr
from pairsr.simulate import (
    MARGIN,
    SYNTHETIC_SCALE,
    VARIABLES,
    WIDE_RANGES,
    SimulatedPair,
    draw_acquisition,
    lattice,
    load_specimen,
    simulate_pair,
    true_lr_coords,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
#: Real HR micrographs used as specimens: files (one drawn per case) and the crop that drops the
#: microscope's info bar (SOURCES.md). The LR-only acquisitions (``real_lr/``, the semi-synthetic
#: PSSR LR) are not specimens; of the two Katsuno exposures of one field, one is used.
REAL_SPECIMENS = {
    "jeol-spheres": (["konstanz_colloids_sem/jeol_A-2h-01_x50k_2nm.tif"], ":960,"),
    "zeiss-spheres": (["konstanz_colloids_sem/zeiss_GM59_20_spheres_4.466nm.tif"], ":700,"),
    "tsem-brain": (["pssr_napari/hr_2nm_tsem_small.tif"], None),
    "ssem-brain": (["pssr_napari/lr_8nm_ssem_large_00.tif"], ":2048,:2048"),
    "nanowires-140": (["deepsem_nanowires/NWs-8kMag_140nm_17_cropped.png"], None),
    "nanowires-125": (["deepsem_nanowires/NWs-8kMag_125nm_03_cropped.png"], None),
    "haadf-stem": (["r_em_haadf_stem/sgl_exp_hrstem_2048.tif"], None),
    "lowdose-tem": (["katsuno_lowdose_tem/train_0001.tif"], None),
    "au-nanorods": ([f"afrl_mdf_nanorods_pentacene/hr_2nm_goldnanorods/test_{i:03d}.png"
                     for i in range(1, 11)], None),
    "pentacene": ([f"afrl_mdf_nanorods_pentacene/hr_pentacene/test_{i:03d}.png"
                   for i in range(1, 11)], None),
    "ecoli": ([f"afrl_mdf_nanorods_pentacene/hr_ecoli/test_{i:03d}.png" for i in range(1, 4)],
              None),
}
#: The real specimens large enough to cut a 300×300 "small specimen" from.
LARGE_REAL = ("jeol-spheres", "zeiss-spheres", "tsem-brain", "ssem-brain", "nanowires-125",
              "haadf-stem", "lowdose-tem")
HOLDOUT_MARGIN = 8  # LR px between the HR footprint and the held-out area (patch + drift)
MIN_HOLDOUT = 1000  # LR px of held-out area needed to score out of sample
MAX_CORNER_ERROR = 0.5  # LR px; a fitted pair registered worse than this is a failure
TYPICAL_LR = (256, 768)  # LR longer side of the cases that do not draw the size
#: Least fraction of the LR's variance that the simulator's noise-free truth explains
#: (:func:`lr_signal`) for a pair to count as one a human can register: under it the LR shows
#: nothing at its resolution (a dim specimen at a low dose), and a refusal is deliberate.
MIN_LR_SIGNAL = 0.05
#: Words by which a warning says that the registration is imprecise: a pair misregistered by
#: more than ``MAX_CORNER_ERROR`` with it is reported (``imprecise``), not a failure.
IMPRECISE_WORDS = ("imprecise registration",)
#: Words by which a warning names an ambiguous (periodic) match.
AMBIGUITY_WORDS = ("ambigu", "period")


@dataclass
class Case:
    """One benchmark case: a name, its class, what to expect, and how to make its pair."""

    name: str
    cls: str
    expect: str  # "accept" or "refuse" (run_case: "blind" where the LR shows nothing)
    make: Callable[[], tuple[SimulatedPair, np.ndarray | None]]  # pair, replacement HR or None
    info: dict = field(default_factory=dict)


def _real(name: str, rng: np.random.Generator) -> np.ndarray:
    files, crop = REAL_SPECIMENS[name]
    path = REAL / files[int(rng.integers(len(files)))]
    return load_specimen(path, crop=crop).values


def _simulate(specimen, seed: int, kw: dict) -> SimulatedPair:
    return simulate_pair(specimen, seed=seed, gt_drift=True, **kw)


def _acq(rng, vary, *, specimen_shape=None, lr_max=768, **ranges) -> dict:
    ranges.setdefault("lr_side", (min(TYPICAL_LR[0], lr_max), min(TYPICAL_LR[1], lr_max)))
    return draw_acquisition(rng, vary=vary, specimen_shape=specimen_shape, lr_max=lr_max,
                            ranges=ranges)


def _synthetic(cls: str, seed: int, lr_max: int) -> Case:
    """A built-in-specimen case of class ``cls``."""
    rng = np.random.default_rng(seed)
    specimen = None
    expect = "accept"
    replace = None
    if cls == "typical":
        kw = _acq(rng, (), lr_max=lr_max)
    elif cls == "small-hr":  # a sub-area scan of 128-600 px, 10-30 % of the field, rotated
        kw = _acq(rng, ("size", "fraction", "rotation"), lr_max=lr_max, hr_side=(128, 600),
                  hr_fraction=(0.1, 0.3), rotation_deg=3.0)
    elif cls == "large-hr":
        kw = _acq(rng, ("size", "zoom", "rotation", "fraction"), lr_max=max(lr_max, 1280),
                  hr_side=(2048, 4096), hr_fraction=(0.5, 1.0), zoom=(3, 4))
    elif cls == "fraction-low":  # an LR long enough for the HR's longer side to reach 128 px
        lo = int(np.ceil(WIDE_RANGES["hr_side"][0] / (2 * np.sqrt(0.10))))
        kw = _acq(rng, ("fraction",), lr_max=max(lr_max, lo), hr_fraction=(0.10, 0.15),
                  lr_side=(max(lo, min(TYPICAL_LR[0], lr_max)), max(lo, min(TYPICAL_LR[1],
                                                                             lr_max))))
    elif cls == "fraction-high":
        kw = _acq(rng, ("fraction",), lr_max=lr_max, hr_fraction=(0.6, 1.0))
    elif cls == "rotated":  # |rotation| in 5-8°, beyond the simulator's default ±2°
        kw = {"rotation_deg": 0.0}
        while abs(kw["rotation_deg"]) < 5.0:
            kw = _acq(rng, ("rotation",), lr_max=lr_max)
    elif cls == "low-dose":
        kw = _acq(rng, ("dose",), lr_max=lr_max, dose=(2.0, 8.0))
    elif cls == "gamma":
        kw = _acq(rng, (), lr_max=lr_max)
        kw["lr_gamma"], kw["hr_gamma"] = (float(rng.choice([rng.uniform(0.6, 0.75),
                                                            rng.uniform(1.4, 1.7)]))
                                          for _ in range(2))
    elif cls == "inverted":
        kw = _acq(rng, (), lr_max=lr_max)
        kw["lr_inverted" if seed % 2 else "hr_inverted"] = True
    elif cls == "periodic":
        specimen = "lattice"
        kw = _acq(rng, ("rotation",), lr_max=lr_max, rotation_deg=4.0)
        return Case(f"{cls}-{seed}", cls, expect, lambda: _periodic_pair(seed, kw),
                    _summary(kw, specimen))
    elif cls in ("x3", "x4"):
        kw = _acq(rng, ("zoom",), lr_max=lr_max, zoom=(int(cls[1]),))
    elif cls == "overhang":
        kw = _acq(rng, ("fraction",), lr_max=lr_max, hr_fraction=(0.25, 0.6))
        kw["hr_inside"] = float(rng.uniform(0.6, 0.95))
    elif cls == "wide":
        specimen = str(rng.choice(["nanocomposite", "lattice"]))
        kw = _acq(rng, VARIABLES, lr_max=lr_max)
        if specimen == "lattice":  # with its precipitate in the HR, as in "periodic"
            return Case(f"{cls}-{seed}", cls, expect, lambda: _periodic_pair(seed, kw),
                        _summary(kw, specimen))
    elif cls == "neg-outside":
        expect = "refuse"
        kw = _acq(rng, ("fraction",), lr_max=lr_max, hr_fraction=(0.15, 0.4))
        kw["hr_inside"] = float(rng.uniform(0.2, 0.45))
    elif cls == "neg-perfect-lattice":
        expect = "refuse"
        specimen = "lattice-perfect"
        kw = _acq(rng, (), lr_max=lr_max)
    elif cls in ("neg-other", "neg-noise"):
        expect = "refuse"
        kw = _acq(rng, (), lr_max=lr_max)
        replace = cls
    else:
        raise ValueError(f"unknown class {cls!r}")

    def make():
        pair = _simulate(specimen, seed, kw)
        if replace == "neg-noise":
            noise = np.random.default_rng(seed + 1).integers(0, 256, pair.hr.shape)
            return pair, noise.astype(np.uint8)
        if replace == "neg-other":  # the HR of another specimen, same geometry otherwise
            other = _simulate("lattice", seed + 1, kw)
            return pair, other.hr
        return pair, None

    return Case(f"{cls}-{seed}", cls, expect, make, _summary(kw, specimen or "nanocomposite"))


def _periodic_pair(seed: int, kw: dict, tries: int = 50) -> tuple[SimulatedPair, None]:
    """A pair of the built-in lattice whose HR field holds its precipitate: the aperiodic
    content that tells one period from the next. A lattice HR field without it (the
    site-to-site spread and a rare vacancy alone) is as ambiguous as a perfect lattice to a
    careful human, which ``neg-perfect-lattice`` covers. The specimen is drawn (seed ``seed``),
    then the HR's placement (seeds ``seed + k``) until the precipitate's centre lies inside it;
    where no placement reaches it (a precipitate at the specimen's edge), the specimen is
    redrawn (seeds ``seed + tries·j``)."""
    lr_shape = kw["lr_shape"]
    spec_shape = tuple(int(np.ceil(n * SYNTHETIC_SCALE + 2 * MARGIN)) for n in lr_shape)
    for j in range(tries):
        draw = seed + tries * j
        spec, perfect = (lattice(spec_shape, np.random.default_rng(draw), SYNTHETIC_SCALE,
                                 perfect=p) for p in (False, True))
        # The precipitate: where the specimen differs most from the perfect lattice over a
        # region larger than a site (a vacancy or the site spread, smoothed over a few sites,
        # fades).
        difference = ndi.gaussian_filter(np.abs(spec - perfect), 4 * SYNTHETIC_SCALE)
        centre = np.array(np.unravel_index(np.argmax(difference), difference.shape), dtype=float)
        for k in range(tries):
            pair = _simulate(spec, seed + k, {**kw, "scale": SYNTHETIC_SCALE})
            t = pair.truth
            lr = (centre - np.asarray(t["lr_scan"]["origin"])) / t["scale"]  # LR px, no drift
            u = np.linalg.solve(np.asarray(t["matrix"]), lr - np.asarray(t["offset"]))  # HR px
            if np.all(u >= 0) and np.all(u <= np.array(pair.hr.shape) - 1):
                return pair, None
    raise RuntimeError(f"no HR placement holds the lattice's precipitate (seed {seed})")


def _real_case(name: str, variant: int, seed: int, lr_max: int) -> Case:
    """A real-specimen case: variant 0 typical (rotation drawn within ±3°), 1 zoom, rotation and
    fraction drawn, 2 everything drawn."""
    rng = np.random.default_rng(seed)
    spec = _real(name, rng)
    vary = [("rotation",), ("zoom", "rotation", "fraction"), VARIABLES][variant]
    kw = _acq(rng, vary, specimen_shape=spec.shape, lr_max=lr_max, hr_fraction=(0.2, 1.0),
              rotation_deg=3.0 if variant == 0 else 8.0)
    return Case(f"real-{name}-{seed}", f"real-{name}", "accept",
                lambda: (_simulate(spec, seed, kw), None), _summary(kw, name))


def _small_specimen_case(seed: int) -> Case:
    """A 300×300 crop of a real micrograph as specimen (``pairsr simulate --specimen``)."""
    rng = np.random.default_rng(seed)
    name = LARGE_REAL[int(rng.integers(len(LARGE_REAL)))]
    spec = _real(name, rng)
    y, x = (int(rng.integers(0, n - 300 + 1)) for n in spec.shape)
    crop = spec[y:y + 300, x:x + 300]
    kw = _acq(rng, ("rotation",), specimen_shape=crop.shape, rotation_deg=3.0)
    kw.pop("lr_shape"), kw.pop("hr_shape")  # the simulator's own sizing, as the CLI leaves it
    return Case(f"small-specimen-{seed}", "small-specimen", "accept",
                lambda: (_simulate(crop, seed, kw), None), _summary(kw, f"{name} 300² crop"))


def _summary(kw: dict, specimen: str) -> dict:
    return {"specimen": specimen, **kw}


#: Classes and cases per class in the full matrix (the real specimens come on top: 3 each).
CLASSES = {
    "typical": 8, "small-hr": 8, "large-hr": 2, "fraction-low": 8, "fraction-high": 8,
    "rotated": 8, "low-dose": 8, "gamma": 8, "inverted": 8, "periodic": 8, "x3": 8, "x4": 8,
    "overhang": 6, "wide": 12, "small-specimen": 4,
    "neg-other": 3, "neg-noise": 3, "neg-outside": 3, "neg-perfect-lattice": 3,
}  # fmt: skip


def matrix(seed: int = 0, *, lr_max: int = 768, per_class: int | None = None) -> list[Case]:
    """All cases, interleaved class by class (so that the first N cover the classes evenly).

    ``per_class`` caps the cases per class (``--quick``: 1); real specimens get 3 each (capped
    too) when ``../shared/data/real`` exists.
    """
    groups: list[list[Case]] = []
    for c, (cls, count) in enumerate(CLASSES.items()):
        n = min(count, per_class or count)
        seeds = [seed * 100_000 + c * 1000 + i for i in range(n)]
        if cls == "small-specimen":
            if REAL.is_dir():
                groups.append([_small_specimen_case(s) for s in seeds])
        elif cls == "large-hr" and per_class:
            continue  # too slow for a quick run
        else:
            groups.append([_synthetic(cls, s, lr_max) for s in seeds])
    if REAL.is_dir():
        for r, name in enumerate(REAL_SPECIMENS):
            n = min(3, per_class or 3)
            groups.append([_real_case(name, v, seed * 100_000 + 50_000 + r * 100 + v, lr_max)
                           for v in range(n)])
    else:
        print(f"note: {REAL} is absent; real specimens skipped")
    order = []
    for i in range(max(len(g) for g in groups)):
        order += [g[i] for g in groups if i < len(g)]
    return order


# ----------------------------------------------------------------------------- running the CLI


@dataclass
class Outcome:
    code: int
    output: str
    crashed: bool
    warnings: list[str]


def _cli_inprocess(args: list[str]) -> Outcome:
    from typer.testing import CliRunner

    from pairsr.cli import app

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, args)
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    output = result.output
    if crashed:
        output += "".join(traceback.format_exception(*result.exc_info))
    return Outcome(result.exit_code, output, crashed,
                   [str(w.message) for w in caught] + _printed_warnings(output))


def _printed_warnings(output: str) -> list[str]:
    """The warnings the CLI printed (``warning: …``; the console wraps long ones), one string
    each: the CLI shows warnings itself, so ``catch_warnings`` does not see them."""
    text = " ".join(output.split())
    return [part.split(" error:")[0].strip() for part in text.split("warning: ")[1:]]


def _cli_subprocess(args: list[str]) -> Outcome:
    exe = Path(sys.executable).with_name("pairsr")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pairsr.cli"]
    proc = subprocess.run(cmd + args, capture_output=True, text=True, env=os.environ.copy())
    output = proc.stdout + proc.stderr
    warned = [line.split("Warning:", 1)[1].strip() for line in output.splitlines()
              if "Warning:" in line]
    return Outcome(proc.returncode, output, "Traceback" in output, warned)


def _error_line(out: Outcome) -> str:
    lines = [ln.strip() for ln in out.output.splitlines() if ln.strip()]
    if out.crashed:
        tail = [ln for ln in lines if not ln.startswith("File ")]
        return "crash: " + (tail[-1] if tail else "?")
    first = next((i for i, ln in enumerate(lines) if ln.startswith("error:")), None)
    if first is None:
        return lines[-1] if lines else f"exit code {out.code}"
    return " ".join(lines[first:])  # the console wraps long messages


# ----------------------------------------------------------------------------- scoring


def _footprint_coords(truth: dict, shape: tuple[int, int], zoom: int) -> np.ndarray:
    """HR (row, col) of every SR pixel centre of an LR field of ``shape``, through the truth
    affine (2, zH, zW)."""
    m, off = np.asarray(truth["matrix"]), np.asarray(truth["offset"])
    rows = sr_to_lr(np.arange(shape[0] * zoom), zoom)
    cols = sr_to_lr(np.arange(shape[1] * zoom), zoom)
    lr = np.stack(np.meshgrid(rows, cols, indexing="ij"))
    return np.tensordot(np.linalg.inv(m), lr - off[:, None, None], axes=1)


def regions(truth: dict, zoom: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean SR-grid masks: inside the true HR footprint, and held out (more than
    ``HOLDOUT_MARGIN`` LR px outside it)."""
    h, w = truth["hr_shape"]
    hr = _footprint_coords(truth, truth["lr_shape"], zoom)
    pad = HOLDOUT_MARGIN * truth["zoom"]  # HR px
    inside = (hr[0] >= -0.5) & (hr[0] <= h - 0.5) & (hr[1] >= -0.5) & (hr[1] <= w - 0.5)
    near = ((hr[0] >= -0.5 - pad) & (hr[0] <= h - 0.5 + pad)
            & (hr[1] >= -0.5 - pad) & (hr[1] <= w - 0.5 + pad))
    return inside, ~near


def inside_affine(truth: dict) -> dict:
    """The truth's affine (``matrix``, ``offset``) as the least-squares fit of the exact
    correspondence over the HR pixels that the LR scanned, as the registration defines it (its
    local field is measured there only); ``truth`` itself when the whole HR lies inside."""
    if truth.get("hr_inside", 1.0) >= 0.999:
        return truth
    h, w = truth["hr_shape"]
    step = max(1, min(h, w) // 64)
    lr = true_lr_coords(truth)[:, ::step, ::step].reshape(2, -1)
    hr = np.mgrid[0:h:step, 0:w:step].reshape(2, -1).astype(float)
    ok = np.all((lr >= -0.5) & (lr <= np.asarray(truth["lr_shape"])[:, None] - 0.5), axis=0)
    design = np.stack([hr[0, ok], hr[1, ok], np.ones(ok.sum())], axis=1)
    coef, *_ = np.linalg.lstsq(design, lr[:, ok].T, rcond=None)
    return {"matrix": coef[:2].T.tolist(), "offset": coef[2].tolist()}


def corner_error(truth: dict, record: dict) -> tuple[float, float]:
    """Mean and max distance (LR px) of the HR corners under the fitted and the true affine
    (:func:`inside_affine`)."""
    h, w = truth["hr_shape"]
    corners = np.array([[-0.5, -0.5], [-0.5, w - 0.5], [h - 0.5, w - 0.5], [h - 0.5, -0.5]]).T
    maps = [np.asarray(r["matrix"]) @ corners + np.asarray(r["offset"])[:, None]
            for r in (inside_affine(truth), record)]
    d = np.hypot(*(maps[0] - maps[1]))
    return float(d.mean()), float(d.max())


def gains(sr: np.ndarray, lr: np.ndarray, gt: np.ndarray, truth: dict, zoom: int) -> dict:
    """ΔPSNR of ``sr`` over bicubic against ``gt``: held out, matched-contrast held out, inside."""
    bic = np.clip(bicubic(lr, zoom), 0.0, 1.0)
    inside, held = regions(truth, zoom)
    out = {"dpsnr": np.nan, "dpsnr_matched": np.nan, "dpsnr_in": np.nan,
           "holdout_lr_px": int(held.sum() / zoom**2)}
    a, b = np.polyfit(bic[inside], gt[inside], 1)
    matched = np.clip(a * bic + b, 0.0, 1.0)
    if inside.any():
        out["dpsnr_in"] = psnr(sr, gt, mask=inside) - psnr(bic, gt, mask=inside)
    if out["holdout_lr_px"] >= MIN_HOLDOUT:
        out["dpsnr"] = psnr(sr, gt, mask=held) - psnr(bic, gt, mask=held)
        out["dpsnr_matched"] = psnr(sr, gt, mask=held) - psnr(matched, gt, mask=held)
    return out


def lr_signal(pair: SimulatedPair) -> float:
    """Fraction of the LR's variance explained by the truth: the noise-free ``gt`` (SR grid)
    averaged over each LR pixel, mapped by the least-squares quadratic (detector response and
    gamma): how much of the LR is specimen rather than noise."""
    z = int(round(pair.truth["nominal_zoom"]))
    lr = to_float32(pair.lr).astype(float).ravel()
    h, w = pair.lr.shape
    g = pair.gt[:h * z, :w * z].reshape(h, z, w, z).mean((1, 3)).ravel().astype(float)
    design = np.stack([np.ones_like(g), g, g * g], axis=1)
    coef, *_ = np.linalg.lstsq(design, lr, rcond=None)
    return float(1 - np.mean((lr - design @ coef) ** 2) / max(lr.var(), 1e-30))


def _describe(case: Case, pair: SimulatedPair, t0: float) -> dict:
    """The row of ``case``: its name, class, expectation and settings, and its pair's sizes,
    geometry, LR signal and simulation time (since ``t0``); an ``accept`` case whose LR shows
    nothing becomes ``blind``."""
    t = pair.truth
    row = {"case": case.name, "class": case.cls, "expect": case.expect, **case.info}
    row.update(lr=pair.lr.shape, hr=pair.hr.shape, zoom=int(round(t["nominal_zoom"])),
               rotation=t["rotation_deg"], hr_inside=t["hr_inside"], lr_signal=lr_signal(pair),
               t_sim=time.perf_counter() - t0)
    if row["expect"] == "accept" and row["lr_signal"] < MIN_LR_SIGNAL:
        row["expect"] = "blind"  # the LR shows nothing: a refusal is right, a fit must be right
    return row


def register_case(case: Case, local: bool = True) -> tuple[dict, object | None]:
    """Simulate ``case`` and register it in this process as ``pairsr fit`` does (the zoom from
    the scans' pixel sizes, the default options; the local field unless not ``local``), without
    the model fit: the row (``status`` from the registration alone, ``scored`` False) and the
    registration (None if refused)."""
    import xarray as xr

    from pairsr.api import register_images
    from pairsr.register import RegistrationError

    t0 = time.perf_counter()
    pair, replaced_hr = case.make()
    row = {**_describe(case, pair, t0), "scored": False, "apply": "-", "message": ""}
    t = pair.truth
    images = [xr.DataArray(image, dims=("y", "x"), attrs={"pixel_size_nm": t[key]})
              for image, key in ((pair.lr, "lr_pixel_size_nm"),
                                 (pair.hr if replaced_hr is None else replaced_hr,
                                  "hr_pixel_size_nm"))]
    reg = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            reg, _ = register_images(*images, local=local)
        except (RegistrationError, ValueError) as err:
            row["fit"], row["message"] = "refused", str(err)
        except Exception:  # reported as a crash
            row["fit"], row["message"] = "crash", traceback.format_exc().splitlines()[-1]
    found = [str(w.message) for w in caught]
    row["warnings"] = " | ".join(dict.fromkeys(found))
    if reg is not None:
        row["fit"] = row["apply"] = "ok"
        row["reg_err"], row["reg_err_max"] = corner_error(t, reg.to_dict())
        row["reg_sd"] = reg.corner_sd
    row["status"] = status(row)
    row["t_case"] = time.perf_counter() - t0
    return row, reg


def run_case(case: Case, work: Path, *, cli=_cli_inprocess, sigmas=()) -> dict:
    """Simulate ``case``, run ``pairsr fit`` and ``pairsr apply`` on it, and score the result."""
    t0 = time.perf_counter()
    folder = work / case.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pair, replaced_hr = case.make()
    t = pair.truth
    zoom = int(round(t["nominal_zoom"]))
    lr_path, hr_path = folder / "lr.tif", folder / "hr.tif"
    write_image(lr_path, pair.lr, pixel_size_nm=t["lr_pixel_size_nm"])
    write_image(hr_path, pair.hr if replaced_hr is None else replaced_hr,
                pixel_size_nm=t["hr_pixel_size_nm"])
    row = _describe(case, pair, t0)
    fit = cli(["fit", str(lr_path), str(hr_path), "--out", str(folder / "model")])
    row["t_fit"] = time.perf_counter() - t0 - row["t_sim"]
    row["fit"] = "ok" if fit.code == 0 else ("crash" if fit.crashed else "refused")
    row["warnings"] = " | ".join(dict.fromkeys(fit.warnings))
    row["message"] = "" if fit.code == 0 else _error_line(fit)
    row["apply"] = "-"
    if fit.code == 0:
        record = json.loads((folder / "model" / "model.json").read_text())["registrations"][0]
        row["reg_err"], row["reg_err_max"] = corner_error(t, record)
        row["reg_sd"] = record.get("corner_sd", np.nan)
        t1 = time.perf_counter()
        app = cli(["apply", str(folder / "model"), str(lr_path), "--out", str(folder / "sr.zarr")])
        row["t_apply"] = time.perf_counter() - t1
        row["apply"] = "ok" if app.code == 0 else ("crash" if app.crashed else "refused")
        if app.code != 0:
            row["message"] = _error_line(app)
        elif replaced_hr is None:
            sr = to_float32(read_image(folder / "sr.zarr").values)
            lr = to_float32(pair.lr)
            row.update(gains(sr, lr, pair.gt, t, zoom))
            if sigmas:
                row["sigma_dpsnr"] = oracle_sigmas(pair, sigmas, row["dpsnr"])
    row["status"] = status(row)
    row["t_case"] = time.perf_counter() - t0
    return row


def oracle_sigmas(pair: SimulatedPair, sigmas, default: float) -> dict:
    """Held-out ΔPSNR of LB-NLM at each fixed σ on this pair (one registration, via the API)."""
    from pairsr.api import fit, prepare_pair, super_resolve

    if not np.isfinite(default):
        return {}
    zoom = int(round(pair.truth["nominal_zoom"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prepared = prepare_pair(pair.lr, pair.hr, zoom=zoom)
        except ValueError as err:  # the API's defaults may differ from the CLI's
            print(f"  (no σ comparison: {err})")
            return {}
        out = {}
        for sigma in sigmas:
            model = fit([prepared], "lbnlm", zoom=zoom, sigma=sigma)
            sr = to_float32(super_resolve(model, pair.lr).values)
            out[sigma] = gains(sr, to_float32(pair.lr), pair.gt, pair.truth, zoom)["dpsnr"]
    return out


def status(row: dict) -> str:
    accepted = row["fit"] == "ok" and row["apply"] == "ok"
    crashed = "crash" in (row["fit"], row["apply"])
    if crashed:
        return "FAIL-crash"
    if row["expect"] == "refuse" or (row["expect"] == "blind" and not accepted):
        if not accepted:
            return "refused"
        ambiguous = any(w in row["warnings"].lower() for w in AMBIGUITY_WORDS)
        return "warned" if ambiguous and "lattice" in row["class"] else "FAIL-accepted"
    if not accepted:
        return "FAIL-refused"
    if row["reg_err"] > MAX_CORNER_ERROR:
        warned = any(w in row["warnings"].lower() for w in IMPRECISE_WORDS)
        return "imprecise" if warned else "FAIL-misregistered"
    if not row.get("scored", True):  # a registration-only run (--register-only)
        return "ok"
    score = row["dpsnr"] if np.isfinite(row["dpsnr"]) else row["dpsnr_in"]
    return "ok" if score > 0 else "FAIL-worse"


# ----------------------------------------------------------------------------- reporting

COLUMNS = [("case", 28, "s"), ("lr", 10, "x"), ("hr", 10, "x"), ("zoom", 4, "d"),
           ("rotation", 6, ".2f"), ("status", 18, "s"), ("reg_err", 7, ".3f"), ("reg_sd", 6, ".3f"),
           ("dpsnr", 6, ".2f"), ("dpsnr_matched", 7, ".2f"), ("t_case", 6, ".1f"),
           ("message", 0, "s")]


def _cell(row: dict, key: str, width: int, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        text = "-"
    elif fmt == "x":
        text = "x".join(map(str, value))
    else:
        text = format(value, fmt)
    if key == "message":
        text = (text or row.get("warnings", ""))[:110]
    return f"{text:>{width}}" if width else text


def print_header() -> None:
    names = {"dpsnr": "ΔPSNR", "dpsnr_matched": "ΔPSNRm", "t_case": "t s", "rotation": "rot°",
             "reg_err": "reg px", "reg_sd": "pred"}
    print(" ".join(f"{names.get(k, k):>{w}}" if w else names.get(k, k)
                   for k, w, _ in COLUMNS), flush=True)


def print_row(row: dict) -> None:
    print(" ".join(_cell(row, k, w, f) for k, w, f in COLUMNS), flush=True)


def summarise(rows: list[dict]) -> int:
    """Print the failure count by class and the distributions; return the number of failures."""
    print(f"\n{'class':<22} {'cases':>5} {'ok':>4} {'refused':>7} {'warned':>6} {'FAIL':>5} "
          f"{'reg mean':>8} {'reg max':>8} {'ΔPSNR mean':>10} {'min':>6} {'s/case':>6}")
    failures = 0
    for cls in dict.fromkeys(r["class"] for r in rows):
        group = [r for r in rows if r["class"] == cls]
        fails = sum(r["status"].startswith("FAIL") for r in group)
        failures += fails
        reg = [r["reg_err"] for r in group if "reg_err" in r and r["expect"] == "accept"]
        gain = [r["dpsnr"] for r in group if np.isfinite(r.get("dpsnr", np.nan))]
        cells = [f"{np.mean(reg):8.3f}" if reg else f"{'-':>8}",
                 f"{np.max(reg):8.3f}" if reg else f"{'-':>8}",
                 f"{np.mean(gain):10.2f}" if gain else f"{'-':>10}",
                 f"{np.min(gain):6.2f}" if gain else f"{'-':>6}"]
        count = {s: sum(r["status"] == s for r in group)
                 for s in ("ok", "refused", "warned", "imprecise")}
        print(f"{cls:<22} {len(group):5d} {count['ok']:4d} {count['refused']:7d} "
              f"{count['warned'] + count['imprecise']:6d} {fails:5d} {' '.join(cells)} "
              f"{np.mean([r['t_case'] for r in group]):6.1f}")
    positive = [r for r in rows if r["expect"] == "accept"]
    reg = [r["reg_err"] for r in positive if "reg_err" in r]
    gain = [r["dpsnr"] for r in positive if np.isfinite(r.get("dpsnr", np.nan))]
    print(f"\n{len(rows)} cases, {failures} failures "
          f"({sum(r['expect'] == 'refuse' for r in rows)} negative controls); "
          f"{sum(r['t_case'] for r in rows) / 60:.1f} min")
    if reg:
        q = np.percentile(reg, [50, 90])
        print(f"registration corner error on {len(reg)} fitted pairs: mean {np.mean(reg):.3f}, "
              f"median {q[0]:.3f}, 90 % {q[1]:.3f}, max {np.max(reg):.3f} LR px")
    pred = np.array([[r["reg_err"], r.get("reg_sd", np.nan)] for r in positive
                     if "reg_err" in r and np.isfinite(r.get("reg_sd", np.nan))])
    if len(pred):
        ratio = pred[:, 0] / pred[:, 1]
        q = np.percentile(ratio, [10, 50, 90])
        bad = pred[:, 0] > MAX_CORNER_ERROR
        warned = [r for r in positive if r["status"] == "imprecise"]
        print(f"precision estimate (pred, RMS corner error) on {len(pred)} pairs: true/pred "
              f"10/50/90 % {q[0]:.2f}/{q[1]:.2f}/{q[2]:.2f}; {bad.sum()} misregistered "
              f"(> {MAX_CORNER_ERROR} LR px), {len(warned)} of them warned as imprecise")
    if gain:
        matched = [r["dpsnr_matched"] for r in positive if np.isfinite(r.get("dpsnr_matched",
                                                                             np.nan))]
        print(f"held-out ΔPSNR on {len(gain)} pairs: mean {np.mean(gain):+.2f}, min "
              f"{np.min(gain):+.2f}, > 0 on {sum(g > 0 for g in gain)}; over contrast-matched "
              f"bicubic: mean {np.mean(matched):+.2f}, min {np.min(matched):+.2f} dB")
    with_sigma = [r for r in positive if r.get("sigma_dpsnr")]
    if with_sigma:
        sigmas = list(with_sigma[0]["sigma_dpsnr"])
        means = {s: np.mean([r["sigma_dpsnr"][s] for r in with_sigma]) for s in sigmas}
        best = max(means, key=means.get)
        auto = np.mean([r["dpsnr"] for r in with_sigma])
        print(f"σ on {len(with_sigma)} pairs: automatic {auto:+.3f} dB; best fixed σ={best} "
              f"{means[best]:+.3f} dB (" + ", ".join(f"{s}: {m:+.2f}" for s, m in means.items())
              + ")")
    return failures


def write_csv(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict | tuple | list) else v
                             for k, v in r.items()})


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="pairsr-robustness-") as tmp:
        yield Path(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one small case per class (LR ≤ 384 px)")
    parser.add_argument("--cases", type=int, default=None, help="run the first N cases")
    parser.add_argument("--seed", type=int, default=0, help="matrix seed")
    parser.add_argument("--csv", type=Path, default=Path("robustness.csv"), help="CSV to write")
    parser.add_argument("--subprocess", action="store_true",
                        help="run the pairsr executable instead of the CLI in-process")
    parser.add_argument("--sigmas", type=str, default="",
                        help="comma-separated fixed σ to compare with the automatic one")
    parser.add_argument("--keep", type=Path, default=None, help="keep the cases' files here")
    parser.add_argument("--only", type=str, default="",
                        help="comma-separated case names or classes to run (of the matrix)")
    parser.add_argument("--register-only", action="store_true",
                        help="register each pair (as `pairsr fit` does) without fitting a model")
    args = parser.parse_args()
    cases = matrix(args.seed, lr_max=384 if args.quick else 768,
                   per_class=1 if args.quick else None)[: args.cases]
    if args.only:
        only = set(args.only.split(","))
        cases = [c for c in cases if c.name in only or c.cls in only]
    sigmas = tuple(float(s) for s in args.sigmas.split(",") if s)
    cli = _cli_subprocess if args.subprocess else _cli_inprocess
    print(f"{len(cases)} cases; CLI {'subprocess' if args.subprocess else 'in-process'}")
    print_header()
    rows = []
    with _workdir(args.keep) as work:
        for case in cases:
            row = (register_case(case)[0] if args.register_only
                   else run_case(case, work, cli=cli, sigmas=sigmas))
            rows.append(row)
            print_row(row)
            if args.keep is None:
                shutil.rmtree(work / case.name, ignore_errors=True)
    write_csv(rows, args.csv)
    failures = summarise(rows)
    print(f"CSV: {args.csv}")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
