"""Registration at survey scale: wall time and peak RSS of ``pairsr register`` for LR zarr fields
of growing size with the same 4096² HR scan.

    .venv/bin/python benchmarks/bench_register_scale.py [--sizes 8192,32768] [--hr 4096]

Each field is a uint8 OME-Zarr (1024 px chunks, 2 nm pixels) of 1024² LR tiles; every tile is
the 2×2 mean of a 2048² crop (random place, flip and transpose, seeded by the tile) of a real
serial-section EM image (``../shared/data/real/pssr_napari/lr_8nm_ssem_large_00.tif``, mirrored
where a crop leaves it) plus noise, so the field is aperiodic. The HR (1 nm pixels, TIFF) is the
full-resolution content of one footprint near the field's centre, with its own noise: the truth
is ``lr = 0.5 · hr + offset``. Each run is ``/usr/bin/time -v pairsr register LR HR`` in a
fresh process; the script prints its wall time, peak RSS and the corner error of the found
mapping against the truth (LR px). Fields are written to a temporary folder (``--tmp``) and
deleted after each size (a 32768² field is about 1 GB).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import dask.array as da
import numpy as np
from PIL import Image
from skimage.util import img_as_float32

from pairsr.io import write_image, write_ome_zarr

SOURCE = (Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "pssr_napari"
          / "lr_8nm_ssem_large_00.tif")
TILE = 1024  # LR px; the HR-resolution content of a tile is 2 × TILE a side
NOISE = 0.02


def _source() -> np.ndarray:
    image = img_as_float32(np.asarray(Image.open(SOURCE)))
    lo, hi = np.percentile(image, [0.5, 99.5])
    image = np.clip((image - lo) / (hi - lo), 0, 1)
    pad = [(0, max(0, 2 * TILE - n)) for n in image.shape]
    return np.pad(image, pad, mode="symmetric")


def _content(source: np.ndarray, row: int, col: int) -> np.ndarray:
    """The HR-resolution content (2·TILE)² of LR tile (row, col), float32 in [0, 1]."""
    rng = np.random.default_rng([row, col])
    r, c = (rng.integers(0, n - 2 * TILE + 1) for n in source.shape)
    tile = source[r : r + 2 * TILE, c : c + 2 * TILE]
    if rng.random() < 0.5:
        tile = tile[::-1]
    if rng.random() < 0.5:
        tile = tile.T
    return np.ascontiguousarray(tile)


def _lr_tile(source: np.ndarray, block_id=None) -> np.ndarray:
    row, col = block_id
    hr = _content(source, row, col)
    lr = hr.reshape(TILE, 2, TILE, 2).mean((1, 3))
    lr += NOISE * np.random.default_rng([row, col, 1]).standard_normal(lr.shape)
    return (np.clip(lr, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_pair(folder: Path, size: int, hr_size: int, source: np.ndarray) -> dict:
    """Write ``lr.zarr`` (size², uint8) and ``hr.tif`` (hr_size², uint8) to ``folder``; return
    the true HR→LR affine."""
    n = size // TILE
    lr = da.map_blocks(partial(_lr_tile, source), dtype=np.uint8,
                       chunks=((TILE,) * n, (TILE,) * n))
    write_ome_zarr(folder / "lr.zarr", lr, pixel_size_nm=2.0)
    top = np.array([size // 2 - hr_size // 4 + 300, size // 2 - hr_size // 4 + 500])  # LR px
    lo, hi = 2 * top, 2 * top + hr_size  # HR-resolution px of the field
    tiles = range(lo[0] // (2 * TILE), (hi[0] - 1) // (2 * TILE) + 1), \
        range(lo[1] // (2 * TILE), (hi[1] - 1) // (2 * TILE) + 1)
    content = np.block([[_content(source, r, c) for c in tiles[1]] for r in tiles[0]])
    start = lo - 2 * TILE * np.array([tiles[0][0], tiles[1][0]])
    hr = content[start[0] : start[0] + hr_size, start[1] : start[1] + hr_size]
    hr = hr + NOISE * np.random.default_rng(7).standard_normal(hr.shape)
    write_image(folder / "hr.tif", (np.clip(hr, 0, 1) * 255 + 0.5).astype(np.uint8),
                pixel_size_nm=1.0)
    # HR pixel i covers field pixels 2·top + i; LR pixel p is the mean of field pixels 2p, 2p+1.
    return {"matrix": [[0.5, 0.0], [0.0, 0.5]], "offset": (top - 0.25).tolist()}


def run(folder: Path, extra: list[str]) -> dict:
    """``/usr/bin/time -v pairsr register`` on the pair in ``folder``: wall s, peak RSS GiB."""
    pairsr = Path(sys.executable).with_name("pairsr")
    cmd = ["/usr/bin/time", "-v", str(pairsr), "--quiet", "register", str(folder / "lr.zarr"),
           str(folder / "hr.tif"), "--out", str(folder / "reg.json"), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"pairsr register failed:\n{proc.stdout}\n{proc.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", proc.stderr).group(1))
              for k in ("User", "System"))
    return {"wall_s": wall, "cpu_s": cpu, "rss_gib": rss / 2**20,
            "reg": json.loads((folder / "reg.json").read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8192,32768", help="LR sides, multiples of 1024")
    parser.add_argument("--hr", type=int, default=4096, help="HR side (px)")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the fields")
    parser.add_argument("--local", action=argparse.BooleanOptionalAction, default=True,
                        help="fit the local field too (pairsr register --no-local without)")
    args = parser.parse_args()
    if not SOURCE.is_file():
        raise SystemExit(f"{SOURCE} is absent (real EM data: see ../shared/data/real/SOURCES.md)")
    source = _source()
    print(f"{'LR':>7} {'HR':>6} {'build s':>8} {'wall s':>7} {'CPU s':>7} {'peak RSS GiB':>13} "
          f"{'corner err':>11} {'patches':>9}")
    for size in (int(s) for s in args.sizes.split(",")):
        folder = Path(tempfile.mkdtemp(prefix=f"pairsr-scale-{size}-", dir=args.tmp))
        try:
            start = time.perf_counter()
            truth = make_pair(folder, size, args.hr, source)
            build = time.perf_counter() - start
            out = run(folder, [] if args.local else ["--no-local"])
        finally:
            shutil.rmtree(folder)
        reg = out["reg"]
        h = w = args.hr
        corners = np.array([[-0.5, -0.5], [-0.5, w - 0.5], [h - 0.5, w - 0.5], [h - 0.5, -0.5]]).T
        true = np.asarray(truth["matrix"]) @ corners + np.asarray(truth["offset"])[:, None]
        err = np.hypot(*(np.asarray(reg["footprint"]).T - true)).mean()
        print(f"{size:>7} {args.hr:>6} {build:8.1f} {out['wall_s']:7.1f} {out['cpu_s']:7.1f} "
              f"{out['rss_gib']:13.2f} {err:11.4f} "
              f"{reg['patches_accepted']:>4}/{reg['patches_tried']:<4}", flush=True)


if __name__ == "__main__":
    main()
