"""Deep SR on 2 CPU cores: a CPU preset self-trained on a simulated pair vs paired LB-NLM, and
inference speed of every model and preset.

    python benchmarks/bench_networks.py                 # 944x1280 pair, 15-minute budget
    python benchmarks/bench_networks.py --quick         # 472x640 pair, 3-minute budget

Prints two tables: out-of-sample ΔPSNR (the paper's 3 held-out sub-images) of the preset and of
paired LB-NLM on the same pair, with training time; and inference seconds per output megapixel.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pairsr.api import fit, prepare_pair
from pairsr.evaluate import EvalPair, evaluate_model, overlap_box, subimages, training_part
from pairsr.models import PRESETS, build_model, predict
from pairsr.simulate import simulate_pair


def held_out(model, ep: EvalPair) -> float:
    rows = evaluate_model(model, ep, whole_field=False)
    return float(np.mean([r["dpsnr"] for r in rows if r["split"] == "out-of-sample"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="edsr:edsr-tiny")
    ap.add_argument("--lr-shape", default="944x1280")
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.lr_shape, args.minutes = "472x640", 3.0
    shape = tuple(int(v) for v in args.lr_shape.split("x"))
    sim = simulate_pair(seed=1, lr_shape=shape)
    ep = EvalPair("sim", prepare_pair(sim.lr, sim.hr))
    ep.boxes = subimages(overlap_box(ep.pair.hr))
    train_pair = training_part(ep)

    t0 = time.perf_counter()
    lbnlm = fit([train_pair], "lbnlm")
    lb_s = time.perf_counter() - t0
    method, preset = args.preset.split(":")
    # Epochs that fit the budget: time one epoch first, then train to early stop within it.
    t0 = time.perf_counter()
    fit([train_pair], method, preset=preset, epochs=1, progress=False, lr_rate=5e-4)
    epoch_s = time.perf_counter() - t0
    epochs = max(1, int(args.minutes * 60 / epoch_s))
    t0 = time.perf_counter()
    net = fit([train_pair], method, preset=preset, epochs=epochs, patience=5, progress=False,
              lr_rate=5e-4)
    net_s = time.perf_counter() - t0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; pair LR {shape}")
    print("| method | training (s) | epochs | out-of-sample ΔPSNR (dB) |")
    print("|---|---|---|---|")
    print(f"| paired LB-NLM | {lb_s:.1f} | – | {held_out(lbnlm, ep):+.3f} |")
    print(f"| {args.preset} | {net_s:.1f} | ≤ {epochs} | {held_out(net, ep):+.3f} |")

    lr = ep.pair.lr[:128, :128]
    print("\n| model | parameters | inference (s per output MPix) |")
    print("|---|---|---|")
    for name, spec in PRESETS.items():
        model = build_model(spec["method"], name)
        predict(model, lr[:32, :32], device="cpu")
        t0 = time.perf_counter()
        predict(model, lr, device="cpu")
        seconds = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params / 1e6:.2f} M | {seconds / (4 * lr.size / 1e6):.1f} |")


if __name__ == "__main__":
    main()
