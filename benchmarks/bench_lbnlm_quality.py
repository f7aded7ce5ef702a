"""Quality of the reduced LB-NLM filter (the default) against the exact one, pair by pair.

On the evaluation pairs of ``benchmarks/reproduce_paper.py`` (built-in and real specimens), fits
the paired LB-NLM once per pair on its training sub-images (σ chosen automatically, as
``pairsr fit`` does), predicts the held-out column of sub-images with both paths of the filter
and prints per pair: σ, the out-of-sample ΔPSNR over bicubic (mean of the held-out sub-images)
of the exact path and of the default, their difference, and the seconds each prediction took.

Run: ``.venv/bin/python benchmarks/bench_lbnlm_quality.py [--builtin 5] [--no-real]
[--cache DIR]`` (``--cache`` keeps the registered pairs and fitted models for a rerun).
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np
from reproduce_paper import build_pairs

from pairsr.api import fit
from pairsr.evaluate import GRID, EvalPair, is_train, overlap_box, subimages, training_part
from pairsr.methods import Bicubic, SRMethod, load_model, save_model
from pairsr.metrics import score
from pairsr.region import Region, predict_region

ZOOM = 2


def held_out(model: SRMethod, ep: EvalPair) -> tuple[list[float], float]:
    """Out-of-sample ΔPSNR (dB) of each held-out sub-image and the seconds of the prediction.

    The held-out sub-images form one column: it is super-resolved at once, with the model's
    full context around it, as :func:`pairsr.evaluate.evaluate_model` does for the whole box.
    """
    boxes = [Region.from_bounds((y0, x0), (y1, x1))
             for i, (y0, y1, x0, x1) in enumerate(ep.boxes) if not is_train(i)]
    column = Region.bounding(boxes)
    start = time.perf_counter()
    sr = predict_region(model.predict, ep.pair.lr, column, model.halo, ZOOM, model.align)
    seconds = time.perf_counter() - start
    bic = predict_region(Bicubic(zoom=ZOOM).predict, ep.pair.lr, column, model.halo, ZOOM)
    scores = []
    for box in boxes:
        own = box.relative_to(column).sr(ZOOM).slices
        ref = box.sr(ZOOM).crop(ep.pair.hr)
        scores.append(score(np.clip(sr[own], 0, 1), np.clip(bic[own], 0, 1), ref)["dpsnr"])
    return scores, seconds


def setup(builtin: int, real: bool, cache: Path | None) -> list[tuple[EvalPair, SRMethod]]:
    """The evaluation pairs and a paired LB-NLM fitted on each (from ``cache`` if there)."""
    listing = cache / "pairs.pkl" if cache else None
    if listing and listing.is_file():
        pairs = pickle.loads(listing.read_bytes())
    else:
        pairs = build_pairs(builtin, (708, 960), real)
        if listing:
            cache.mkdir(parents=True, exist_ok=True)
            listing.write_bytes(pickle.dumps(pairs))
    fitted = []
    for ep in pairs:
        ep.boxes = subimages(overlap_box(ep.pair.hr, ZOOM), GRID)
        folder = cache / ep.name if cache else None
        if folder and folder.is_dir():
            model = load_model(folder)
        else:
            start = time.perf_counter()
            model = fit([training_part(ep)], "lbnlm")
            print(f"{ep.name}: fitted in {time.perf_counter() - start:.1f} s", flush=True)
            if folder:
                save_model(model, folder)
        fitted.append((ep, model))
    return fitted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--builtin", type=int, default=5, help="built-in specimen pairs")
    ap.add_argument("--no-real", action="store_true", help="skip the real specimens")
    ap.add_argument("--cache", type=Path, help="folder for the pairs and models, reused if there")
    args = ap.parse_args()
    fitted = setup(args.builtin, not args.no_real, args.cache)
    print("\n| pair | σ | exact ΔPSNR (dB) | default ΔPSNR (dB) | difference (dB) "
          "| exact (s) | default (s) |\n|---|---|---|---|---|---|---|")  # fmt: skip
    worst = 0.0
    for ep, model in fitted:
        results = {}
        for exact in (True, False):
            model.params["exact"] = exact
            results[exact] = held_out(model, ep)
        (ref, ref_s), (new, new_s) = results[True], results[False]
        diff = float(np.mean(new) - np.mean(ref))
        worst = max(worst, abs(diff))
        print(f"| {ep.name} | {model.params['sigma']:g} | {np.mean(ref):+.3f} "
              f"| {np.mean(new):+.3f} | {diff:+.3f} | {ref_s:.1f} | {new_s:.1f} |",
              flush=True)  # fmt: skip
    print(f"\nlargest |difference|: {worst:.3f} dB over {len(fitted)} pairs")


if __name__ == "__main__":
    main()
