"""Train a deep SR network on one physical pair (self-training) or several (pooled; paper III-B).

Each pair is ``(lr, hr)``: a float32 LR image ``(h, w)`` and the HR image registered onto its
×``zoom`` SR grid, ``(zoom·h, zoom·w)``, NaN where the HR scan did not reach. Training follows
the paper:

* **Validation split.** The LR grid is cut into blocks of ``2 * patch`` LR pixels; a
  ``val_fraction`` of each pair's blocks that are at least half covered by HR is held out. Their
  HR never enters training; the model is scored on them (with the surrounding LR as context, as
  in inference) by the PSNR pooled over all their HR pixels.
* **Augmentation.** Each pair is also downsized by 0.7 and 0.5 (LR and HR alike, keeping the
  zoom and the SR grid; NaN spreads to every pixel it touches) and every patch gets one of the 8
  flips and 90° rotations.
* **Samples.** Random LR ``patch``² patches whose HR ``(zoom·patch)²`` part is fully valid.
* **Loss** as in each network's paper: L2 for VDSR, L1 for EDSR and RCAN; Adam at ``lr_rate``
  (default per preset, :data:`LR_RATES`), halved after every ``max(1, patience // 2)`` epochs in
  a row without a better validation PSNR.
* **Early stopping.** After ``patience`` epochs without a better validation PSNR, training stops,
  but only once the best validation PSNR has passed bicubic's (before that only ``epochs`` or
  ``budget_s`` stop it); the weights of the best epoch are kept. ``budget_s`` bounds the seconds
  a call trains (checked after every step; the epoch it interrupts is validated and counts).

Reproducibility: the weights are initialised under ``torch.manual_seed(seed)`` (the caller's
global RNG state is restored afterwards) and epoch ``e`` draws its patches from
``numpy.random.default_rng([seed, e])`` alone, so a run resumed from ``checkpoint.pt`` (weights,
optimizer, epoch, best state and log, written atomically after each epoch) replays exactly the
epochs it missed: on the CPU, ``k`` epochs, an interruption and a resumption to ``n`` give the
same weights as ``n`` epochs in one go.

The model folder ``out/`` holds ``weights.pt`` (best state dict), ``config.json`` (method,
preset, architecture, receptive field, zoom, training parameters, seed, results, pairsr version),
``train_log.json`` (per epoch: loss, validation PSNR, seconds) and ``checkpoint.pt``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from skimage.metrics import peak_signal_noise_ratio
from skimage.transform import resize
from torch import nn

from pairsr import __version__
from pairsr.grid import BICUBIC_HALO, bicubic, sr_shape
from pairsr.models import build_model, default_device, predict, preset_params
from pairsr.region import Region, predict_region, window_sums

#: Downsizing factors of the pair (paper III-B); 1 is the pair itself.
SCALES = (1.0, 0.7, 0.5)
#: Loss of each method, as in its paper.
LOSSES: dict[str, type[nn.Module]] = {"vdsr": nn.MSELoss, "edsr": nn.L1Loss, "rcan": nn.L1Loss}
#: Default Adam learning rate per preset (``None``: the published network): the ``*-tiny``
#: presets, self-trained on one pair within minutes, learn too slowly at the published 1e-4.
LR_RATES: dict[str | None, float] = {None: 1e-4, "vdsr-tiny": 5e-4, "edsr-tiny": 5e-4,
                                      "rcan-tiny": 5e-4}
Pair = tuple[np.ndarray, np.ndarray]
Block = tuple[int, slice, slice]  # (pair index, LR rows, LR cols)


@dataclass(frozen=True)
class TrainResult:
    """A trained model (best weights, eval mode), its ``config.json``, per-epoch log and folder."""

    model: nn.Module
    config: dict
    log: list[dict]
    folder: Path


def _check_pairs(pairs: list[Pair], zoom: int) -> list[Pair]:
    if not pairs:
        raise ValueError("pairs is empty: training needs at least one (lr, hr) pair")
    if not (isinstance(zoom, int | np.integer) and zoom >= 2):
        raise ValueError(f"zoom must be an integer of at least 2, got {zoom!r}")
    out = []
    for k, (lr, hr) in enumerate(pairs):
        lr, hr = np.asarray(lr, np.float32), np.asarray(hr, np.float32)
        if lr.ndim != 2 or hr.shape != sr_shape(lr.shape, zoom):
            raise ValueError(
                f"pair {k}: hr must be 2-D of shape {zoom}× the 2-D lr, got {lr.shape}, {hr.shape}"
            )
        if not np.isfinite(lr).all():
            raise ValueError(f"pair {k}: lr has NaN or infinite pixels")
        out.append((lr, hr))
    return out


def _fingerprint(pairs: list[Pair]) -> str:
    """SHA-256 of the pairs' shapes and pixels, so a resumption checks it sees the same data."""
    h = hashlib.sha256()
    for lr, hr in pairs:
        for a in (lr, hr):
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _split(
    pairs: list[Pair], block: int, val_fraction: float, rng: np.random.Generator, zoom: int = 2
) -> tuple[list[Pair], list[Block]]:
    """Hold out validation blocks: (pairs with their HR NaN there, the blocks).

    Blocks are ``block`` LR px squared, or half that where no pair holds two such blocks at
    least half covered by HR; where none holds two of those either, nothing is held out
    (a warning: training runs its epochs without early stopping).
    """
    if val_fraction <= 0:
        return list(pairs), []
    for size in (block, max(1, block // 2)):
        train_pairs, val_blocks = _hold_out(pairs, size, val_fraction, rng, zoom)
        if val_blocks:
            return train_pairs, val_blocks
    warnings.warn(f"no validation: no pair's HR covers two blocks of {max(1, block // 2)}² LR "
                  "px at least half; training runs all its epochs without early stopping (a "
                  "smaller -p patch=N validates on smaller blocks)", stacklevel=3)
    return list(pairs), []


def _hold_out(
    pairs: list[Pair], block: int, val_fraction: float, rng: np.random.Generator, zoom: int
) -> tuple[list[Pair], list[Block]]:
    """:func:`_split` with blocks of ``block`` LR px (none held out where too few)."""
    z = zoom
    train_pairs, val_blocks = [], []
    for k, (lr, hr) in enumerate(pairs):
        candidates = []
        for r in range(0, lr.shape[0], block):
            for c in range(0, lr.shape[1], block):
                rows, cols = slice(r, r + block), slice(c, c + block)
                hr_part = hr[z * r : z * (r + block), z * c : z * (c + block)]
                if np.isfinite(hr_part).sum() >= hr_part.size / 2:
                    candidates.append((k, rows, cols))
        n_val = 0  # at least one block held out, and at least one left to train on
        if len(candidates) > 1:
            n_val = min(max(round(val_fraction * len(candidates)), 1), len(candidates) - 1)
        held = [candidates[i] for i in sorted(rng.choice(len(candidates), n_val, replace=False))]
        hr = hr.copy()
        for _, rows, cols in held:
            hr[z * rows.start : z * rows.stop, z * cols.start : z * cols.stop] = np.nan
        train_pairs.append((lr, hr))
        val_blocks += held
    return train_pairs, val_blocks


def _downsize(lr: np.ndarray, hr: np.ndarray, scale: float, zoom: int = 2) -> Pair:
    """The pair downsized by ``scale``, LR and HR alike, HR staying on the SR grid of the LR.

    Bilinear with skimage's anti-aliasing, each image in its own pixels: as if both were scanned
    at ``1/scale`` times their pixel size. NaN spreads to every output pixel it touches.
    """
    if scale == 1:
        return lr, hr
    shape = (max(1, round(lr.shape[0] * scale)), max(1, round(lr.shape[1] * scale)))
    kw = {"order": 1, "mode": "symmetric", "anti_aliasing": True}
    return (resize(lr, shape, **kw).astype(np.float32),
            resize(hr, sr_shape(shape, zoom), **kw).astype(np.float32))


class _PatchSampler:
    """Random LR patches and their fully valid HR patches from the pairs downsized by ``scales``."""

    def __init__(self, pairs: list[Pair], patch: int, scales: tuple[float, ...] = SCALES,
                 zoom: int = 2) -> None:
        self.patch, self.zoom = patch, zoom
        self.images: list[Pair] = []
        self.positions: list[np.ndarray] = []  # (2, n): valid top-left LR corners per image
        for lr, hr in pairs:
            for scale in scales:
                lr_s, hr_s = _downsize(lr, hr, scale, zoom)
                h, w = lr_s.shape
                valid = np.isfinite(hr_s).reshape(h, zoom, w, zoom).all(axis=(1, 3))
                ok = window_sums(~valid, (patch, patch)) == 0  # all valid
                if ok.any():
                    self.images.append((lr_s, hr_s))
                    self.positions.append(np.stack(np.nonzero(ok)))
        counts = np.array([p.shape[1] for p in self.positions], dtype=float)
        if not counts.sum():
            raise ValueError(f"no {patch}×{patch} LR patch has a fully valid HR part to train on")
        self.weights = counts / counts.sum()
        #: Number of valid patch positions, all images and scales (sizes an epoch).
        self.n_positions = int(counts.sum())

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` augmented patches: LR ``(n, 1, p, p)`` and HR ``(n, 1, zp, zp)`` float32."""
        p, zoom = self.patch, self.zoom
        lr_out = np.empty((n, 1, p, p), np.float32)
        hr_out = np.empty((n, 1, zoom * p, zoom * p), np.float32)
        for i, k in enumerate(rng.choice(len(self.images), n, p=self.weights)):
            lr, hr = self.images[k]
            r, c = self.positions[k][:, rng.integers(self.positions[k].shape[1])]
            rot, flip = rng.integers(4), rng.integers(2)
            for out, img, z in ((lr_out, lr, 1), (hr_out, hr, zoom)):
                x = np.rot90(img[z * r : z * (r + p), z * c : z * (c + p)], rot)
                out[i, 0] = x[:, ::-1] if flip else x
        return lr_out, hr_out


def _val_psnr(upsample, halo: int, pairs: list[Pair], blocks: list[Block],
              zoom: int = 2) -> float:
    """PSNR (dB) of ``upsample`` (LR → SR) over the valid HR pixels of all validation blocks."""
    preds, refs = [], []
    for k, rows, cols in blocks:
        lr, hr = pairs[k]
        block = Region.from_bounds((rows.start, cols.start), (rows.stop, cols.stop))
        block = block.intersect(Region.of(lr.shape))
        pred = predict_region(upsample, lr, block, halo, zoom)
        ref = block.sr(zoom).crop(hr)
        valid = np.isfinite(ref)
        preds.append(pred[valid])
        refs.append(ref[valid])
    return float(peak_signal_noise_ratio(np.concatenate(refs), np.concatenate(preds), data_range=1))


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _train_epoch(model, optimizer, loss_fn, sampler: _PatchSampler, rng: np.random.Generator,
                 steps: int, batch: int, device: torch.device, on_step,
                 deadline: float = math.inf) -> float:
    """Run ``steps`` optimisation steps on patches drawn with ``rng`` (fewer if
    ``time.perf_counter()`` passes ``deadline``); return the mean loss."""
    model.train()
    total, done = 0.0, 0
    for _ in range(steps):
        x, y = (torch.from_numpy(a).to(device) for a in sampler.sample(rng, batch))
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        done += 1
        on_step()
        if time.perf_counter() > deadline:
            break
    return total / done


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.5f}  val {task.fields[val]}"), TimeElapsedColumn(),
        disable=not enabled,
    )


def train(
    pairs: list[Pair],
    method: str,
    preset: str | None = None,
    *,
    out: str | Path,
    zoom: int = 2,
    epochs: int = 50,
    patch: int = 48,
    batch: int = 16,
    lr_rate: float | None = None,
    val_fraction: float = 0.2,
    patience: int = 10,
    steps: int | None = None,
    budget_s: float | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a ×``zoom`` ``method`` (architecture ``preset``, default as published) on ``pairs``
    (HR on the ×``zoom`` SR grid of the LR); write ``out``.

    ``epochs`` is the most run (fewer if early stopping triggers after ``patience`` epochs without
    a better validation PSNR); each has ``steps`` batches of ``batch`` LR patches of ``patch``²
    pixels (default: ``8 · positions / (patch² · batch)``, with ``positions`` the valid patch
    positions at all scales: about one pass over the 8 flipped and rotated copies of the
    training area). ``lr_rate`` defaults to the preset's (:data:`LR_RATES`, else 1e-4);
    ``budget_s`` bounds the training seconds of this call (default: none).
    ``val_fraction=0`` disables validation: the last epoch is kept. ``device``:
    default CUDA if available, else CPU. ``resume`` continues from ``out/checkpoint.pt`` if
    present (the training parameters and data must match; ``epochs`` may grow); without it an
    existing checkpoint is an error rather than overwritten.
    """
    pairs = _check_pairs(pairs, zoom)
    out = Path(out)
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists() and not resume:
        raise FileExistsError(f"{checkpoint} exists: pass resume=True to continue, or another out")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    counts = {"epochs": epochs, "patch": patch, "batch": batch, "patience": patience}
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if budget_s is not None and not budget_s > 0:
        raise ValueError(f"budget_s must be > 0 seconds, got {budget_s}")
    deadline = time.perf_counter() + (budget_s if budget_s is not None else math.inf)
    lr_rate = LR_RATES.get(preset, LR_RATES[None]) if lr_rate is None else lr_rate
    device = default_device(device)
    architecture = preset_params(method, preset)
    train_pairs, val_blocks = _split(pairs, 2 * patch, val_fraction, np.random.default_rng(seed),
                                     zoom)
    sampler = _PatchSampler(train_pairs, patch, zoom=zoom)
    steps = steps or max(1, math.ceil(8 * sampler.n_positions / (patch * patch * batch)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(method, preset, zoom=zoom).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr_rate)
    loss_fn = LOSSES[method]()
    # Everything a resumption must share with the run it continues.
    settings = {
        "method": method, "preset": preset, "architecture": architecture, "zoom": zoom,
        "patch": patch,
        "batch": batch, "lr_rate": lr_rate, "val_fraction": val_fraction, "patience": patience,
        "steps": steps, "seed": seed, "data": _fingerprint(pairs),
    }
    start, log = 0, []
    best = {"psnr": -math.inf, "epoch": 0, "wait": 0, "state": None}
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
        if changed:
            raise ValueError(f"{checkpoint}: cannot resume, these settings differ: {changed}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best, log = state["epoch"], state["best"], state["log"]
    out.mkdir(parents=True, exist_ok=True)
    bicubic_psnr = _val_psnr(lambda lr: bicubic(lr, zoom), BICUBIC_HALO, pairs, val_blocks,
                             zoom) if val_blocks else -math.inf
    decay_after = max(1, patience // 2)

    with _progress_bar(progress) as bar:
        task = bar.add_task("training", total=epochs * steps, completed=start * steps,
                            loss=math.nan, val="-")
        for epoch in range(start, epochs):
            if _stops(best, patience, bicubic_psnr) or (
                    epoch > start and time.perf_counter() > deadline):  # at least one epoch
                break
            bar.update(task, description=f"epoch {epoch + 1}/{epochs}")
            t0 = time.perf_counter()
            loss = _train_epoch(model, optimizer, loss_fn, sampler,
                                np.random.default_rng([seed, epoch]), steps, batch, device,
                                on_step=lambda: bar.advance(task), deadline=deadline)
            val = None
            if val_blocks:
                val = _val_psnr(lambda lr: predict(model, lr, device=device),
                                model.receptive_field, pairs, val_blocks, zoom)
            if val is None or val > best["psnr"]:
                weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = {"psnr": -math.inf if val is None else val, "epoch": epoch + 1, "wait": 0,
                        "state": weights}
            else:
                best["wait"] += 1
                if best["wait"] % decay_after == 0:
                    for group in optimizer.param_groups:
                        group["lr"] /= 2
            log.append({"epoch": epoch + 1, "loss": loss, "val_psnr": val,
                        "seconds": time.perf_counter() - t0})
            bar.update(task, loss=loss, val="-" if val is None else f"{val:.2f} dB")
            _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "epoch": epoch + 1, "best": best, "log": log, "settings": settings},
                         checkpoint)

    model.load_state_dict(best["state"])
    model.eval()
    config = {
        "method": method,
        "preset": preset,
        "architecture": architecture,
        "receptive_field": model.receptive_field,
        "zoom": zoom,
        "training": {
            "epochs": epochs, "patch": patch, "batch": batch, "lr_rate": lr_rate,
            "val_fraction": val_fraction, "patience": patience, "steps": steps,
            "loss": type(loss_fn).__name__, "optimizer": "Adam", "scales": list(SCALES),
            "lr_halved_after": decay_after, "budget_s": budget_s,
            "dihedral": True, "validation_block": 2 * patch, "validation_blocks": len(val_blocks),
        },
        "seed": seed,
        "data": {"pairs": len(pairs), "sha256": settings["data"]},
        "result": {
            "epochs_run": len(log), "best_epoch": best["epoch"],
            "best_val_psnr": best["psnr"] if val_blocks else None,
            "bicubic_val_psnr": bicubic_psnr if val_blocks else None,
            "stopped_early": _stops(best, patience, bicubic_psnr),
            "out_of_budget": time.perf_counter() > deadline, "device": str(device),
        },
        "pairsr_version": __version__,
    }
    torch.save(best["state"], out / "weights.pt")
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    return TrainResult(model=model, config=config, log=log, folder=out)


def _stops(best: dict, patience: int, bicubic_psnr: float) -> bool:
    """Early stopping: ``patience`` epochs without progress, once past bicubic's PSNR."""
    return best["wait"] >= patience and best["psnr"] > bicubic_psnr


def load(folder: str | Path, device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
    """The trained model (eval mode, on ``device``, default CPU) and config of a model folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    paths = {name: folder / name for name in ("config.json", "weights.pt")}
    for name, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {name}; not a pairsr model folder from train()")
    try:
        config = json.loads(paths["config.json"].read_text())
        model = build_model(config["method"], config["preset"], zoom=config.get("zoom", 2),
                            **config["architecture"])
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{paths['config.json']}: corrupt or unknown config ({err})") from err
    try:
        state = torch.load(paths["weights.pt"], map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, EOFError, pickle.UnpicklingError, AttributeError) as err:
        raise ValueError(f"{paths['weights.pt']}: corrupt or mismatched weights ({err})") from err
    return model.to(device or "cpu").eval(), config
