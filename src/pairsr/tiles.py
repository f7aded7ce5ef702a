"""Whole-field super-resolution, tile by tile, in process or on a Dask cluster.

Vocabulary, per axis, in LR pixels (the output grid is ``zoom`` × the LR grid, see
:mod:`pairsr.grid`)::

    task     [=================== tile: owns whole output chunks ===================)
    window      |<-halo->|<-overlap->|<------ core ------>|<-overlap->|<-halo->|
                |<------------------------- read --------------------------->|
                         |<------------------ blend ------------------>|

* A **task** owns a block of output chunks (``tile`` LR px a side) and is their only writer.
* A **window** is one ``method.predict`` call. Windows form one global lattice: their *cores*
  tile the plane; the *blend* region adds ``overlap`` on each side and the *read* region another
  ``method.halo``, grown up and left to start on a multiple of ``method.align`` (for a method
  whose output depends on where a window starts: the reduced LB-NLM's lattice). Both are clipped
  to the image: a window at the border sees the image border itself, exactly as the whole-image
  prediction does, whatever the method's boundary handling (bicubic mirrors, LB-NLM averages
  fewer patches there).
* A task predicts every window whose blend region meets its pixels, keeps each window's output
  over its blend region, weights it with a ramp across the overlaps (normalised to sum to 1 at
  every pixel) and writes the sum.

With ``blend="none"`` the lattice is the task grid (cores of ``tile``, no overlap): one window per
task, each output pixel from exactly one window with full halo, which is exact for methods with a
finite receptive field. With ``"linear"`` / ``"cosine"`` the lattice (cores of ``window`` LR px
centred on multiples of ``window``, ``overlap`` each side) does not depend on ``tile``, so the
output does not depend on how the field is cut into tasks, even for methods whose receptive field
is effectively global. A task then also predicts the windows it shares with its neighbours.

Intensities use one global scaling (:func:`pairsr.io.to_float32`), never per tile. Each finished
task writes a done-marker ``OUT/.pairsr/done/<task>.json`` after its data; ``resume=True`` redoes
only the tasks without a marker of the same run (same model, settings and input geometry).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zarr

from pairsr import __version__
from pairsr.io import (
    ImageError,
    MissingPixelSize,
    OutputExistsError,
    build_pyramid,
    convert,
    create_ome_zarr,
    from_float32,
    open_level0,
    output_format,
    read_image,
    set_display_window,
    to_float32,
)
from pairsr.methods import cached_model, model_hash
from pairsr.region import Region, predict_region, sr_translation

__all__ = ["BLENDS", "PartialOutputError", "ResumeError", "apply_tiled", "run_task"]

#: Blending modes of :func:`apply_tiled`.
BLENDS = ("none", "linear", "cosine")
#: Edge of an output chunk in LR px (``zoom`` × this in SR px: 1024 at ×2).
CHUNK = 512
#: Folder inside the output store for done-markers and the log.
STATE = ".pairsr"
#: The uncertainty map's OME-NGFF image inside the output store.
UNCERTAINTY = "uncertainty"


class ResumeError(ValueError):
    """An output that cannot be resumed: another run (model, settings or input) wrote it."""


class PartialOutputError(RuntimeError):
    """A run stopped part-way; ``store`` keeps the finished tiles and can be resumed."""

    def __init__(self, message: str, store: Path):
        super().__init__(message)
        self.store = store


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Lattice:
    """The global lattice of prediction windows along one axis (LR px).

    Window ``k`` has the core ``[k*step - offset, (k+1)*step - offset)`` and the blend region
    ``core ± overlap``; its output is weighted by a ``ramp`` ("none", "linear", "cosine") that
    rises over the first ``2*overlap`` and falls over the last ``2*overlap`` LR px of the blend
    region, so that neighbouring weights sum to 1.
    """

    step: int
    overlap: int = 0
    offset: int = 0
    ramp: str = "none"

    def windows(self, start: int, stop: int, n: int) -> range:
        """Windows whose blend region meets ``[start, stop)`` and whose core meets ``[0, n)``."""
        s, o, off = self.step, self.overlap, self.offset
        first = max((start + off - o) // s, off // s)
        return range(first, min(-(-(stop + off + o) // s), -(-(n + off) // s)))

    def blend(self, k: int) -> tuple[int, int]:
        """Blend region of window ``k`` (LR px, may reach beyond the image)."""
        start = k * self.step - self.offset
        return start - self.overlap, start + self.step + self.overlap

    def weights(self, zoom: int) -> np.ndarray:
        """Weights over the SR px of a blend region: float64 ``(zoom*(step + 2*overlap),)``."""
        size, ramp = zoom * (self.step + 2 * self.overlap), 2 * zoom * self.overlap
        if ramp == 0:
            return np.ones(size)
        centres = np.arange(size) + 0.5
        w = np.clip(np.minimum(centres, size - centres) / ramp, 0.0, 1.0)
        return np.sin(np.pi / 2 * w) ** 2 if self.ramp == "cosine" else w


@dataclass(frozen=True)
class Span:
    """One window along one axis, as one task uses it.

    ``blend``: LR px ``(start, stop)`` of its blend region within the image (it is predicted
    with the method's halo around it, clipped to the image); ``crop``: SR px of that prediction
    the task keeps; ``write``: where they go in the task's output (task-relative SR px);
    ``weight``: their blend weights, normalised over all the task's windows.
    """

    blend: tuple[int, int]
    crop: slice
    write: slice
    weight: np.ndarray


def spans(lattice: Lattice, start: int, stop: int, n: int, zoom: int) -> list[Span]:
    """The windows a task owning LR px ``[start, stop)`` of an axis of length ``n`` predicts."""
    full = lattice.weights(zoom)
    parts, total = [], np.zeros(zoom * (stop - start))
    for k in lattice.windows(start, stop, n):
        b0, b1 = lattice.blend(k)
        blend = (max(b0, 0), min(b1, n))  # within the image
        k0, k1 = max(b0, 0, start), min(b1, n, stop)  # kept: blend ∩ image ∩ task
        write = slice(zoom * (k0 - start), zoom * (k1 - start))
        weight = full[zoom * (k0 - b0) : zoom * (k1 - b0)]
        total[write] += weight
        parts.append((blend, slice(zoom * (k0 - blend[0]), zoom * (k1 - blend[0])), write,
                      weight))
    return [Span(blend, crop, write, (weight / total[write]).astype(np.float32))
            for blend, crop, write, weight in parts]


def _region(sy: Span, sx: Span) -> Region:
    """The blend region (LR px) of the window ``sy × sx``."""
    return Region.from_bounds((sy.blend[0], sx.blend[0]), (sy.blend[1], sx.blend[1]))


# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """The output chunks one task owns: LR px ``rows`` × ``cols`` (``[start, stop)`` each)."""

    name: str
    rows: tuple[int, int]
    cols: tuple[int, int]


@dataclass(frozen=True)
class Job:
    """What every task of a run needs besides its region: paths and geometry, no arrays."""

    model: str  # model folder or fit-free method name
    lr: str  # LR zarr store
    out: str  # output OME-Zarr store
    run_hash: str
    shape: tuple[int, int]  # LR (rows, cols)
    zoom: int
    halo: int
    lattice: Lattice
    dtype: str  # output dtype
    origin: tuple[int, int] = (0, 0)  # LR (row, col) of the field in the array read (a crop)
    threads: int | None = None  # threads of a task's predict (None: the process's CPUs)
    uncertainty: float = 0.0  # > 0: also write the uncertainty map, times this (output units)
    align: int = 1  # LR px the windows start on multiples of (the method's ``align``)


def run_task(job: Job, task: Task, lr=None, out: zarr.Array | None = None, *,
             worker: str = "local") -> dict:
    """Super-resolve, blend and write the output chunks of ``task``; return its record.

    ``lr`` / ``out``: the opened LR array and output level 0 (in process); workers leave them
    None and open the stores themselves. The record (LR region, SHA-256 of the region's stored LR
    values, read/predict/write seconds, ``worker``) is written as the task's done-marker last.
    """
    t0 = time.perf_counter()
    method = copy.copy(cached_model(job.model))  # the loaded model, with this run's threads
    method.threads = job.threads
    ys = spans(job.lattice, *task.rows, job.shape[0], job.zoom)
    xs = spans(job.lattice, *task.cols, job.shape[1], job.zoom)
    read = Region.bounding([_region(ys[0], xs[0]), _region(ys[-1], xs[-1])]).pad(
        job.halo, job.shape).aligned(job.align)
    raw = np.asarray(read.shift(job.origin).crop(open_level0(job.lr) if lr is None else lr))
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        (y0, x0), (y1, x1) = read.start, read.stop
        raise ImageError(f"{job.lr}: NaN/Inf values in LR rows {y0}:{y1}, cols {x0}:{x1}")
    core = Region.from_bounds((task.rows[0], task.cols[0]), (task.rows[1], task.cols[1]))
    digest = hashlib.sha256(np.ascontiguousarray(core.relative_to(read).crop(raw)).tobytes())
    digest = digest.hexdigest()
    block = to_float32(raw)
    t1 = time.perf_counter()

    sr = _blend(method, block, read, ys, xs, job.halo, job.align)
    t2 = time.perf_counter()
    if job.uncertainty:
        from pairsr.uncertainty import UncertaintyMap

        spread = _blend(UncertaintyMap(method), block, read, ys, xs, job.halo, job.align)
        zarr.open_array(Path(job.out) / UNCERTAINTY / "0", mode="r+")[
            job.zoom * task.rows[0] : job.zoom * task.rows[1],
            job.zoom * task.cols[0] : job.zoom * task.cols[1]] = spread * job.uncertainty
    t_u = time.perf_counter()

    out = zarr.open_array(Path(job.out) / "0", mode="r+") if out is None else out
    z = job.zoom
    out[z * task.rows[0] : z * task.rows[1], z * task.cols[0] : z * task.cols[1]] = from_float32(
        sr, job.dtype)
    t3 = time.perf_counter()
    record = {"task": task.name, "run_hash": job.run_hash, "rows": task.rows, "cols": task.cols,
              "input_sha256": digest, "windows": len(ys) * len(xs), "read_s": t1 - t0,
              "predict_s": t2 - t1, "uncertainty_s": t_u - t2, "write_s": t3 - t_u,
              "worker": worker, "pid": os.getpid()}
    _write_json(Path(job.out) / STATE / "done" / f"{task.name}.json", record)
    return record


def _blend(method, block: np.ndarray, read: Region, ys: list[Span], xs: list[Span],
           halo: int, align: int) -> np.ndarray:
    """The blended predictions of the windows ``ys × xs`` over a task; float32 (SR px).

    ``block``: float32 LR px of the region ``read``, which holds every window with its
    ``halo`` (clipped to the image) and starts on a multiple of ``align``, as the windows do.
    """

    def predict(sy: Span, sx: Span) -> np.ndarray:
        try:
            pred = predict_region(method.predict, block, _region(sy, sx).relative_to(read), halo,
                                  method.zoom, align)
        except ValueError as err:
            raise ValueError(f"{method.name}: {err}") from None
        return pred[sy.crop, sx.crop]

    if len(ys) == len(xs) == 1:  # one window (blend "none"): its weights are all 1
        return predict(ys[0], xs[0])
    sr = np.zeros((ys[-1].write.stop, xs[-1].write.stop), np.float32)
    for sy, sx in itertools.product(ys, xs):
        sr[sy.write, sx.write] += np.outer(sy.weight, sx.weight) * predict(sy, sx)
    return sr


def _write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON atomically (a reader sees the old file, the new one, or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, path)


def _finished(out: Path, run_hash: str) -> dict[str, dict]:
    """Done-markers of ``out`` by task name; a marker of another run is a :class:`ResumeError`."""
    done = {}
    for path in sorted((out / STATE / "done").glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("run_hash") != run_hash:
            raise ResumeError(
                f"{path}: done-marker of another run (run hash {str(record.get('run_hash'))[:12]}, "
                f"this run {run_hash[:12]}); pass overwrite=True to start again"
            )
        done[record["task"]] = record
    return done


def _open_to_resume(out: Path, run_hash: str) -> zarr.Group:
    try:
        group = zarr.open_group(out, mode="r+")
    except Exception as err:  # zarr raises several types for a non-zarr folder
        raise ResumeError(f"{out}: not a zarr group that can be resumed ({err})") from err
    found = group.attrs.get("pairsr", {}).get("run_hash")
    if found != run_hash:
        raise ResumeError(
            f"{out}: written by another run (run hash {str(found)[:12]}, this run "
            f"{run_hash[:12]}): the model, its parameters, tile/blend/pyramid settings, the "
            "input's shape/chunks or the output dtype differ; pass overwrite=True to start again"
        )
    return group


# ----------------------------------------------------------------------------- execution


def apply_tiled(
    model: str | Path,
    lr_path: str | Path,
    out_path: str | Path,
    *,
    tile: int = 2048,
    blend: str = "none",
    window: int = 512,
    overlap: int = 32,
    client=None,
    resume: bool = False,
    overwrite: bool = False,
    out_dtype=None,
    pyramid: bool = False,
    progress: bool = True,
    gpu: str = "auto",
    log_path: str | Path | None = None,
    pixel_size: float | None = None,
    crop: str | tuple[slice, slice] | None = None,
    auto_crop: bool = True,
    uncertainty: bool = False,
) -> Path:
    """Super-resolve a whole LR field tile by tile into OME-Zarr (or a TIFF); return ``out_path``.

    Parameters
    ----------
    model
        Model folder, or the name of a method that needs no fitting ("bicubic").
    lr_path
        The LR image: a (OME-)zarr store, read by region. Other formats are read whole and
        work only without ``client``.
    out_path
        Output by suffix: ``*.zarr``: OME-Zarr, ``zoom`` × the LR's shape, SR-grid coordinate
        transform (scale ``pixel/zoom``, translation ``lr_translation - pixel*(zoom-1)/(2*zoom)``;
        without a pixel size the same in LR pixels, unit-less, with a :class:`MissingPixelSize`
        warning), provenance under the ``"pairsr"`` attribute, ``omero`` display window from
        the data, done-markers and the log under ``.pairsr/``. ``*.ome.tif`` / ``*.tif``: the
        tiles go to the OME-Zarr ``.<name>.zarr`` beside it, which is then streamed into the
        (OME-)TIFF (:func:`pairsr.io.convert`) and removed; an interrupted run keeps it for
        ``resume``.
    tile
        LR px a side of a task. Output chunks are ``zoom*min(tile, 512)`` SR px a side; a larger
        tile is rounded to a multiple of 512.
    blend
        "none": every output pixel from one window with full halo (exact for local methods);
        "linear" / "cosine": a global lattice of windows of ``window`` + 2 × ``overlap`` LR px,
        blended with normalised ramps, whatever ``tile``.
    window, overlap
        The blending lattice (LR px); unused with ``blend="none"``.
    client
        A ``distributed.Client`` (see :func:`pairsr.cluster.get_client`); None runs the tasks
        one after the other in this process.
    resume, overwrite
        Redo only the unfinished tasks of the same run / replace an existing output. Without
        either, an existing output is an :class:`pairsr.io.OutputExistsError`; resuming another
        run's output is a :class:`ResumeError`. A run stopped by a failing task raises
        :class:`PartialOutputError`, naming the store that ``resume`` finishes.
    out_dtype
        Output dtype (default: the input's), scaled as in :func:`pairsr.io.from_float32`.
    pyramid
        Also write 2×-downsampled levels down to one chunk (:func:`pairsr.io.build_pyramid`).
    progress
        Show a progress bar over the output pixels (on stderr).
    gpu
        "auto" or "require": where the tasks of a method that asks for a GPU run, see
        :func:`pairsr.cluster.task_resources`.
    log_path
        JSON log of this run's per-task read/predict/write seconds and workers (default
        ``.pairsr/log.json`` in the zarr store, removed with it for TIFF outputs).
    pixel_size, crop, auto_crop
        As in :func:`pairsr.io.read_image` (info bars of TIFF/PNG inputs are cropped by
        default; zarr inputs are used as they are unless ``crop`` is given).
    uncertainty
        Also write the model's uncertainty map (:class:`pairsr.uncertainty.UncertaintyMap`:
        expected RMS error against an HR scan, float32 in the output dtype's intensity units)
        as the OME-NGFF image ``OUT/uncertainty`` on the SR's grid and transforms (``*.zarr``
        outputs only).
    """
    from pairsr.cluster import TASK_THREADS, run_batched, task_resources

    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if min(tile, window) < 1 or overlap < 0:
        raise ValueError(f"need tile >= 1, window >= 1 and overlap >= 0; got tile={tile}, "
                         f"window={window}, overlap={overlap}")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: pick one")
    lr_path, final = Path(lr_path).resolve(), Path(out_path).resolve()
    if final == lr_path:
        raise ValueError(f"{final}: the output cannot be the input")
    tiff = output_format(final) != "zarr"
    if tiff and output_format(final) not in ("tiff", "ome-tiff"):
        raise ValueError(f"{final}: apply writes *.zarr, *.ome.tif or *.tif")
    out = final.with_name(f".{final.name}.zarr") if tiff else final
    if tiff and final.exists() and not overwrite:
        if resume and not out.exists():
            return Path(out_path)  # finished before: nothing to resume
        if not resume:
            raise OutputExistsError(f"{final} exists; pass overwrite=True to replace it")
    # Absolute paths throughout: workers may run in another directory (SLURM jobs).
    model = str(Path(model).resolve()) if Path(model).exists() else str(model)
    method = cached_model(model)
    halo = method.halo
    if uncertainty:
        from pairsr.uncertainty import UncertaintyMap

        if tiff:
            raise ValueError(f"{final}: the uncertainty map needs an OME-Zarr output "
                             "(--out NAME.zarr)")
        halo = max(halo, UncertaintyMap(method).halo)  # refuses an uncalibrated model
    resources = task_resources(client, method.resources, gpu)
    image = read_image(lr_path, pixel_size=pixel_size, crop=crop, auto_crop=auto_crop)
    lazy = not isinstance(image.data, np.ndarray)
    if client is not None and not lazy:
        raise ImageError(f"{lr_path}: a cluster reads zarr inputs only; convert it first "
                         "(pairsr convert / pairsr.io.convert)")
    zoom, (rows, cols) = method.zoom, image.shape
    origin = tuple(image.attrs["origin_px"]) if lazy else (0, 0)
    chunk = min(tile, CHUNK)
    tile = max(1, round(tile / chunk)) * chunk
    lattice = Lattice(tile) if blend == "none" else Lattice(window, overlap, window // 2, blend)
    settings = {
        "model_hash": model_hash(model), "method": method.name, "params": method.params,
        "zoom": zoom, "halo": method.halo, "align": method.align, "tile": tile,
        "chunk": zoom * chunk, "blend": blend,
        "lattice": asdict(lattice), "input_shape": [rows, cols], "input_dtype": image.dtype.name,
        "input_chunks": list(image.data.chunksize) if lazy else None,
        "input_origin": list(image.attrs["origin_px"]),
        "dtype": np.dtype(out_dtype or image.dtype).name, "pyramid": pyramid,
        **({"uncertainty": True, "uncertainty_halo": halo} if uncertainty else {}),
    }
    text = json.dumps(settings, sort_keys=True, default=str)
    run_hash = hashlib.sha256(text.encode()).hexdigest()
    provenance = {"pairsr_version": __version__, "model": model, "input": str(lr_path),
                  "info_bar": image.attrs["info_bar"], **settings, "run_hash": run_hash,
                  "complete": False}
    if resume and out.exists():
        group = _open_to_resume(out, run_hash)
    else:
        if image.attrs["pixel_size_nm"] is None:
            where = ("the TIFF gets no physical size (pixel units)" if tiff else
                     f"the SR's geometry is written in LR pixels (scale 1/{zoom}), so that it "
                     "still overlays the LR in a viewer")
            warnings.warn(f"{lr_path.name}: no pixel size in the file; {where}; --pixel-size "
                          "gives nm", MissingPixelSize, stacklevel=2)
        group = _create_output(out, image, zoom, zoom * chunk, provenance, overwrite or tiff)
        if uncertainty:
            _create_output(out / UNCERTAINTY, image, zoom, zoom * chunk,
                           {**provenance, "dtype": "float32", "pyramid": False}, False,
                           name="uncertainty")
    dtype = np.dtype(settings["dtype"])
    scale = (float(np.iinfo(dtype).max) if dtype.kind in "iu" else 1.0) if uncertainty else 0.0

    job = Job(model, str(lr_path), str(out), run_hash, (rows, cols), zoom, halo, lattice,
              settings["dtype"], origin, TASK_THREADS if client is not None else None, scale,
              method.align)
    tasks = [Task(f"{i}_{j}", (r, min(r + tile, rows)), (c, min(c + tile, cols)))
             for i, r in enumerate(range(0, rows, tile))
             for j, c in enumerate(range(0, cols, tile))]
    done = _finished(out, run_hash)
    todo = [t for t in tasks if t.name not in done]
    if client is None:
        source = open_level0(lr_path) if lazy else image.data
        records = (run_task(job, t, source, group["0"]) for t in todo)
    else:
        records = run_batched(client, run_task, [(job, t) for t in todo], "pairsr-tile",
                              resources)
    log = {"run_hash": run_hash, "output": str(final), "tasks_total": len(tasks),
           "tasks_skipped": len(done), "tasks": []}
    if log_path is None:  # (a TIFF output keeps no log unless asked: its store is removed)
        log_path = out / STATE / "log.json"
    area = {t.name: zoom**2 * (t.rows[1] - t.rows[0]) * (t.cols[1] - t.cols[0]) for t in todo}
    start = time.perf_counter()
    try:
        with _progress(sum(area.values()), progress) as advance:
            for record in records:
                log["tasks"].append(record)
                done[record["task"]] = record
                advance(area[record["task"]])
    except Exception as err:
        raise PartialOutputError(
            f"{lr_path.name}: stopped after {len(done)} of {len(tasks)} tiles ({err}); the "
            f"finished tiles are kept in {out}: run again with --resume (resume=True) to finish",
            out) from err
    finally:
        log["wall_s"] = time.perf_counter() - start
        _write_json(Path(log_path), log)

    if pyramid:
        build_pyramid(group)
    set_display_window(group)
    if uncertainty:
        set_display_window(group[UNCERTAINTY])
    checksum = hashlib.sha256("".join(done[t.name]["input_sha256"] for t in tasks).encode())
    group.attrs["pairsr"] = {**provenance, "input_sha256": checksum.hexdigest(), "complete": True}
    if tiff:
        convert(out, final, overwrite=True, auto_crop=False)
        shutil.rmtree(out)
    return Path(out_path)


def _create_output(out: Path, image, zoom: int, chunk: int, provenance: dict,
                   overwrite: bool, name: str = "sr") -> zarr.Group:
    """The empty OME-Zarr for the SR of ``image`` (a DataArray from :func:`read_image`), with
    the SR grid's coordinate transform (in nm, or in LR pixels without a pixel size), ``chunk``
    SR px chunks and pyramid levels if asked; ``name`` ends its multiscale name."""
    pixel = image.attrs["pixel_size_nm"]
    step = 1.0 if pixel is None else pixel
    translation = sr_translation(image.attrs["translation_nm"], step, zoom)
    shape = (zoom * image.shape[0], zoom * image.shape[1])
    levels = 1 + max(0, math.ceil(math.log2(max(shape) / chunk))) if provenance["pyramid"] else 1
    return create_ome_zarr(out, shape, provenance["dtype"], chunks=chunk, pixel_size_nm=step / zoom,
                           translation_nm=translation, unit=None if pixel is None else "nanometer",
                           name=Path(image.attrs["source"]).name.split(".")[0] + f"-{name}",
                           attrs=provenance, pyramid_levels=levels, overwrite=overwrite)


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over ``total`` output pixels on stderr; yields ``advance(pixels)``."""
    from rich.console import Console
    from rich.progress import Progress, TimeRemainingColumn

    columns = (*Progress.get_default_columns()[:-1], TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not enabled) as bar:
        task = bar.add_task("super-resolving (output pixels)", total=total)
        yield lambda pixels: bar.advance(task, pixels)
