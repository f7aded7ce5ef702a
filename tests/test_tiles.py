"""The tiled engine: tile invariance, blending, seams, provenance, resume and worker faults."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from pairsr.cluster import get_client
from pairsr.grid import BICUBIC_HALO, bicubic
from pairsr.io import OutputExistsError, from_float32, to_float32, write_ome_zarr
from pairsr.lbnlm import LBNLM
from pairsr.methods import Bicubic, load_model, register_method, save_model
from pairsr.tiles import STATE, ResumeError, apply_tiled

KERNEL = np.random.default_rng(7).random((5, 5)).astype(np.float32)
KERNEL /= KERNEL.sum()


@register_method
@dataclass
class Filtered(Bicubic):
    """Bicubic, then a fixed asymmetric 5×5 filter on the SR grid (1 LR px more reach) that
    zero-pads at the border: tiles must see the image border itself, not a mirrored one."""

    name: ClassVar[str] = "test-filtered"

    @property
    def halo(self) -> int:
        return BICUBIC_HALO + 1

    def predict(self, lr):
        return ndi.correlate(bicubic(lr), KERNEL, mode="constant")


@register_method
@dataclass
class Sharpen(Bicubic):
    """Bicubic, then an unsharp mask (Gaussian radius 6 SR px = 3 LR px); the halo it states is
    ``params["halo"]`` (default: the true one), so a too-short halo can be tried."""

    name: ClassVar[str] = "test-sharpen"

    @property
    def halo(self) -> int:
        return self.params.get("halo", BICUBIC_HALO + 3)

    def predict(self, lr):
        up = bicubic(lr)
        time.sleep(float(os.environ.get("PAIRSR_TEST_SLEEP", 0)))
        return up + 1.5 * (up - ndi.gaussian_filter(up, 1.5, mode="constant", truncate=4.0))


@register_method
@dataclass
class Normalised(Bicubic):
    """Bicubic of the input normalised by its own mean and standard deviation, as networks that
    normalise each input do: every output pixel depends on the whole window (not tileable)."""

    name: ClassVar[str] = "test-normalised"

    def predict(self, lr):
        return (bicubic(lr) - lr.mean()) / lr.std() * 0.1 + 0.5


def texture(shape, seed=0, sigma=1.0):
    rng = np.random.default_rng(seed)
    x = ndi.gaussian_filter(rng.random(shape), sigma)
    return ((x - x.min()) / np.ptp(x) * 0.8 + 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model folders by name; LB-NLM fitted on a small aligned pair."""
    root = tmp_path_factory.mktemp("models")
    hr = texture((64, 64), seed=1, sigma=1.2)
    lr = ndi.gaussian_filter(hr, 1.0).reshape(32, 2, 32, 2).mean((1, 3))
    lbnlm = LBNLM.fit([(lr, hr)], n=5, k=4, K=2, L=200, sigma=0.05)
    methods = {"filtered": Filtered(), "sharpen": Sharpen(), "normalised": Normalised(),
               "short-halo": Sharpen(params={"halo": 0}), "lbnlm": lbnlm}
    paths = {name: str(save_model(m, root / name)) for name, m in methods.items()}
    return {"bicubic": "bicubic", **paths}


@pytest.fixture(scope="module")
def lr8(tmp_path_factory):
    """A 45×61 uint8 OME-Zarr (16 px chunks, 4 nm pixels, translated) and its values."""
    values = from_float32(texture((45, 61), sigma=0.7), np.uint8)
    path = tmp_path_factory.mktemp("lr") / "lr8.zarr"
    write_ome_zarr(path, values, chunks=16, pixel_size_nm=4.0, translation_nm=(100.0, -8.0))
    return path, values


def sr(path) -> np.ndarray:
    return zarr.open_array(Path(path) / "0", mode="r")[:]


def wait_for_markers(out: Path, count: int, alive=lambda: True, timeout: float = 60) -> None:
    """Wait until ``out`` holds ``count`` done-markers (or ``alive()`` fails, or time is up)."""
    deadline = time.monotonic() + timeout
    while (len(list((out / STATE / "done").glob("*.json"))) < count and alive()
           and time.monotonic() < deadline):
        time.sleep(0.01)


CASES = [("none", 7), ("none", 16), ("none", 23), ("none", 64), ("linear", 8), ("cosine", 23)]


@pytest.mark.parametrize(
    ("name", "blend", "tile"),
    [(name, *case) for name in ("bicubic", "filtered", "lbnlm") for case in CASES
     if name != "lbnlm" or case in (("none", 7), ("cosine", 23))],  # LB-NLM: slow on tiny tiles
)
def test_tiled_output_equals_the_in_memory_prediction(tmp_path, models, lr8, name, blend, tile):
    """Tiles smaller than the halo, not dividing the image, or larger than it; with and without
    blending (blending local methods is exact too)."""
    path, values = lr8
    expected = load_model(models[name]).predict(to_float32(values))
    options = {"tile": tile, "blend": blend, "window": 10, "overlap": 3, "progress": False}
    apply_tiled(models[name], path, tmp_path / "u8.zarr", **options)
    error = sr(tmp_path / "u8.zarr").astype(int) - from_float32(expected, np.uint8)
    assert np.abs(error).max() <= 1
    apply_tiled(models[name], path, tmp_path / "f32.zarr", out_dtype="float32", **options)
    assert np.abs(sr(tmp_path / "f32.zarr") - expected).max() <= 1e-4 * np.ptp(expected)


def test_blended_output_does_not_depend_on_the_task_layout(tmp_path, models, lr8):
    """A non-local method: with blending, the lattice alone decides the output (bit for bit);
    without, every tile size gives another output."""
    path, _ = lr8
    outputs = {}
    for blend in ("cosine", "none"):
        for tile in (8, 20, 64):
            out = tmp_path / f"{blend}{tile}.zarr"
            apply_tiled(models["normalised"], path, out, tile=tile, blend=blend, window=12,
                        overlap=3, out_dtype="float32", progress=False)
            outputs[blend, tile] = sr(out)
    assert np.array_equal(outputs["cosine", 8], outputs["cosine", 20])
    assert np.array_equal(outputs["cosine", 8], outputs["cosine", 64])
    assert not np.allclose(outputs["none", 8], outputs["none", 64], atol=1e-3)


def seam_ratio(image: np.ndarray, period: int) -> float:
    """Mean squared step between neighbouring SR rows (columns) that touch a tile border
    ``period*k`` over that of the rows (columns) at least 2 px from one; the larger of the two.

    Two steps per border (one each side of it) keep the SR grid's two phases balanced.
    """
    ratios = []
    for step in (np.diff(image, axis=0) ** 2, np.diff(image, axis=1).T ** 2):
        energy = step.mean(axis=1)
        centre = np.arange(energy.size) + 0.5  # a step lies between two pixels
        to_border = np.abs((centre + period / 2) % period - period / 2)
        inner = (centre > period / 2) & (centre < energy.size - period / 2)  # not the image's
        near, far = energy[inner & (to_border < 1)], energy[inner & (to_border > 2)]
        ratios.append(near.mean() / far.mean())
    return max(ratios)


def test_no_seams_at_tile_borders(tmp_path, models):
    """Tile borders are no busier than elsewhere; the measure does see the seams of a too-short
    halo and of per-window normalisation, and blending removes the latter."""
    lr = tmp_path / "lr.zarr"
    write_ome_zarr(lr, from_float32(texture((96, 96), seed=3, sigma=3.0), np.uint16), chunks=32)

    def ratio(name, blend="none"):
        out = apply_tiled(models[name], lr, tmp_path / f"{name}-{blend}.zarr", tile=16,
                          blend=blend, window=16, overlap=4, out_dtype="float32", progress=False)
        return seam_ratio(sr(out), period=32)

    assert ratio("sharpen") < 1.15
    assert ratio("short-halo") > 3
    assert ratio("normalised") > 1.5
    assert ratio("normalised", blend="cosine") < 1.15


def test_provenance_grid_transform_log_and_pyramid(tmp_path, lr8):
    path, values = lr8
    out = apply_tiled("bicubic", path, tmp_path / "sr.zarr", tile=16, pyramid=True, progress=False)
    group = zarr.open_group(out, mode="r")
    meta = group.attrs.asdict()
    level0 = meta["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert level0 == [{"type": "scale", "scale": [2.0, 2.0]},
                      {"type": "translation", "translation": [99.0, -9.0]}]  # t - pixel/4
    assert group["0"].shape == (90, 122) and group["0"].dtype == np.uint8
    datasets = [d["path"] for d in meta["ome"]["multiscales"][0]["datasets"]]
    assert [group[p].shape for p in datasets[1:]] == [(45, 61), (23, 31)]  # down to one chunk
    prov = meta["pairsr"]
    assert prov["complete"] and prov["method"] == "bicubic" and prov["halo"] == BICUBIC_HALO
    assert prov["tile"] == 16 and prov["blend"] == "none" and prov["input"] == str(path.resolve())
    # Input checksum: SHA-256 over the tiles' SHA-256 digests, in task order.
    digests = [hashlib.sha256(np.ascontiguousarray(values[r : r + 16, c : c + 16])).hexdigest()
               for r in range(0, 45, 16) for c in range(0, 61, 16)]
    assert prov["input_sha256"] == hashlib.sha256("".join(digests).encode()).hexdigest()
    log = json.loads((out / STATE / "log.json").read_text())
    assert log["tasks_total"] == len(log["tasks"]) == 12 and log["tasks_skipped"] == 0
    assert all(t["worker"] == "local" and t["predict_s"] >= 0 for t in log["tasks"])


def test_existing_output_needs_overwrite_or_a_matching_resume(tmp_path, lr8):
    path, _ = lr8
    out = apply_tiled("bicubic", path, tmp_path / "sr.zarr", tile=16, progress=False)
    first = sr(out)
    with pytest.raises(OutputExistsError, match="overwrite"):
        apply_tiled("bicubic", path, out, tile=16, progress=False)
    with pytest.raises(ResumeError, match="another run"):
        apply_tiled("bicubic", path, out, tile=23, resume=True, progress=False)
    apply_tiled("bicubic", path, out, tile=16, resume=True, progress=False)  # nothing left to do
    assert json.loads((out / STATE / "log.json").read_text())["tasks"] == []
    assert np.array_equal(sr(out), first)
    marker = out / STATE / "done" / "1_2.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "run_hash": "0" * 64}))
    with pytest.raises(ResumeError, match=r"1_2\.json: done-marker of another run"):
        apply_tiled("bicubic", path, out, tile=16, resume=True, progress=False)
    apply_tiled("bicubic", path, out, tile=23, overwrite=True, progress=False)
    assert np.array_equal(sr(out), first)
    with pytest.raises(ValueError, match="exclude"):
        apply_tiled("bicubic", path, out, resume=True, overwrite=True)
    with pytest.raises(ValueError, match="blend"):
        apply_tiled("bicubic", path, tmp_path / "x.zarr", blend="gauss")


def test_a_killed_run_resumes_where_it_stopped(tmp_path, models, lr8):
    """SIGKILL a run in a subprocess mid-way; the resumed run redoes only the tasks without a
    done-marker and gives the clean output."""
    path, _ = lr8
    out = tmp_path / "sr.zarr"
    done = out / STATE / "done"
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              "import test_tiles; from pairsr.tiles import apply_tiled; "
              f"apply_tiled({models['sharpen']!r}, {str(path)!r}, {str(out)!r}, tile=5, "
              "progress=False)")  # importing test_tiles registers Sharpen there
    env = {**os.environ, "PAIRSR_TEST_SLEEP": "0.05"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        wait_for_markers(out, 10, alive=lambda: proc.poll() is None)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {p.stem for p in done.glob("*.json")}
    assert 10 <= len(before) < 9 * 13
    apply_tiled(models["sharpen"], path, out, tile=5, resume=True, progress=False)
    log = json.loads((out / STATE / "log.json").read_text())
    redone = {t["task"] for t in log["tasks"]}
    assert redone == {f"{i}_{j}" for i in range(9) for j in range(13)} - before
    assert log["tasks_skipped"] == len(before)
    clean = apply_tiled(models["sharpen"], path, tmp_path / "clean.zarr", tile=5, progress=False)
    assert np.array_equal(sr(out), sr(clean))
    assert zarr.open_group(out, mode="r").attrs["pairsr"]["complete"]


def test_a_killed_worker_does_not_change_the_output(tmp_path):
    """Two worker processes; one is SIGKILLed mid-run; the nanny restarts it, the scheduler
    reruns its tasks, and the output equals a clean in-process run."""
    lr = tmp_path / "lr.zarr"
    write_ome_zarr(lr, from_float32(texture((192, 192), seed=5), np.uint8), chunks=64)
    clean = sr(apply_tiled("bicubic", lr, tmp_path / "clean.zarr", tile=16, progress=False))
    out = tmp_path / "sr.zarr"
    with get_client(workers=2, threads_per_worker=1) as client:
        pids = client.run(os.getpid)
        victim = next(iter(pids.values()))
        run = ThreadPoolExecutor(1).submit(apply_tiled, "bicubic", lr, out, tile=16,
                                           client=client, progress=False)
        wait_for_markers(out, 10)
        # Kill the victim only once it has done some of the work itself.
        deadline = time.monotonic() + 60
        while not any(json.loads(p.read_text())["pid"] == victim
                      for p in (out / STATE / "done").glob("*.json")):
            assert time.monotonic() < deadline, "the victim worker never finished a task"
            time.sleep(0.02)
        os.kill(victim, signal.SIGKILL)
        markers = [json.loads(p.read_text()) for p in (out / STATE / "done").glob("*.json")]
        run.result(timeout=120)
        new_pids = set(client.run(os.getpid).values())
    # It died mid-run, after doing some of the work (its results not yet fetched are redone).
    assert len(markers) < 144 and victim in {m["pid"] for m in markers}
    assert victim not in new_pids
    assert len(json.loads((out / STATE / "log.json").read_text())["tasks"]) == 144
    assert np.array_equal(sr(out), clean)
    assert zarr.open_group(out, mode="r").attrs["pairsr"]["complete"]
