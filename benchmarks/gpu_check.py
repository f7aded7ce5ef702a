"""GPU check: LB-NLM and network speed on the device next to the CPU, and network training.

Run through ``benchmarks/gpu_check.sh`` on a CUDA machine (without one it runs on the CPU, as a
check of the script). Prints two tables. (1) The paired LB-NLM at the paper's defaults (n = 9,
k = 50, K = 10, L ≈ 20000) on a ``--lbnlm-side``² upsampled image: output MPix/s of the exact
path and of the default in numpy (the CPU, all its threads) and on the torch device, and the
largest difference of the device's SR image from numpy's and its 99th percentile (a query patch
whose two nearest categories tie within float32 rounding may take either in the two paths, and
all its pixels then differ). (2) Per network: training wall time
on a simulated physical pair (to early stop or the epoch cap), epochs run, out-of-sample ΔPSNR
over the paper's 3 held-out sub-images, and inference output MPix/s on the device (fp32, AMP)
and on the CPU (on a ``--cpu-crop``² LR crop). With ``--tiled`` it also runs the tiled engine on
a local cluster with one GPU-tagged worker and one untagged worker and reports where the network
tasks ran.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_lbnlm import training_pair

from pairsr.api import fit, prepare_pair
from pairsr.evaluate import EvalPair, evaluate_model, overlap_box, subimages, training_part
from pairsr.lbnlm import lbnlm_filter
from pairsr.library import build_library
from pairsr.networks import Network
from pairsr.simulate import simulate_pair


def _mpix_per_s(run, mpix: float, repeats: int = 3) -> tuple[float, np.ndarray]:
    """Output MPix/s of ``run()`` (best of ``repeats`` after a warm-up) and its last result.
    Every run here returns host arrays, so the device has finished when it returns."""
    out = run()  # warm-up (cuDNN autotune, library preparation)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t0)
    return mpix / best, out


def _network_speed(model: Network, lr: np.ndarray, device: str | None, amp: bool) -> float:
    if amp and not torch.cuda.is_available():
        return float("nan")
    model.params.update(amp=amp, device=device)
    return _mpix_per_s(lambda: model.predict(lr), 4 * lr.size / 1e6)[0]


def lbnlm_speed(side: int, device: str) -> None:
    """Print the LB-NLM table: MPix/s of both paths in numpy and on ``device``."""
    up, hr = training_pair(512)
    library = build_library([(up, hr)], n=9, k=50, K=10, L=20000)
    reps = -(-side // 512)
    image = np.ascontiguousarray(np.tile(up, (reps, reps))[:side, :side])
    print(f"\npaired LB-NLM, {side}×{side} SR image, L = {len(library)}, σ = 0.02 "
          f"(output MPix/s; difference: largest |device − numpy| of the SR image, and its 99th "
          f"percentile)")
    print("| path | numpy (CPU) | device | difference | 99 % |\n|---|---|---|---|---|")
    for name, exact in (("default", False), ("exact", True)):
        cpu, ref = _mpix_per_s(lambda e=exact: lbnlm_filter(image, library, sigma=0.02, exact=e),
                               image.size / 1e6)  # fmt: skip
        dev, out = _mpix_per_s(lambda e=exact: lbnlm_filter(image, library, sigma=0.02, exact=e,
                                                            device=device), image.size / 1e6)
        diff = np.abs(out - ref)
        print(f"| {name} | {cpu:.2f} | {dev:.2f} | {diff.max():.1e} | "
              f"{np.percentile(diff, 99):.1e} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="vdsr:vdsr,edsr:edsr-baseline")
    ap.add_argument("--lr-shape", default="944x1280")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--tiled", action="store_true")
    ap.add_argument("--lbnlm-side", type=int, default=2048, help="SR side of the LB-NLM image")
    ap.add_argument("--cpu-crop", type=int, default=256, help="LR side for CPU inference")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "none (CPU run)"
    print(f"device: {gpu}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    lbnlm_speed(args.lbnlm_side, "cuda" if cuda else "cpu")
    if not args.models:
        return
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
        crop = pair.lr[: args.cpu_crop, : args.cpu_crop]
        rows.append((spec, train_s, epochs, float(np.mean(held)),
                     _network_speed(model, pair.lr, None, False),
                     _network_speed(model, pair.lr, None, True),
                     _network_speed(model, crop, "cpu", False)))  # fmt: skip
    base = fit([training_part(ep)], "lbnlm")
    lb = [r["dpsnr"] for r in evaluate_model(base, ep, whole_field=False)
          if r["split"] == "out-of-sample"]
    print(f"\npaired LB-NLM (CPU) out-of-sample ΔPSNR: {np.mean(lb):+.2f} dB")
    print("| model | train (s) | epochs | out-of-sample ΔPSNR (dB) | device fp32 MPix/s "
          "| device AMP MPix/s | CPU MPix/s |\n|---|---|---|---|---|---|---|")
    for spec, train_s, epochs, dpsnr, fp32, amp, cpu in rows:
        print(f"| {spec} | {train_s:.1f} | {epochs} | {dpsnr:+.2f} | {fp32:.1f} | {amp:.1f} "
              f"| {cpu:.2f} |")
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
