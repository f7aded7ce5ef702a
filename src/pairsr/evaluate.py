"""The paper's evaluation protocol (Sec. III-B, III-D) on physical pairs.

The overlap of each registered pair (the largest axis-aligned LR box that the HR covers) is split
into 3 × 4 sub-images; the left 9 train, the right 3 are held out. Self-training fits one model per
pair on its 9 training sub-images; pooled training fits one model on the training sub-images of all
pairs. Every method is scored on every sub-image against the registered HR (in-sample: the 9
training ones, out-of-sample: the 3 held out), as ΔPSNR, ΔSSIM, failure rate (ΔPSNR < 0),
foreground/background ΔPSNR and Canny edge similarity; for simulated pairs, also over the whole
field against the noise-free ``gt``.

A field with several HR scans is one :class:`EvalPair` per scan, sharing a ``field_name``: each
footprint is split 3 × 4 on its own, self-training fits one model on the training sub-images of
them all (as ``pairsr fit LR HR1 HR2`` does), none of which trains where another scan's
sub-image is held out, and the whole field is scored once.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pairsr.api import TrainingPair, fit
from pairsr.grid import bicubic
from pairsr.methods import Bicubic, method_class
from pairsr.metrics import score
from pairsr.region import Region, predict_region

GRID = (3, 4)
TRAIN_COLS = 3  # the left 3 of 4 columns train, the right one is held out
Box = tuple[int, int, int, int]  # (y0, y1, x0, x1) in LR pixels, end-exclusive


@dataclass
class EvalPair:
    """A registered pair to evaluate; ``boxes`` in the LR px of ``pair.lr`` (its window);
    ``gt`` (SR grid, whole field) only for simulated pairs; ``field_name``: the LR field's name
    (``pairsr evaluate``: its file), shared by the pairs of its HR scans when it has several
    and unique to the field (None: a field of one scan)."""

    name: str
    pair: TrainingPair
    gt: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)
    field_name: str | None = None

    def held_out(self) -> list[Region]:
        """The held-out sub-images in LR px of the whole field."""
        return [_region(b).shift(self.pair.region.start)
                for i, b in enumerate(self.boxes) if not is_train(i)]


def by_field(pairs: Sequence[EvalPair]) -> list[list[EvalPair]]:
    """Self-training's groups, in order: each pair alone, the HR scans of one field together."""
    groups: dict = {}
    for ep in pairs:
        groups.setdefault(ep.field_name or id(ep), []).append(ep)
    return list(groups.values())


def overlap_box(hr_sr: np.ndarray, zoom: int = 2, grid: tuple[int, int] = GRID) -> Box:
    """Largest-ish axis-aligned LR box fully covered by ``hr_sr`` (no NaN), sides divisible by
    ``grid``: start from the bounding box and shrink the worst edge until all is valid."""
    h, w = hr_sr.shape[0] // zoom, hr_sr.shape[1] // zoom
    valid = np.isfinite(hr_sr[: h * zoom, : w * zoom]).reshape(h, zoom, w, zoom).all(axis=(1, 3))
    rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
    if rows.size == 0:
        raise ValueError("the registered HR covers no LR pixel")
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    while y1 - y0 > 0 and x1 - x0 > 0:
        edges = {
            "top": (~valid[y0, x0:x1]).sum(), "bottom": (~valid[y1 - 1, x0:x1]).sum(),
            "left": (~valid[y0:y1, x0]).sum(), "right": (~valid[y0:y1, x1 - 1]).sum(),
        }  # fmt: skip
        worst = max(edges, key=edges.get)
        if edges[worst] == 0:
            break
        y0, y1, x0, x1 = (y0 + (worst == "top"), y1 - (worst == "bottom"),
                          x0 + (worst == "left"), x1 - (worst == "right"))
    gy, gx = grid
    y1 = y0 + (y1 - y0) // gy * gy
    x1 = x0 + (x1 - x0) // gx * gx
    if y1 - y0 < 8 * gy or x1 - x0 < 8 * gx:
        raise ValueError(f"overlap box {(y0, y1, x0, x1)} is too small for {gy}×{gx} sub-images")
    return int(y0), int(y1), int(x0), int(x1)


def subimages(box: Box, grid: tuple[int, int] = GRID) -> list[Box]:
    """The ``grid`` sub-image boxes of ``box``, row-major (for 3×4, index % 4 == 3 is held out)."""
    y0, y1, x0, x1 = box
    sh, sw = (y1 - y0) // grid[0], (x1 - x0) // grid[1]
    return [(y0 + i * sh, y0 + (i + 1) * sh, x0 + j * sw, x0 + (j + 1) * sw)
            for i in range(grid[0]) for j in range(grid[1])]


def is_train(index: int, grid: tuple[int, int] = GRID) -> bool:
    return index % grid[1] < TRAIN_COLS


def _region(box: Box) -> Region:
    y0, y1, x0, x1 = box
    return Region.from_bounds((y0, x0), (y1, x1))


def training_part(ep: EvalPair, scans: Sequence[EvalPair] = ()) -> TrainingPair:
    """The pair with the HR kept only inside its training sub-images (NaN elsewhere) and outside
    the held-out sub-images of the other ``scans`` of its field (where footprints overlap)."""
    hr, zoom = np.full_like(ep.pair.hr, np.nan), ep.pair.zoom
    for i, box in enumerate(ep.boxes):
        if is_train(i):
            sl = _region(box).sr(zoom).slices
            hr[sl] = ep.pair.hr[sl]
    window = ep.pair.region
    for other in scans:
        if other is ep or ep.field_name is None or other.field_name != ep.field_name:
            continue
        for held in other.held_out():
            hr[held.intersect(window).relative_to(window).sr(zoom).slices] = np.nan
    return replace(ep.pair, hr=hr)


def _sr_of(model, lr: np.ndarray, box: Box, zoom: int) -> np.ndarray:
    """SR of the LR inside ``box`` computed with the model's full context around it."""
    return predict_region(model.predict, lr, _region(box), model.halo, zoom, model.align)


def evaluate_model(model, ep: EvalPair, *, whole_field: bool = True,
                   crops: dict | None = None) -> list[dict]:
    """Score ``model`` on every sub-image of ``ep`` (and the whole field when ``gt`` exists), at
    the pair's zoom, which must be the model's.

    ``crops``, if given, receives the SR and bicubic of the first held-out sub-image (for panels).
    """
    lr, zoom = ep.pair.lr, ep.pair.zoom
    if model.zoom != zoom:
        raise ValueError(f"{ep.name}: a ×{model.zoom} model cannot be scored on a ×{zoom} pair")
    box = (ep.boxes[0][0], ep.boxes[-1][1], ep.boxes[0][2], ep.boxes[-1][3])
    t0 = time.perf_counter()
    sr_box = _sr_of(model, lr, box, zoom)
    seconds, mpix = time.perf_counter() - t0, sr_box.size / 1e6
    bic_box = _sr_of(Bicubic(zoom=zoom), lr, box, zoom)
    rows = []
    for i, sub in enumerate(map(_region, ep.boxes)):
        sl = sub.relative_to(_region(box)).sr(zoom).slices
        ref = sub.sr(zoom).crop(ep.pair.hr)
        if crops is not None and not is_train(i) and "sr" not in crops:
            crops.update(sr=sr_box[sl], bicubic=bic_box[sl], hr=ref, lr=sub.crop(lr))
        rows.append({"pair": ep.name, "subimage": i,
                     "split": "in-sample" if is_train(i) else "out-of-sample",
                     **score(np.clip(sr_box[sl], 0, 1), np.clip(bic_box[sl], 0, 1), ref)})
    if whole_field and ep.gt is not None:
        lr = ep.pair.read()  # the whole field (simulated pairs are small)
        t0 = time.perf_counter()
        sr = model.predict(lr)
        seconds, mpix = time.perf_counter() - t0, sr.size / 1e6
        rows.append({"pair": ep.field_name or ep.name, "subimage": -1, "split": "whole-field-gt",
                     **score(np.clip(sr, 0, 1), np.clip(bicubic(lr, zoom), 0, 1), ep.gt)})
    for r in rows:
        r["predict_s"], r["predict_mpix"] = seconds, mpix
    return rows


def run(pairs: Sequence[EvalPair], methods: Sequence[str], *, strategy: str = "self",
        params: dict[str, dict] | None = None,
        whole_field: bool | Collection[str] = True, crops: dict | None = None) -> list[dict]:
    """Fit and score every method under ``strategy`` ('self', 'pooled' or 'both').

    Each pair is scored at its own zoom (``pair.zoom``); pooled training needs one zoom for all.
    Returns one row per (strategy, method, pair, sub-image) with all :func:`pairsr.metrics.score`
    keys plus ``fit_s``, ``predict_s`` and ``predict_mpix`` (the seconds and output megapixels of
    the model's largest prediction: the whole field, else the box of all sub-images). Methods
    that train in a folder (the networks) train in a temporary one, removed after scoring.
    ``whole_field`` (all methods, or the names of those) adds the whole-field score against
    ``gt``, once per field. Self-training fits one model per field (:func:`by_field`).
    ``crops``, if given, is filled with one held-out sub-image per (strategy, method, pair) for
    :func:`write_panel`.
    """
    params = params or {}
    for ep in pairs:
        if not ep.boxes:
            ep.boxes = subimages(overlap_box(ep.pair.hr, ep.pair.zoom))
    strategies = ["self", "pooled"] if strategy == "both" else [strategy]
    rows: list[dict] = []
    for strat in strategies:
        for method in methods:
            groups = by_field(pairs) if strat == "self" else [list(pairs)]
            for group in groups:
                with tempfile.TemporaryDirectory(prefix="pairsr-eval-") as tmp:
                    rows += _fit_and_score(group, method, strat, params.get(method, {}),
                                           whole_field, crops, Path(tmp))  # fmt: skip
    return rows


def _fit_and_score(group: list[EvalPair], method: str, strat: str, params: dict,
                   whole_field: bool | Collection[str], crops: dict | None,
                   tmp: Path) -> list[dict]:
    """Fit ``method`` on the training parts of ``group`` and score it on each of its pairs."""
    if getattr(method_class(method), "trains_in_folder", False):
        params = {"folder": tmp / "model", **params}
    t0 = time.perf_counter()
    model = fit([training_part(ep, group) for ep in group], method, **params)
    fit_s = time.perf_counter() - t0
    rows, scored = [], set()
    for ep in group:
        crop = None if crops is None else crops.setdefault((strat, method, ep.name), {})
        whole = whole_field if isinstance(whole_field, bool) else method in whole_field
        whole = whole and (ep.field_name is None or ep.field_name not in scored)
        scored.add(ep.field_name)
        for r in evaluate_model(model, ep, whole_field=whole, crops=crop):
            rows.append({"strategy": strat, "method": method, "fit_s": fit_s, **r})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Table I/III/IV analogue: means per (strategy, method, split) and failure rate."""
    keys = sorted({(r["strategy"], r["method"], r["split"]) for r in rows})
    table = []
    for key in keys:
        sel = [r for r in rows if (r["strategy"], r["method"], r["split"]) == key]

        def mean(k: str, sel: list[dict] = sel) -> float:
            return float(np.nanmean([r[k] for r in sel]))

        strat, method, split = key
        table.append({
            "strategy": strat, "method": method, "split": split, "n": len(sel),
            "dpsnr": mean("dpsnr"), "dssim": mean("dssim"),
            "failure_rate": float(np.mean([r["failure"] for r in sel])),
            "dpsnr_fg": mean("dpsnr_fg"), "dpsnr_bg": mean("dpsnr_bg"),
            "canny_sim": mean("canny_sim"), "dcanny_sim": mean("dcanny_sim"),
            "fit_s": mean("fit_s"), "predict_s": mean("predict_s"),
            "predict_s_per_mpix": mean("predict_s") / mean("predict_mpix"),
        })  # fmt: skip
    return table


def markdown(table: list[dict]) -> str:
    """The summary table as Markdown."""
    head = ("| strategy | method | split | n | ΔPSNR (dB) | ΔSSIM | failures | ΔPSNR fg | ΔPSNR bg "
            "| Canny sim | ΔCanny | fit (s) | predict (s/MPix) |")
    lines = [head, "|" + "---|" * 13]
    for t in table:
        lines.append(
            f"| {t['strategy']} | {t['method']} | {t['split']} | {t['n']} | {t['dpsnr']:+.2f} | "
            f"{t['dssim']:+.4f} | {100 * t['failure_rate']:.1f}% | {t['dpsnr_fg']:+.2f} | "
            f"{t['dpsnr_bg']:+.2f} | {t['canny_sim']:.3f} | {t['dcanny_sim']:+.3f} | "
            f"{t['fit_s']:.1f} | {t['predict_s_per_mpix']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def timing_markdown(table: list[dict]) -> str:
    """The paper's Table II analogue: training seconds (per self-trained pair; pooled: the one
    model) and inference seconds per output megapixel, per method, on this machine."""
    lines = ["| method | self-training (s per pair) | pooled training (s) | "
             "inference (s per output MPix) |", "|---|---|---|---|"]
    for method in dict.fromkeys(t["method"] for t in table):
        rows = {t["strategy"]: t for t in table
                if t["method"] == method and t["split"] == "in-sample"}  # fmt: skip
        cells = [f"{rows[s]['fit_s']:.1f}" if s in rows else "–" for s in ("self", "pooled")]
        speed = next(iter(rows.values()))["predict_s_per_mpix"]
        lines.append(f"| {method} | {cells[0]} | {cells[1]} | {speed:.2f} |")
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], out: str | Path, *, overwrite: bool = False) -> list[dict]:
    """Write ``report.md``, ``rows.csv``, ``summary.csv`` and ``report.json`` into ``out``."""
    out = Path(out)
    names = ("report.md", "rows.csv", "summary.csv", "report.json")
    if not overwrite and any((out / n).exists() for n in names):
        raise FileExistsError(f"{out}: a report exists there; pass overwrite=True to replace it")
    out.mkdir(parents=True, exist_ok=True)
    table = summarise(rows)
    (out / "report.md").write_text(markdown(table) + "\n## Timing (Table II)\n\n"
                                   + timing_markdown(table))
    for name, data in (("rows.csv", rows), ("summary.csv", table)):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
    (out / "report.json").write_text(json.dumps({"summary": table, "rows": rows}, indent=1,
                                                default=float))
    return table


def write_panel(crops: dict, path: str | Path, *, max_pairs: int = 4) -> Path:
    """A figure like the paper's Fig. 7/8: per pair, the LR, bicubic, each method and the HR of
    one held-out sub-image, with PSNR/SSIM against the HR under each."""
    from PIL import Image, ImageDraw

    from pairsr.metrics import psnr, ssim

    keys = list(crops)
    names = list(dict.fromkeys(k[2] for k in keys))[:max_pairs]
    columns = list(dict.fromkeys((k[0], k[1]) for k in keys if k[1] != "bicubic"))
    first = crops[keys[0]]
    th, tw = first["hr"].shape
    label_h = 28
    canvas = Image.new("L", (tw * (len(columns) + 3), (th + label_h) * len(names) + 16), 255)
    draw = ImageDraw.Draw(canvas)
    for r, name in enumerate(names):
        c0 = crops[next(k for k in keys if k[2] == name)]
        ref = c0["hr"]
        zoom = ref.shape[0] // c0["lr"].shape[0]
        tiles = [("LR", np.kron(c0["lr"], np.ones((zoom, zoom))), False),
                 ("bicubic", c0["bicubic"], True)]
        tiles += [(f"{m} ({s})", crops[(s, m, name)]["sr"], True) for s, m in columns]
        tiles.append(("HR", ref, False))
        y = r * (th + label_h) + 14
        draw.text((2, y - 13), name, fill=0)
        for c, (title, img, scored) in enumerate(tiles):
            img = np.nan_to_num(np.clip(img, 0, 1))
            canvas.paste(Image.fromarray((img * 255).astype(np.uint8)[:th, :tw]), (c * tw, y))
            text = title
            if scored:
                text += f"\nPSNR {psnr(img, ref):.2f} dB  SSIM {ssim(img, ref):.3f}"
            draw.multiline_text((c * tw + 2, y + th + 1), text, fill=0, spacing=0)
    path = Path(path)
    canvas.save(path)
    return path
