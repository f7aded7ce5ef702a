"""How much out-of-sample ΔPSNR is left above paired LB-NLM on the paper's protocol.

Scored against the registered HR scan (as ``docs/results.md``), no method can beat in
expectation the HR scan without its own shot and read noise (``SimulatedPair.hr_clean``, warped
onto the SR grid by the pair's registration like the HR itself): its score is the ceiling of
every LR→HR method, and ceiling − LB-NLM is the headroom a better method can take. The table
also shows methods of other families fitted on the same training sub-images (default: EDSR,
``reproduce_paper.PARAMS``) and the mean of their SR with LB-NLM's, which gains when the two
make different errors, and LB-NLM with a library built from the noise-free HR instead of the
HR scan (same LR, same training sub-images), which tells how much of the headroom the noise of
the library's HR values holds; and LB-NLM fitted and applied on the same field scanned without the
LR's shot noise (``lr_dose`` 10⁶; the same geometry, registration and HR), which tells how much
the LR's noise holds.

For each pair of ``reproduce_paper``'s evaluation set (5 built-in, 5 real specimens; the
3×4 split, the right column held out): out-of-sample ΔPSNR over bicubic (dB, mean over the
held-out sub-images), and the headroom. Prints a table.

    python benchmarks/bench_headroom.py                    # the evaluation set, lbnlm + edsr
    python benchmarks/bench_headroom.py --quick            # 2 small built-in pairs
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from reproduce_paper import PARAMS, simulations

from pairsr.api import fit, prepare_pair
from pairsr.evaluate import EvalPair, is_train, overlap_box, subimages, training_part
from pairsr.io import to_float32
from pairsr.methods import Bicubic, method_class
from pairsr.metrics import delta_vs_bicubic
from pairsr.region import Region, predict_region
from pairsr.register import warp_hr_to_sr

#: LR counts per pixel at signal 1 for the reference without the LR's shot noise (0.1 % at
#: signal 1; the scan's read noise, 0.5–2 %, and the 8-bit quantisation stay).
NOISE_FREE_DOSE = 1e6
QUIET = f"lbnlm, LR at dose {NOISE_FREE_DOSE:g}"


def _held_out(ep: EvalPair) -> list[Region]:
    return [Region.from_bounds((b[0], b[2]), (b[1], b[3]))
            for i, b in enumerate(ep.boxes) if not is_train(i)]


def _held_out_sr(model, ep: EvalPair) -> list[np.ndarray]:
    """The SR of each held-out sub-image, with the model's context around it."""
    return [predict_region(model.predict, ep.pair.lr, sub, model.halo, ep.pair.zoom, model.align)
            for sub in _held_out(ep)]


def _fitted_sr(ep: EvalPair, method: str, tmp: Path) -> tuple[list[np.ndarray], float]:
    """``method`` fitted on the training sub-images; its held-out SR and its fit seconds."""
    params = dict(PARAMS.get(method, {}))
    if getattr(method_class(method), "trains_in_folder", False):
        params["folder"] = tmp / method
    t0 = time.perf_counter()
    model = fit([training_part(ep)], method, **params)
    return _held_out_sr(model, ep), time.perf_counter() - t0


def headroom(ep: EvalPair, clean_sr: np.ndarray, clean_lr: np.ndarray,
             others: list[str]) -> dict[str, float]:
    """Out-of-sample ΔPSNR (dB) against the HR scan of LB-NLM, of each of ``others`` and of its
    mean with LB-NLM, of LB-NLM fitted on the noise-free HR ``clean_sr`` (on the pair's SR
    grid), of LB-NLM on the LR without shot noise ``clean_lr`` (the pair's LR window), and of
    ``clean_sr`` itself; all over the bicubic of the pair's (noisy) LR."""
    zoom, subs = ep.pair.zoom, _held_out(ep)
    refs = [sub.sr(zoom).crop(ep.pair.hr) for sub in subs]
    bics = _held_out_sr(Bicubic(zoom=zoom), ep)

    def delta(srs: list[np.ndarray]) -> float:
        return float(np.mean([delta_vs_bicubic(np.clip(s, 0, 1), np.clip(b, 0, 1), r)["dpsnr"]
                              for s, b, r in zip(srs, bics, refs, strict=True)]))

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pairsr-headroom-") as tmp:
        lbnlm, out["lbnlm fit s"] = _fitted_sr(ep, "lbnlm", Path(tmp))
        out["lbnlm"] = delta(lbnlm)
        for method in others:
            srs, out[f"{method} fit s"] = _fitted_sr(ep, method, Path(tmp))
            out[method] = delta(srs)
            out[f"mean(lbnlm, {method})"] = delta([(a + b) / 2 for a, b in zip(lbnlm, srs,
                                                                                strict=True)])
        clean = replace(ep.pair, hr=np.where(np.isnan(ep.pair.hr), np.nan, clean_sr))
        srs, _ = _fitted_sr(replace(ep, pair=clean), "lbnlm", Path(tmp))
        out["lbnlm, noise-free library"] = delta(srs)
        srs, _ = _fitted_sr(replace(ep, pair=replace(ep.pair, lr=clean_lr)), "lbnlm", Path(tmp))
        out[QUIET] = delta(srs)
    out["noise-free HR"] = delta([sub.sr(zoom).crop(clean_sr) for sub in subs])
    out["headroom"] = out["noise-free HR"] - out["lbnlm"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--others", default="edsr", help="methods beside LB-NLM (comma-separated)")
    ap.add_argument("--builtin", type=int, default=5, help="built-in specimen pairs")
    ap.add_argument("--lr-shape", default="708x960", help="LR shape of the built-in pairs")
    ap.add_argument("--no-real", action="store_true", help="skip the real specimens")
    ap.add_argument("--quick", action="store_true", help="2 small built-in pairs, no real ones")
    args = ap.parse_args()
    if args.quick:
        args.builtin, args.lr_shape, args.no_real = 2, "472x640", True
    others = [m.strip() for m in args.others.split(",") if m.strip()]
    lr_shape = tuple(int(v) for v in args.lr_shape.split("x"))
    rows = []
    quiet = simulations(args.builtin, lr_shape, not args.no_real, lr_dose=NOISE_FREE_DOSE)
    for (name, sim), (_, quiet_sim) in zip(simulations(args.builtin, lr_shape, not args.no_real),
                                           quiet, strict=True):
        pair = prepare_pair(sim.lr, sim.hr)
        clean = warp_hr_to_sr(to_float32(sim.hr_clean), pair.registration, zoom=pair.zoom,
                              region=pair.region)
        ep = EvalPair(name, pair, gt=sim.gt, boxes=subimages(overlap_box(pair.hr, pair.zoom)))
        clean_lr = pair.region.crop(to_float32(quiet_sim.lr))
        rows.append({"pair": name, **headroom(ep, clean, clean_lr, others)})
        print(name, ", ".join(f"{k} {v:.0f}" if k.endswith("fit s") else f"{k} {v:+.2f}"
                              for k, v in rows[-1].items() if k != "pair"), flush=True)
    keys = [k for k in rows[0] if k != "pair" and not k.endswith("fit s")]
    print("\nOut-of-sample ΔPSNR over bicubic against the HR scan (dB)\n")
    print("| pair | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    mean = {"pair": "mean", **{k: float(np.mean([r[k] for r in rows])) for k in keys}}
    for r in [*rows, mean]:
        print(f"| {r['pair']} | " + " | ".join(f"{r[k]:+.2f}" for k in keys) + " |")
    room = np.array([r["headroom"] for r in rows])
    print(f"\nheadroom above LB-NLM: mean {room.mean():+.2f} dB, min {room.min():+.2f} dB "
          f"({rows[int(room.argmin())]['pair']}); +0.3 dB on average is "
          f"{0.3 / room.mean():.0%} of the mean headroom")
    gain = np.array([r["lbnlm, noise-free library"] - r["lbnlm"] for r in rows])
    print(f"LB-NLM with a noise-free library − LB-NLM: mean {gain.mean():+.3f} dB, "
          f"max {gain.max():+.3f} dB")
    gain = np.array([r[QUIET] - r["lbnlm"] for r in rows])
    print(f"{QUIET} − lbnlm: mean {gain.mean():+.3f} dB "
          f"({gain.mean() / room.mean():.0%} of the mean headroom), min {gain.min():+.3f} dB")
    for method in others:
        gain = np.array([r[f"mean(lbnlm, {method})"] - r["lbnlm"] for r in rows])
        print(f"mean(lbnlm, {method}) − lbnlm: mean {gain.mean():+.3f} dB, "
              f"max {gain.max():+.3f} dB")


if __name__ == "__main__":
    main()
