"""Cost of ``pairsr fit`` against the size of the survey: the same HR in ever larger LR fields.

For each LR side in ``--sizes`` (default 2048, 8192, 16384, 32768), writes an LR field of that
size to a chunked OME-Zarr (1024² chunks, uint8, 4 nm pixels), then runs ``pairsr fit LR.zarr
HR.tif`` (paired LB-NLM, defaults) in a child process and prints its wall time and peak RSS
(``os.wait4``: the child and what it waited for). The HR (4096² px, 2 nm, uint8 TIFF) is the same
for every size: a 2× rescan of the 2048² LR px at the field's top-left, so the work that follows
the overlap is the same and what grows is what follows the field.

The generator (works without ``pairsr simulate --lr-shape``, written tile by tile):

* **Specimen**: a real micrograph (``--specimen``, default the JEOL colloid image of
  ``../shared/data/real``; the built-in specimen if absent), cropped square, tiling the plane
  with one of its 8 flips/rotations per cell chosen by a hash of the cell (mirrored tiling that
  does not repeat, so the registration finds one place), 1 specimen px = 1 HR px.
* **LR**: Gaussian blur (σ = 0.6 LR px) and integration over 2×2 specimen px per LR pixel, then
  the detector of :mod:`pairsr.simulate` (Poisson dose, read noise, gain, offset); chunk by chunk
  with the blur's margin, seeded per chunk.
* **HR**: the specimen under a 1° rotation (bilinear), blur σ = 0.6 HR px, its own detector (other
  dose, gain, offset, gamma): a physical pair, registered by ``pairsr fit`` itself.

Run: ``.venv/bin/python benchmarks/bench_fit_scale.py [--sizes 2048,8192] [--work DIR]``; the
fields (up to 1 GiB at 32k) go to ``--work`` (default a temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pairsr.io import create_ome_zarr, read_image, to_float32, write_image
from pairsr.simulate import _detect, _rotation, _shot_noise, builtin_specimen

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
SPECIMEN = SHARED / "konstanz_colloids_sem" / "jeol_A-2h-01_x50k_2nm.tif"
CHUNK = 1024
#: Specimen (= HR) px per LR px, LR pixel size (nm), the HR's side (HR px) and rotation.
ZOOM, LR_NM, HR_SIDE, HR_ROTATION = 2, 4.0, 4096, 1.0
BLUR = 0.6
LR_SCAN = {"dose": 30.0, "read_noise": 0.01, "gamma": 1.0, "gain": 0.85, "offset": 0.05}
HR_SCAN = {"dose": 20.0, "read_noise": 0.015, "gamma": 1.1, "gain": 0.8, "offset": 0.08}


class Specimen:
    """The plane tiled by a square image under a flip/rotation per cell (a hash of the cell)."""

    def __init__(self, image: np.ndarray) -> None:
        side = min(image.shape)
        tile = np.ascontiguousarray(image[:side, :side], dtype=np.float32)
        self.side = side
        self.variants = [np.rot90(tile, k) for k in range(4)]
        self.variants += [v[:, ::-1] for v in self.variants]

    @staticmethod
    def variant(i: int, j: int) -> int:
        """The flip/rotation (0-7) of cell ``(i, j)``: a hash of the cell (no period)."""
        seed = np.random.SeedSequence([i % 2**32, j % 2**32, 14])
        return int(seed.generate_state(1)[0] % 8)

    def block(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Specimen pixels ``[y0, y0+h) × [x0, x0+w)`` (any integers, negative too)."""
        out = np.empty((h, w), np.float32)
        n = self.side
        for i in range(y0 // n, (y0 + h - 1) // n + 1):
            for j in range(x0 // n, (x0 + w - 1) // n + 1):
                tile = self.variants[self.variant(i, j)]
                r0, r1 = max(y0, i * n), min(y0 + h, (i + 1) * n)
                c0, c1 = max(x0, j * n), min(x0 + w, (j + 1) * n)
                out[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] = tile[r0 - i * n : r1 - i * n,
                                                                  c0 - j * n : c1 - j * n]
        return out


def _uint8(signal: np.ndarray) -> np.ndarray:
    return np.round(np.clip(signal, 0, 1) * 255).astype(np.uint8)


def write_lr(spec: Specimen, path: Path, side: int, seed: int = 0) -> None:
    """The LR field ``side``² as OME-Zarr, chunk by chunk (bounded memory)."""
    group = create_ome_zarr(path, (side, side), np.uint8, chunks=CHUNK, pixel_size_nm=LR_NM,
                            name="survey")
    level = group["0"]
    sigma = BLUR * ZOOM  # specimen px
    margin = int(4 * sigma) + 1
    for r in range(0, side, CHUNK):
        for c in range(0, side, CHUNK):
            h, w = min(CHUNK, side - r), min(CHUNK, side - c)
            block = spec.block(ZOOM * r - margin, ZOOM * c - margin, ZOOM * h + 2 * margin,
                               ZOOM * w + 2 * margin)
            blurred = ndi.gaussian_filter(block, sigma)[margin:-margin, margin:-margin]
            signal = blurred.reshape(h, ZOOM, w, ZOOM).mean(axis=(1, 3))
            noise = partial(_shot_noise, rng=np.random.default_rng([seed, r, c]))
            level[r : r + h, c : c + w] = _uint8(_detect(signal, LR_SCAN, noise))


def write_hr(spec: Specimen, path: Path, seed: int = 1) -> None:
    """The HR scan (``HR_SIDE``², ×``ZOOM``) of the field's top-left ``HR_SIDE / ZOOM``² LR px,
    rotated by ``HR_ROTATION`` about its centre, as a TIFF with its pixel size."""
    centre = (HR_SIDE - 1) / 2  # HR px and specimen px coincide at the centre
    p = np.mgrid[0:HR_SIDE, 0:HR_SIDE].astype(np.float32) - centre
    coords = np.tensordot(_rotation(HR_ROTATION).astype(np.float32), p, axes=1) + centre
    del p
    lo = np.floor(coords.min(axis=(1, 2))).astype(int) - 8
    hi = np.ceil(coords.max(axis=(1, 2))).astype(int) + 8
    block = ndi.gaussian_filter(spec.block(lo[0], lo[1], *(hi - lo)), BLUR)
    coords -= lo.reshape(2, 1, 1)
    signal = ndi.map_coordinates(block, coords, order=1, mode="nearest")
    noise = partial(_shot_noise, rng=np.random.default_rng(seed))
    write_image(path, _uint8(_detect(signal, HR_SCAN, noise)),
                pixel_size_nm=LR_NM / ZOOM)


def run_fit(lr: Path, hr: Path, out: Path) -> dict:
    """``pairsr fit`` in a child process: wall seconds, peak RSS (GiB), the fit's own seconds."""
    cmd = [sys.executable, "-m", "pairsr", "fit", str(lr), str(hr), "--out", str(out)]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "COLUMNS": "200"})
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        log.seek(0)
        text = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"pairsr fit failed on {lr.name}:\n{text[-3000:]}")
    fitted = re.search(r"fitted .* in ([\d.]+) s", text)
    return {"wall_s": wall, "peak_gib": usage.ru_maxrss / 2**20,
            "fit_s": float(fitted.group(1)) if fitted else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2048,8192,16384,32768",
                    help="LR field sides (px), comma-separated")
    ap.add_argument("--specimen", type=Path, default=SPECIMEN, help="specimen image")
    ap.add_argument("--work", type=Path, help="folder for the fields and models (kept)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if min(sizes) < HR_SIDE // ZOOM:
        raise SystemExit(f"--sizes: the HR covers {HR_SIDE // ZOOM} LR px; fields must be larger")
    if args.specimen.is_file():
        image = to_float32(read_image(args.specimen).values)
    else:
        print(f"note: {args.specimen} is absent; using the built-in specimen")
        image = builtin_specimen("nanocomposite", (2048, 2048), np.random.default_rng(0))
    spec = Specimen(image)
    work = args.work or Path(tempfile.mkdtemp(prefix="pairsr-fit-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        hr = work / "hr.tif"
        if not hr.exists():
            write_hr(spec, hr)
        print("| LR field | generate (s) | fit wall (s) | of which fitting (s) | peak RSS (GiB) |\n"
              "|---|---|---|---|---|", flush=True)
        for side in sizes:
            lr = work / f"lr{side}.zarr"
            start = time.perf_counter()
            if not lr.exists():
                write_lr(spec, lr, side)
            made = time.perf_counter() - start
            shutil.rmtree(work / f"model{side}", ignore_errors=True)
            result = run_fit(lr, hr, work / f"model{side}")
            print(f"| {side}² | {made:.0f} | {result['wall_s']:.1f} | {result['fit_s']:.1f} | "
                  f"{result['peak_gib']:.2f} |", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
