"""The uncertainty map (``pairsr.uncertainty``) against the real error, on simulated pairs.

Pairs: the built-in specimen (several seeds) and real micrographs from ``../shared/data/real``
(scaled to full signal by :func:`pairsr.simulate.load_specimen`), each simulated as a physical
pair (LR field and an independent HR scan of part of it) and registered. The protocol's 3×4
sub-images of the HR overlap: the model (and its uncertainty calibration, fitted inside
:func:`pairsr.api.fit`) sees the left 9 only. Per pair and method:

* ``rho``: Spearman ρ between the 16×16 SR px block RMS of the predicted map and of the
  measured error against the simulator's noise-free ground truth, over the whole field
  (target ≥ 0.5). The ground truth follows the LR scan's drift (``gt_drift``), as the HR that
  the map is calibrated against does once registered with its local field: the SR lies on the
  LR's (drifting) grid. ρ against the drift-free ground truth is printed too;
* ``pred/meas``: on the 3 held-out sub-images, the field RMS of the map over the RMS error
  against the HR scan (target within ±30 %); and the same on edge pixels (the top 20 % of the
  bicubic image's gradient magnitude) and background (the bottom 50 %), and the map's and
  the measured error's RMS on edges over background.

    python benchmarks/bench_uncertainty.py                   # 12 pairs, LB-NLM
    python benchmarks/bench_uncertainty.py --methods lbnlm,vdsr --pairs 4
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from reproduce_paper import REAL as PAPER_SPECIMENS
from reproduce_paper import SHARED as REAL
from scipy import ndimage
from scipy.stats import spearmanr

from pairsr.api import TrainingPair, fit, prepare_pair
from pairsr.evaluate import EvalPair, is_train, overlap_box, subimages, training_part
from pairsr.grid import bicubic
from pairsr.io import to_float32
from pairsr.register import Registration, RegistrationError, warp_hr_to_sr
from pairsr.simulate import load_specimen, simulate_pair
from pairsr.uncertainty import UncertaintyMap

#: Real specimens: the paper protocol's (name, file, crop, simulator scale = specimen px per LR
#: px) and two more.
SPECIMENS = [
    *PAPER_SPECIMENS,
    ("tsem", "pssr_napari/hr_2nm_tsem_small.tif", None, 1.5),
    ("lowdose-tem", "katsuno_lowdose_tem/train_0001.tif", None, 1.5),
]
#: Block side (SR px) of the rank correlation.
BLOCK = 16
#: Quick settings of the networks (a few epochs: the map calibrates whatever their residuals).
NET = {"preset": "vdsr-tiny", "epochs": 4, "steps": 10, "patience": 2, "progress": False}


def build(n_builtin: int, lr_shape: tuple[int, int], limit: int) -> list[EvalPair]:
    specs = [(f"builtin-{s}", None, None, None, s) for s in range(n_builtin)]
    if REAL.is_dir():
        specs += [(name, REAL / f, crop, scale, 100 + i)
                  for i, (name, f, crop, scale) in enumerate(SPECIMENS)]
    else:
        print(f"note: {REAL} is absent; only built-in specimens are used")
    pairs = []
    for name, path, crop, scale, seed in specs[:limit]:
        if path is None:
            options = {"seed": seed, "lr_shape": lr_shape, "hr_fraction": 0.3}
        else:
            spec = load_specimen(path, crop=crop).values
            shape = tuple(min(a, int(b / scale) - 16) for a, b in zip(lr_shape, spec.shape,
                                                                       strict=True))
            options = {"specimen": spec, "seed": seed, "scale": scale, "lr_shape": shape,
                       "hr_fraction": 0.3}
        sim = simulate_pair(**options, gt_drift=True)
        still = simulate_pair(**options).gt  # the same scans; gt without the LR's drift
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pair = prepare_pair(sim.lr, sim.hr)
        except RegistrationError:  # (an ambiguous small field): the simulator's registration
            t = sim.truth
            reg = Registration(np.array(t["matrix"]), np.array(t["offset"]), sim.lr.shape,
                               sim.hr.shape)
            lr, hr = to_float32(sim.lr), to_float32(sim.hr)
            pair = TrainingPair(lr, warp_hr_to_sr(hr, reg, lr.shape, local=False), reg)
        ep = EvalPair(name, pair, gt=sim.gt)
        ep.boxes = subimages(overlap_box(pair.hr, pair.zoom))
        pairs.append((ep, still))
    return pairs


def blocks(a: np.ndarray, b: int = BLOCK) -> np.ndarray:
    """Means over ``b × b`` blocks (the incomplete last ones dropped)."""
    h, w = a.shape[0] // b * b, a.shape[1] // b * b
    return a[:h, :w].reshape(h // b, b, w // b, b).mean(axis=(1, 3))


def score(ep: EvalPair, still: np.ndarray, method: str, L: int) -> dict:
    t0 = time.perf_counter()
    params = {"L": L} if method == "lbnlm" else NET if method in ("vdsr", "edsr") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fit([training_part(ep)], method, uncertainty=True, **params)
    fit_s = time.perf_counter() - t0
    lr, zoom = ep.pair.lr, ep.pair.zoom
    t1 = time.perf_counter()
    sr = model.predict(lr)
    t2 = time.perf_counter()
    u = UncertaintyMap(model).predict(lr)
    map_s, sr_s = time.perf_counter() - t2, t2 - t1
    rho, rho_still = (spearmanr(np.sqrt(blocks(u**2)).ravel(),
                                np.sqrt(blocks((sr - gt) ** 2)).ravel()).correlation
                      for gt in (ep.gt, still))
    up = bicubic(lr, zoom)
    grad = np.hypot(ndimage.sobel(up, 0), ndimage.sobel(up, 1))
    held = np.zeros(sr.shape, bool)
    for i, (y0, y1, x0, x1) in enumerate(ep.boxes):
        if not is_train(i):
            held[zoom * y0 : zoom * y1, zoom * x0 : zoom * x1] = True
    held &= np.isfinite(ep.pair.hr)
    hr_e2 = (sr - np.nan_to_num(ep.pair.hr)) ** 2
    edges = grad >= np.quantile(grad[held], 0.8)
    flat = grad <= np.quantile(grad[held], 0.5)

    def ratio(where: np.ndarray) -> tuple[float, float, float]:
        predicted, measured = np.sqrt((u[where] ** 2).mean()), np.sqrt(hr_e2[where].mean())
        return float(predicted / measured), float(predicted), float(measured)

    (r_all, _, m_all), edge, flat = ratio(held), ratio(held & edges), ratio(held & flat)
    return {"pair": ep.name, "method": method, "rho": float(rho), "rho_still": float(rho_still),
            "ratio": r_all, "measured": m_all, "edge": edge[0], "flat": flat[0],
            "map_contrast": edge[1] / flat[1], "error_contrast": edge[2] / flat[2],
            "fit_s": fit_s, "map_s_per_mpix": map_s / (sr.size / 1e6),
            "sr_s_per_mpix": sr_s / (sr.size / 1e6)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=12, help="use the first N pairs")
    ap.add_argument("--builtin", type=int, default=5, help="built-in specimen seeds")
    ap.add_argument("--lr-shape", default="256x320", help="LR field ROWSxCOLS (at most)")
    ap.add_argument("--methods", default="lbnlm", help="comma-separated methods")
    ap.add_argument("-L", type=int, default=5000, help="LB-NLM library size")
    args = ap.parse_args()
    lr_shape = tuple(int(v) for v in args.lr_shape.split("x"))
    pairs = build(args.builtin, lr_shape, args.pairs)
    print("| pair | method | ρ vs gt | ρ vs gt without LR drift | pred/meas held-out | meas RMS "
          "| pred/meas edges | pred/meas background | edge/background map | edge/background "
          "error | fit s | SR s/MPix | map s/MPix |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for method in args.methods.split(","):
        for ep, still in pairs:
            r = score(ep, still, method, args.L)
            rows.append(r)
            print(f"| {r['pair']} | {method} | {r['rho']:.2f} | {r['rho_still']:.2f} | "
                  f"{r['ratio']:.2f} | {r['measured']:.4f} | {r['edge']:.2f} | {r['flat']:.2f} | "
                  f"{r['map_contrast']:.2f} | {r['error_contrast']:.2f} | {r['fit_s']:.1f} | "
                  f"{r['sr_s_per_mpix']:.1f} | {r['map_s_per_mpix']:.1f} |", flush=True)
    for method in args.methods.split(","):
        mine = [r for r in rows if r["method"] == method]
        rho = np.array([r["rho"] for r in mine])
        ratio = np.array([r["ratio"] for r in mine])
        print(f"\n{method}: ρ median {np.median(rho):.2f}, min {rho.min():.2f}, "
              f"{(rho >= 0.5).sum()}/{len(rho)} ≥ 0.5; pred/meas median {np.median(ratio):.2f}, "
              f"{(np.abs(ratio - 1) <= 0.3).sum()}/{len(ratio)} within ±30 %; edges median "
              f"{np.median([r['edge'] for r in mine]):.2f}, background median "
              f"{np.median([r['flat'] for r in mine]):.2f}; edge/background map "
              f"{np.median([r['map_contrast'] for r in mine]):.2f}, error "
              f"{np.median([r['error_contrast'] for r in mine]):.2f}; ρ without LR drift median "
              f"{np.median([r['rho_still'] for r in mine]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
