"""GPU check: self-train networks on a simulated physical pair, report time, ΔPSNR and speed.

Run through ``benchmarks/gpu_check.sh`` on a CUDA machine. Prints a table: per model the
training wall time (to early stop or the epoch cap), epochs run, out-of-sample ΔPSNR over the
paper's 3 held-out sub-images, and inference ms per output megapixel (fp32 and AMP). With
``--tiled`` it also runs the tiled engine on a local cluster with one GPU-tagged worker and one
untagged worker and reports where the network tasks ran.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pairsr.api import fit, prepare_pair
from pairsr.evaluate import EvalPair, evaluate_model, overlap_box, subimages, training_part
from pairsr.methods import Network
from pairsr.simulate import simulate_pair


def _ms_per_mpix(model: Network, lr: np.ndarray, amp: bool) -> float:
    if amp and not torch.cuda.is_available():
        return float("nan")
    model.params["amp"] = amp
    model.predict(lr)  # warm-up (cuDNN autotune); predict returns host arrays, so it syncs
    t0 = time.perf_counter()
    for _ in range(3):
        model.predict(lr)
    return (time.perf_counter() - t0) / 3 * 1e3 / (4 * lr.size / 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="vdsr:vdsr,edsr:edsr-baseline")
    ap.add_argument("--lr-shape", default="944x1280")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--tiled", action="store_true")
    args = ap.parse_args()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU run)"
    print(f"device: {gpu}, torch {torch.__version__}")
    shape = tuple(int(v) for v in args.lr_shape.split("x"))
    t0 = time.perf_counter()
    sim = simulate_pair(seed=1, lr_shape=shape)
    pair = prepare_pair(sim.lr, sim.hr)
    ep = EvalPair("sim", pair, gt=sim.gt)
    ep.boxes = subimages(overlap_box(pair.hr))
    print(f"simulate + register: {time.perf_counter() - t0:.1f} s")
    rows = []
    work = Path(tempfile.mkdtemp())
    for spec in args.models.split(","):
        method, preset = spec.split(":")
        t0 = time.perf_counter()
        model = fit([training_part(ep)], method, out=work / spec.replace(":", "-"),
                    preset=preset, epochs=args.epochs, patience=args.patience, progress=False)
        train_s = time.perf_counter() - t0
        scores = evaluate_model(model, ep, whole_field=False)
        held = [r["dpsnr"] for r in scores if r["split"] == "out-of-sample"]
        epochs = len(json.loads((Path(model.params["folder"]) / "train_log.json").read_text()))
        rows.append((spec, train_s, epochs, float(np.mean(held)),
                     _ms_per_mpix(model, pair.lr, False), _ms_per_mpix(model, pair.lr, True)))
    base = fit([training_part(ep)], "lbnlm")
    lb = [r["dpsnr"] for r in evaluate_model(base, ep, whole_field=False)
          if r["split"] == "out-of-sample"]
    print(f"\npaired LB-NLM (CPU) out-of-sample ΔPSNR: {np.mean(lb):+.2f} dB")
    print("| model | train (s) | epochs | out-of-sample ΔPSNR (dB) | fp32 ms/MPix | AMP ms/MPix |")
    print("|---|---|---|---|---|---|")
    for spec, train_s, epochs, dpsnr, ms32, ms16 in rows:
        print(f"| {spec} | {train_s:.1f} | {epochs} | {dpsnr:+.2f} | {ms32:.1f} | {ms16:.1f} |")
    if args.tiled:
        _tiled_check(work, sim.lr, rows[0][0].replace(":", "-"))


def _tiled_check(work: Path, lr: np.ndarray, model_name: str) -> None:
    """Tiled inference on a local cluster: one GPU-tagged worker, one untagged."""
    from pairsr.cluster import get_client
    from pairsr.io import write_ome_zarr
    from pairsr.tiles import apply_tiled

    write_ome_zarr(work / "lr.zarr", lr, chunks=256)
    with get_client(workers=2, gpu_workers=1) as client:
        tagged = {a for a, w in client.scheduler_info()["workers"].items() if w["resources"]}
        t0 = time.perf_counter()
        apply_tiled(work / model_name, work / "lr.zarr", work / "sr.zarr", tile=256,
                    client=client, progress=False)
        seconds = time.perf_counter() - t0
    log = json.loads((work / "sr.zarr" / ".pairsr" / "log.json").read_text())
    ran = {t["worker"] for t in log["tasks"]}
    print(f"\ntiled {model_name}: {len(log['tasks'])} tasks in {seconds:.1f} s on a 2-worker local "
          f"cluster; ran on {sorted(ran)}; GPU-tagged: {sorted(tagged)}; only tagged: "
          f"{ran <= tagged}")


if __name__ == "__main__":
    main()
