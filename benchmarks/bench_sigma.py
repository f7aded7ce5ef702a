"""LB-NLM σ selection: automatic σ vs the best single fixed σ an oracle picks afterwards.

    .venv/bin/python benchmarks/bench_sigma.py [--cases 14] [--seed 0]

Small simulated physical pairs (``pairsr.simulate.simulate_pair``) of the built-in specimen and
of real micrographs from ``../shared/data/real`` (skipped with a note if absent), at varied HR
size, fraction, rotation, contrast (LR and HR intensities scaled about their means) and added LR
noise. Each pair is registered (``pairsr.api.prepare_pair``; where registration refuses it, the
simulator's true affine is used and the case is marked ``truth``), its overlap split 3 × 4 as in
``pairsr.evaluate``; LB-NLM is fitted with ``sigma="auto"`` on the left 9 sub-images and scored
out of sample on the right 3 (mean ΔPSNR vs bicubic, dB). The same library is then scored at
every σ of a fixed grid; the oracle's σ is the one of best mean ΔPSNR over all cases; and at
the fallback's default σ. Prints the table, the means, and the ratio of the chosen σ to the
patch-distance scale ``s`` (:data:`pairsr.sigma.DEFAULT_RATIO` is its median). Exits 1 if the
auto mean is more than 0.1 dB below the oracle's.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from pairsr.api import TrainingPair, prepare_pair
from pairsr.evaluate import EvalPair, _sr_of, is_train, overlap_box, subimages, training_part
from pairsr.io import to_float32
from pairsr.lbnlm import LBNLM
from pairsr.methods import Bicubic
from pairsr.metrics import SCORE_BORDER, psnr
from pairsr.register import Registration, RegistrationError, warp_hr_to_sr
from pairsr.sigma import DEFAULT_RATIO
from pairsr.simulate import load_specimen, simulate_pair

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
#: Real specimens: file, crop (info bar), simulator scale (specimen px per LR px).
SPECIMENS = {
    "jeol": ("konstanz_colloids_sem/jeol_A-2h-01_x50k_2nm.tif", ":960,", 2.0),
    "zeiss": ("konstanz_colloids_sem/zeiss_GM59_20_spheres_4.466nm.tif", ":690,", 1.5),
    "nanowires": ("deepsem_nanowires/NWs-8kMag_125nm_03_cropped.png", None, 1.5),
    "haadf": ("r_em_haadf_stem/sgl_exp_hrstem_2048.tif", None, 3.0),
    "tsem": ("pssr_napari/hr_2nm_tsem_small.tif", None, 1.5),
    "lowdose": ("katsuno_lowdose_tem/train_0001.tif", None, 1.5),
    "nanorods": ("afrl_mdf_nanorods_pentacene/hr_2nm_goldnanorods/test_001.png", None, 1.0),
    "pentacene": ("afrl_mdf_nanorods_pentacene/hr_pentacene/test_001.png", None, 1.0),
}
#: (specimen, LR shape, HR fraction, max rotation °, contrast, added LR noise σ).
CASES = [
    ("builtin", (240, 320), 0.25, 3.0, 1.0, 0.0),
    ("builtin", (240, 320), 0.30, 3.0, 0.4, 0.0),
    ("builtin", (240, 320), 0.25, 3.0, 1.0, 0.03),
    ("builtin", (300, 400), 0.15, 4.0, 0.25, 0.0),
    ("jeol", (240, 320), 0.30, 3.0, 1.0, 0.0),
    ("jeol", (300, 400), 0.20, 2.0, 0.5, 0.02),
    ("zeiss", (240, 320), 0.30, 3.0, 0.5, 0.0),
    ("nanowires", (240, 320), 0.30, 3.0, 1.0, 0.0),
    ("tsem", (240, 320), 0.30, 3.0, 1.0, 0.01),
    ("haadf", (240, 320), 0.30, 2.0, 1.0, 0.0),
    ("lowdose", (240, 320), 0.40, 2.0, 1.0, 0.0),
    ("nanorods", (200, 200), 0.40, 3.0, 0.6, 0.0),
    ("pentacene", (200, 200), 0.40, 3.0, 1.0, 0.0),
    ("builtin", (200, 260), 0.40, 1.0, 2.0, 0.0),
]
#: The fixed σ grid the oracle chooses from ([0, 1] intensity units).
GRID = tuple(0.002 * 2 ** (i / 2) for i in range(15))


def make_pair(spec: str, lr_shape, fraction, rotation, contrast, noise, seed) -> tuple:
    """A simulated pair, registered (or aligned by the truth); returns (EvalPair, how)."""
    if spec == "builtin":
        sim = simulate_pair(seed=seed, lr_shape=lr_shape, hr_fraction=fraction,
                            max_rotation_deg=rotation)  # fmt: skip
    else:
        path, crop, scale = SPECIMENS[spec]
        specimen = load_specimen(REAL / path, crop=crop).values
        sim = simulate_pair(specimen, seed=seed, scale=scale, lr_shape=lr_shape,
                            hr_fraction=fraction, max_rotation_deg=rotation)  # fmt: skip
    rng = np.random.default_rng(seed)
    lr, hr = to_float32(sim.lr), to_float32(sim.hr)
    lr = lr.mean() + contrast * (lr - lr.mean()) + noise * rng.standard_normal(lr.shape)
    lr = np.clip(lr, 0, 1).astype(np.float32)
    hr = np.clip(hr.mean() + contrast * (hr - hr.mean()), 0, 1).astype(np.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pair, how = prepare_pair(lr, hr), "registered"
    except RegistrationError:
        t = sim.truth
        reg = Registration(np.array(t["matrix"]), np.array(t["offset"]), lr.shape, hr.shape)
        pair = TrainingPair(lr, warp_hr_to_sr(hr, reg, lr.shape, local=False), reg)
        how = "truth"
    ep = EvalPair(spec, pair)
    ep.boxes = subimages(overlap_box(pair.hr))
    return ep, how


def held_out_dpsnr(model, ep: EvalPair, bic: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Mean ΔPSNR (dB) over the held-out sub-images (one prediction of their column)."""
    held = [b for i, b in enumerate(ep.boxes) if not is_train(i)]
    column = (held[0][0], held[-1][1], held[0][2], held[0][3])
    sr = np.clip(_sr_of(model, ep.pair.lr, column, 2), 0, 1)
    if bic is None:
        bic = np.clip(_sr_of(Bicubic(), ep.pair.lr, column, 2), 0, 1)
    gains = []
    for y0, y1, x0, x1 in held:
        rows = np.s_[(y0 - column[0]) * 2 : (y1 - column[0]) * 2]
        ref = ep.pair.hr[y0 * 2 : y1 * 2, x0 * 2 : x1 * 2]
        gains.append(psnr(sr[rows], ref, border=SCORE_BORDER)
                     - psnr(bic[rows], ref, border=SCORE_BORDER))  # fmt: skip
    return float(np.mean(gains)), bic


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=len(CASES), help="use the first N cases")
    ap.add_argument("--seed", type=int, default=0, help="seed offset of the simulated pairs")
    args = ap.parse_args()
    cases = CASES[: args.cases]
    if not REAL.is_dir():
        print(f"note: {REAL} is absent; only built-in specimens are used")
        cases = [c for c in cases if c[0] == "builtin"]
    rows = []
    for i, (spec, shape, fraction, rotation, contrast, noise) in enumerate(cases):
        t0 = time.perf_counter()
        ep, how = make_pair(spec, shape, fraction, rotation, contrast, noise, args.seed + i)
        t1 = time.perf_counter()
        model = LBNLM.fit([(lambda p: (p.lr, p.hr))(training_part(ep))])
        fit_s = time.perf_counter() - t1
        search = model.params["sigma_search"]
        auto, bic = held_out_dpsnr(model, ep)
        grid = []
        for sigma in GRID:
            model.params["sigma"] = sigma
            grid.append(held_out_dpsnr(model, ep, bic)[0])
        model.params["sigma"] = DEFAULT_RATIO * search["scale"]  # the fallback's σ
        default = held_out_dpsnr(model, ep, bic)[0]
        rows.append({"case": f"{i:2d} {spec} c={contrast} +{noise}", "how": how,
                     "hr": tuple(ep.pair.registration.hr_shape), "sigma": search["sigma"],
                     "scale": search["scale"], "pixels": search["pixels"], "auto": auto,
                     "grid": np.array(grid), "default": default, "fit_s": fit_s})  # fmt: skip
        print(f"{rows[-1]['case']}: {how}, HR {rows[-1]['hr']}, σ {search['sigma']:.4f}, "
              f"ΔPSNR {auto:+.2f} dB, fit {fit_s:.1f} s ({time.perf_counter() - t0:.0f} s)",
              flush=True)  # fmt: skip
    grid = np.array([r["grid"] for r in rows])
    oracle = int(np.argmax(grid.mean(axis=0)))
    print(f"\noracle σ (best single fixed σ over all cases) = {GRID[oracle]:.4f}\n")
    print("| case | pairing | HR | s | auto σ | ΔPSNR auto | best σ of case | ΔPSNR best "
          "| ΔPSNR oracle σ | ΔPSNR default σ | val. px | fit (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r, g in zip(rows, grid):
        b = int(np.argmax(g))
        print(f"| {r['case']} | {r['how']} | {r['hr'][1]}×{r['hr'][0]} | {r['scale']:.4f} "
              f"| {r['sigma']:.4f} | {r['auto']:+.3f} | {GRID[b]:.4f} | {g[b]:+.3f} "
              f"| {g[oracle]:+.3f} | {r['default']:+.3f} | {r['pixels']} | {r['fit_s']:.1f} |")
    auto = np.mean([r["auto"] for r in rows])
    print(f"\nmean ΔPSNR: auto {auto:+.3f} dB, oracle fixed σ {grid[:, oracle].mean():+.3f} dB, "
          f"per-case best σ {grid.max(axis=1).mean():+.3f} dB; auto − oracle "
          f"{auto - grid[:, oracle].mean():+.3f} dB; worst case auto − best "
          f"{min(r['auto'] - g.max() for r, g in zip(rows, grid)):+.3f} dB; fallback default "
          f"σ = {DEFAULT_RATIO}·s {np.mean([r['default'] for r in rows]):+.3f} dB")
    ratios = [r["sigma"] / r["scale"] for r in rows]
    print(f"auto σ / s: median {np.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}")
    return int(auto < grid[:, oracle].mean() - 0.1)


if __name__ == "__main__":
    raise SystemExit(main())
