"""Reproduce the paper's comparison (Tables I–IV, Fig. 7/8) on simulated physical pairs.

Builds simulated pairs from the built-in specimen and from real micrographs in ``../shared``
(each pair: two independent scans with their own blur, dose, detector and drift), registers
them, and runs the 3×4 sub-image protocol for every method under self- and pooled training.
Writes ``docs/results.md`` (all numbers from this run), the raw rows and a panel figure.

    python benchmarks/reproduce_paper.py                      # the default set, all methods
    python benchmarks/reproduce_paper.py --methods bicubic,lbnlm --quick
    python benchmarks/reproduce_paper.py --render             # results.md from the saved data
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pairsr.api import prepare_pair
from pairsr.evaluate import (
    EvalPair,
    run,
    summarise,
    timing_markdown,
    write_panel,
    write_report,
)
from pairsr.simulate import SimulatedPair, load_specimen, simulate_pair

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
#: CPU-sized settings (the paper: ScSR 1024 atoms, L = 80000 for SRSW and both LB-NLMs, the
#: networks as published and trained to early stopping on a GPU). Here the networks are the
#: ``*-tiny`` presets on a budget of at most 8 epochs × 10 batches: minutes, not GPU-hours.
_NET = {"epochs": 8, "steps": 10, "patience": 3, "lr_rate": 5e-4, "progress": False}
PARAMS = {
    "lbnlm-original": {"L": 4000},
    "scsr": {"atoms": 256, "L": 20000},
    "srsw": {"L": 20000},
    "vdsr": {"preset": "vdsr-tiny", **_NET},
    "edsr": {"preset": "edsr-tiny", **_NET},
    "rcan": {"preset": "rcan-tiny", **_NET},
}
#: Methods too slow on 2 cores to super-resolve every whole field (scored on sub-images only).
SLOW = {"lbnlm-original", "scsr", "srsw"}
#: The paper's Table I, self-training, out-of-sample ΔPSNR (dB), for the ranking comparison.
PAPER_SELF_OUT = {"scsr": 0.23, "srsw": 1.17, "vdsr": 2.07, "edsr": 2.06, "rcan": 2.07,
                  "lbnlm-original": 0.45, "lbnlm": 1.67}
DISCUSSION = Path(__file__).with_name("results_discussion.md")


def simulations(n_builtin: int, lr_shape: tuple[int, int], real: bool,
                **keywords) -> Iterator[tuple[str, SimulatedPair]]:
    """The evaluation set's simulated pairs, (name, pair), one at a time; ``keywords`` go to
    :func:`~pairsr.simulate.simulate_pair` (each changes only what it names)."""
    specs = [(f"builtin-{s}", None, None, None, s) for s in range(n_builtin)]
    if real and SHARED.is_dir():
        specs += [(name, SHARED / f, crop, scale, 100 + i) for i, (name, f, crop, scale)
                  in enumerate(REAL)]
    elif real:
        print(f"note: {SHARED} is absent; only built-in specimens are used")
    for name, path, crop, scale, seed in specs:
        if path is None:
            yield name, simulate_pair(seed=seed, lr_shape=lr_shape, **keywords)
        else:
            yield name, simulate_pair(load_specimen(path, crop=crop).values, seed=seed,
                                      scale=scale, **keywords)


def build_pairs(n_builtin: int, lr_shape: tuple[int, int], real: bool) -> list[EvalPair]:
    """Simulate and register the evaluation pairs."""
    pairs = []
    t0 = time.perf_counter()
    for name, sim in simulations(n_builtin, lr_shape, real):
        pairs.append(EvalPair(name, prepare_pair(sim.lr, sim.hr), gt=sim.gt))
        print(f"{name}: LR {sim.lr.shape}, simulated and registered in "
              f"{time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
    return pairs


def results_markdown(table: list[dict], rows: list[dict], run_info: dict) -> str:
    """docs/results.md: Tables I–IV analogues and the timing table, from this run."""
    def pick(strategy, method, split):
        return next((t for t in table if (t["strategy"], t["method"], t["split"])
                     == (strategy, method, split)), None)

    methods, pairs = run_info["methods"], run_info["pairs"]
    command = f"python benchmarks/reproduce_paper.py {run_info['args']}".strip()
    strategies = sorted({t["strategy"] for t in table}, reverse=True)
    out = [
        "# Results: the paper's comparison on simulated physical pairs",
        "",
        f"Produced by `{command}` in "
        f"{run_info['seconds'] / 60:.1f} min on {run_info['machine']}, "
        f"{len(pairs)} pairs (LR width × height): "
        + ", ".join(f"{name} ({w}×{h})" for name, (h, w) in pairs.items()) + ".",
        "Each pair is two independent simulated scans (own blur, dose, detector, drift) of a "
        "specimen, registered by `pairsr.register`; the overlap is split 3×4, the left 9 "
        "sub-images train and the right 3 are held out (paper Sec. III-B). Scores are against "
        "the registered HR scan (noisy, as in the paper); `whole field` scores the SR of the whole "
        "LR field against the simulator's noise-free ground truth"
        + (f" (not run for {', '.join(sorted(SLOW & set(methods)))}: too slow for every whole "
           "field on this machine)" if SLOW & set(methods) else "")
        + ". Settings (CPU-sized; the paper's are larger, see `PARAMS` in the script): "
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
    for title, head, cells in [
        ("Table III analogue: foreground / background ΔPSNR", "ΔPSNR fg (dB) | ΔPSNR bg (dB)",
         lambda t: f"{t['dpsnr_fg']:+.2f} | {t['dpsnr_bg']:+.2f}"),
        ("Table IV analogue: Canny edge similarity", "sim | Δ vs bicubic",
         lambda t: f"{t['canny_sim']:.3f} | {t['dcanny_sim']:+.3f}"),
    ]:  # fmt: skip
        out += ["", f"## {title} (self, out-of-sample)", "", f"| method | {head} |",
                "|---|---|---|"]
        out += [f"| {m} | {cells(t)} |" for m in methods if (t := pick("self", m, "out-of-sample"))]
    out += ["", "## Table II analogue: training and inference time on this machine", "",
            timing_markdown(table).rstrip()]
    out += ["", "## Ranking against the paper's Table I (self-training, out-of-sample ΔPSNR)", ""]
    out += ranking(table, methods)
    out += ["", "## Per pair (self, out-of-sample ΔPSNR, dB)", "",
            "| pair | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for name in pairs:
        vals = []
        for m in methods:
            sel = [r["dpsnr"] for r in rows if r["pair"] == name and r["method"] == m
                   and r["strategy"] == "self" and r["split"] == "out-of-sample"]
            vals.append(f"{np.mean(sel):+.2f}" if sel else "–")
        out.append(f"| {name} | " + " | ".join(vals) + " |")
    out += ["", "![held-out sub-images](results_panel.png)", ""]
    if DISCUSSION.is_file():
        out += ["## Discussion", "", DISCUSSION.read_text().strip(), ""]
    return "\n".join(out)


def ranking(table: list[dict], methods: list[str]) -> list[str]:
    """Measured vs published order of the methods, best first, with Spearman's ρ."""
    from scipy.stats import spearmanr

    ours = {t["method"]: t["dpsnr"] for t in table
            if (t["strategy"], t["split"]) == ("self", "out-of-sample") and t["method"] in
            PAPER_SELF_OUT}  # fmt: skip
    if len(ours) < 2:
        return ["Too few of the paper's methods in this run to compare rankings."]
    names = sorted(ours, key=ours.get, reverse=True)
    paper = sorted(names, key=PAPER_SELF_OUT.get, reverse=True)
    rho = spearmanr([ours[m] for m in names], [PAPER_SELF_OUT[m] for m in names]).statistic
    return [
        "| rank | this run | ΔPSNR (dB) | paper | ΔPSNR (dB) |", "|---|---|---|---|---|",
        *(f"| {i + 1} | {a} | {ours[a]:+.2f} | {b} | {PAPER_SELF_OUT[b]:+.2f} |"
          for i, (a, b) in enumerate(zip(names, paper))),
        "", f"Spearman rank correlation with the paper: ρ = {rho:.2f} "
        f"({'same order' if names == paper else 'different order'}).",
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--methods", default="bicubic,scsr,srsw,vdsr,edsr,rcan,lbnlm-original,lbnlm")
    ap.add_argument("--strategy", default="both", choices=["self", "pooled", "both"])
    ap.add_argument("--builtin", type=int, default=5, help="built-in specimen pairs")
    ap.add_argument("--lr-shape", default="708x960", help="LR shape of the built-in pairs")
    ap.add_argument("--no-real", action="store_true", help="skip the real specimens")
    ap.add_argument("--quick", action="store_true", help="2 small built-in pairs, no real ones")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite results.md from the last run's results-data (e.g. after "
                         "editing results_discussion.md)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    data = args.out / "results-data"
    if args.render:
        rows = json.loads((data / "report.json").read_text())["rows"]
        run_info = json.loads((data / "run.json").read_text())
    else:
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
        run_info = {
            "args": " ".join(sys.argv[1:]), "seconds": time.perf_counter() - t0,
            "machine": f"{platform.machine()} ({platform.processor() or 'CPU'}, "
                       f"{os.cpu_count()} CPUs)",
            "methods": methods, "pairs": {p.name: p.pair.field_shape for p in pairs},
        }  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        write_report(rows, data, overwrite=True)
        (data / "run.json").write_text(json.dumps(run_info, indent=1))
        write_panel(crops, args.out / "results_panel.png")
    text = results_markdown(summarise(rows), rows, run_info)
    (args.out / "results.md").write_text(text)
    print(text)
    print(f"\n{run_info['seconds'] / 60:.1f} min; wrote {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
