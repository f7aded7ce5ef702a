"""Reproduce the paper's comparison (Tables I–IV, Fig. 7/8) on simulated physical pairs.

Builds simulated pairs from the built-in specimen and from real micrographs in ``../shared``
(each pair: two independent scans with their own blur, dose, detector and drift), registers
them, and runs the 3×4 sub-image protocol for every method under self- and pooled training.
Writes ``docs/results.md`` (all numbers from this run), the raw rows and a panel figure.

    python benchmarks/reproduce_paper.py                      # the default set, all methods
    python benchmarks/reproduce_paper.py --methods bicubic,lbnlm --quick
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from pairsr.api import prepare_pair
from pairsr.evaluate import EvalPair, run, summarise, write_panel, write_report
from pairsr.io import read_image, to_float32
from pairsr.simulate import simulate_pair

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "real"
#: Real specimens: (name, file, crop, simulator scale = specimen px per LR px).
REAL = [
    ("jeol-spheres", "konstanz_colloids_sem/jeol_A-2h-01_x50k_2nm.tif", ":960,", 2.0),
    ("zeiss-spheres", "konstanz_colloids_sem/zeiss_GM59_20_spheres_4.466nm.tif", ":690,", 1.5),
    ("nanowires-125", "deepsem_nanowires/NWs-8kMag_125nm_03_cropped.png", None, 1.5),
    ("nanowires-140", "deepsem_nanowires/NWs-8kMag_140nm_17_cropped.png", None, 1.5),
    ("haadf-stem", "r_em_haadf_stem/sgl_exp_hrstem_2048.tif", None, 3.0),
]
#: CPU-sized settings; the networks run presets, not the published sizes (hours on 2 cores).
PARAMS = {
    "lbnlm-original": {"L": 4000},
    "scsr": {"atoms": 256, "L": 20000},
    "vdsr": {"preset": "vdsr-tiny", "epochs": 30, "patience": 5, "progress": False},
    "edsr": {"preset": "edsr-tiny", "epochs": 30, "patience": 5, "progress": False},
    "rcan": {"preset": "rcan-tiny", "epochs": 30, "patience": 5, "progress": False},
}


#: Methods too slow on 2 cores to super-resolve every whole field (scored on sub-images only).
SLOW = {"lbnlm-original", "scsr", "srsw"}


def build_pairs(n_builtin: int, lr_shape: tuple[int, int], real: bool) -> list[EvalPair]:
    """Simulate and register the evaluation pairs."""
    specs = [(f"builtin-{s}", None, None, None, s) for s in range(n_builtin)]
    if real and SHARED.is_dir():
        specs += [(name, SHARED / f, crop, scale, 100 + i) for i, (name, f, crop, scale)
                  in enumerate(REAL)]
    elif real:
        print(f"note: {SHARED} is absent; only built-in specimens are used")
    pairs = []
    for name, path, crop, scale, seed in specs:
        t0 = time.perf_counter()
        if path is None:
            sim = simulate_pair(seed=seed, lr_shape=lr_shape)
        else:
            spec = to_float32(read_image(path, crop=crop).values)
            sim = simulate_pair(spec, seed=seed, scale=scale)
        pair = prepare_pair(sim.lr, sim.hr)
        pairs.append(EvalPair(name, pair, gt=sim.gt))
        print(f"{name}: LR {sim.lr.shape}, registered in {time.perf_counter() - t0:.1f} s")
    return pairs


def results_markdown(table: list[dict], rows: list[dict], pairs: list[EvalPair],
                     seconds: float, methods: list[str]) -> str:
    """docs/results.md: Tables I–IV analogues and the timing table, from this run."""
    def pick(strategy, method, split):
        return next((t for t in table if (t["strategy"], t["method"], t["split"])
                     == (strategy, method, split)), None)

    strategies = sorted({t["strategy"] for t in table}, reverse=True)
    out = [
        "# Results: the paper's comparison on simulated physical pairs",
        "",
        f"Produced by `python benchmarks/reproduce_paper.py {' '.join(sys.argv[1:])}` in "
        f"{seconds / 60:.1f} min on "
        f"{platform.machine()} ({platform.processor() or 'CPU'}), "
        f"{len(pairs)} pairs: {', '.join(p.name for p in pairs)}.",
        "Each pair is two independent simulated scans (own blur, dose, detector, drift) of a "
        "specimen, registered by `pairsr.register`; the overlap is split 3×4, the left 9 "
        "sub-images train and the right 3 are held out (paper Sec. III-B). Scores are against "
        "the registered HR scan (noisy, as in the paper); `whole field` scores the SR of the whole "
        "LR field against the simulator's noise-free ground truth. Settings: "
        + "; ".join(f"{m}: {PARAMS[m]}" for m in methods if m in PARAMS) + ".",
        "",
        "## Table I analogue: ΔPSNR / ΔSSIM vs bicubic and failure rate",
        "",
        "| method | " + " | ".join(f"{s} in-sample | {s} out-of-sample" for s in strategies)
        + " | whole field (self) |",
        "|---|" + "---|---|" * len(strategies) + "---|",
    ]
    for m in methods:
        cells = []
        for s in strategies:
            for split in ("in-sample", "out-of-sample"):
                t = pick(s, m, split)
                cells.append("–" if t is None else f"{t['dpsnr']:+.2f} dB / {t['dssim']:+.3f} / "
                             f"{100 * t['failure_rate']:.0f}%")
        w = pick("self", m, "whole-field-gt")
        cells.append("–" if w is None else f"{w['dpsnr']:+.2f} dB / {w['dssim']:+.3f}")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    out += ["", "## Table III analogue: foreground / background ΔPSNR (self, out-of-sample)", "",
            "| method | ΔPSNR fg (dB) | ΔPSNR bg (dB) |", "|---|---|---|"]
    for m in methods:
        t = pick("self", m, "out-of-sample")
        if t:
            out.append(f"| {m} | {t['dpsnr_fg']:+.2f} | {t['dpsnr_bg']:+.2f} |")
    out += ["", "## Table IV analogue: Canny edge similarity (self, out-of-sample)", "",
            "| method | sim | Δ vs bicubic |", "|---|---|---|"]
    for m in methods:
        t = pick("self", m, "out-of-sample")
        if t:
            out.append(f"| {m} | {t['canny_sim']:.3f} | {t['dcanny_sim']:+.3f} |")
    out += ["", "## Table II analogue: time per pair on this machine (self-training)", "",
            "| method | training (s) | inference (s per output MPix) |", "|---|---|---|"]
    for m in methods:
        sel = [r for r in rows if r["method"] == m and r["strategy"] == "self"
               and r["split"] == "whole-field-gt"]
        if sel:
            mpix = np.mean([4 * p.pair.lr.size / 1e6 for p in pairs])
            out.append(f"| {m} | {np.mean([r['fit_s'] for r in sel]):.1f} | "
                       f"{np.mean([r['predict_s'] for r in sel]) / mpix:.2f} |")
    out += ["", "## Per pair (self, out-of-sample ΔPSNR, dB)", "",
            "| pair | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for p in pairs:
        vals = []
        for m in methods:
            sel = [r["dpsnr"] for r in rows if r["pair"] == p.name and r["method"] == m
                   and r["strategy"] == "self" and r["split"] == "out-of-sample"]
            vals.append(f"{np.mean(sel):+.2f}" if sel else "–")
        out.append(f"| {p.name} | " + " | ".join(vals) + " |")
    out += ["", "![held-out sub-images](results_panel.png)", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--methods", default="bicubic,scsr,srsw,vdsr,edsr,rcan,lbnlm-original,lbnlm")
    ap.add_argument("--strategy", default="both", choices=["self", "pooled", "both"])
    ap.add_argument("--builtin", type=int, default=5, help="built-in specimen pairs")
    ap.add_argument("--lr-shape", default="944x1280")
    ap.add_argument("--no-real", action="store_true", help="skip the real specimens")
    ap.add_argument("--quick", action="store_true", help="2 small built-in pairs, no real ones")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",")]
    if args.quick:
        args.builtin, args.lr_shape, args.no_real = 2, "472x640", True
    t0 = time.perf_counter()
    pairs = build_pairs(args.builtin, tuple(int(v) for v in args.lr_shape.split("x")),
                        not args.no_real)
    crops: dict = {}
    rows = run(pairs, methods, strategy=args.strategy,
               params={m: p for m, p in PARAMS.items() if m in methods},
               whole_field=[m for m in methods if m not in SLOW], crops=crops)
    seconds = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    table = write_report(rows, args.out / "results-data", overwrite=True)
    write_panel(crops, args.out / "results_panel.png")
    text = results_markdown(summarise(rows), rows, pairs, seconds, methods)
    (args.out / "results.md").write_text(text)
    print(text)
    print(f"\n{len(table)} summary rows; {seconds / 60:.1f} min; wrote {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
