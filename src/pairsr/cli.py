"""Command-line interface: a thin layer over the library functions.

Conventions: messages and progress go to stderr (``--quiet`` keeps only warnings and errors),
warnings print as ``warning: <message>``; usage errors (bad options, unknown method or
parameter, an existing or unwritable output) exit with 2 before any expensive work, failures
while running exit with 1.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import tempfile
import time
import tomllib
import types
import typing
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Super-resolve whole-field EM scans from a physical LR/HR image pair.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # progress and messages: silenced by --quiet
errors = Console(stderr=True, soft_wrap=True)  # warnings and errors: always shown


class UsageError(ValueError):
    """A command line that cannot work (exit status 2), found before any expensive work."""

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
PixelSize = Annotated[
    float | None, typer.Option("--pixel-size", help="Pixel size in nm (overrides metadata).")
]
Crop = Annotated[
    str | None,
    typer.Option("--crop", help="Keep 'y0:y1,x0:x1' (Python slices); ':-66,' drops an info bar "
                 "(overrides the automatic crop)."),
]
AutoCrop = Annotated[bool, typer.Option(
    "--auto-crop/--no-auto-crop", help="Crop a microscope info bar found below the scan.")]


def _version(value: bool) -> None:
    if value:
        from pairsr import __version__

        print(f"pairsr {__version__}")
        raise typer.Exit()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning as its message (not a source line), on stderr."""
    errors.print(f"[yellow]warning:[/yellow] {message}", highlight=False, markup=True)


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages; "
                                        "warnings and errors only.")] = False,
) -> None:
    """Super-resolve whole-field EM scans from a physical LR/HR image pair."""
    console.quiet = quiet
    warnings.showwarning = _show_warning
    warnings.filterwarnings("default", category=UserWarning)  # once per run and location


def _quiet() -> bool:
    return bool(console.quiet)


def _shape(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected ROWSxCOLS, e.g. 944x1280, got {text!r}") from None
    return rows, cols


def _fail(err: Exception) -> typer.Exit:
    """Print ``err``; exit status 2 for a usage error, 1 for a failure while running."""
    from pairsr.methods import ModelError
    from pairsr.tiles import ResumeError

    hint = ""
    if isinstance(err, FileExistsError):
        hint = " (on the command line: --overwrite, or --resume for apply)"
    elif isinstance(err, ResumeError):
        hint = " (on the command line: --overwrite instead of --resume)"
    errors.print(f"[red]error:[/red] {err}{hint}", highlight=False)
    usage = (UsageError, FileExistsError, typer.BadParameter, ModelError, ResumeError)
    return typer.Exit(code=2 if isinstance(err, usage) else 1)


def _check_out(path: Path, overwrite: bool, *, formats=("zarr", "ome-tiff", "tiff"),
               resume: bool = False) -> None:
    """Refuse an output path of the wrong kind, an existing one (without --overwrite/--resume)
    and one whose folder cannot be written, before any work."""
    from pairsr.io import output_format

    if formats:
        try:
            kind = output_format(path)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if kind not in formats:
            names = {"zarr": "*.zarr", "ome-tiff": "*.ome.tif", "tiff": "*.tif", "png": "*.png",
                     "npy": "*.npy"}
            raise UsageError(f"{path}: --out must be {' or '.join(names[f] for f in formats)}")
    if (path.exists() or path.is_symlink()) and not (overwrite or resume):
        raise UsageError(f"{path} exists; pass --overwrite to replace it")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    try:  # a real test: permissions, read-only file systems, root
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as err:
        raise UsageError(f"{path}: cannot write in {parent} ({err.strerror})") from None


def _check_inputs(*paths: Path | None) -> None:
    for path in paths:
        if path is not None and not path.exists():
            raise UsageError(f"{path}: no such file")


#: The ``-p`` values (parsed JSON) each parameter type takes.
_JSON_KINDS = {bool: (bool,), int: (int,), float: (int, float), str: (str,), Path: (str,),
               list: (list,), tuple: (list,), dict: (dict,)}


def _accepts(value, hint) -> bool:
    """Whether a ``-p`` value (parsed JSON) fits a type hint of a fit parameter."""
    if hint is inspect.Parameter.empty or hint is typing.Any:
        return True
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    for option in typing.get_args(hint) if union else (hint,):
        option = typing.get_origin(option) or option
        if option is type(None):
            if value is None:
                return True
            continue
        kinds = _JSON_KINDS.get(option)
        if kinds is None:
            return True  # a library type (a torch device): left to the method
        if isinstance(value, kinds) and (option is bool or not isinstance(value, bool)):
            return True
    return False


def _fit_signature(cls) -> tuple[dict[str, inspect.Parameter], dict]:
    """The keyword parameters ``cls.fit`` takes (following ``**options`` into the training) and
    their type hints."""
    functions = [cls.fit]
    if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.fit).parameters.values()):
        from pairsr.train import train

        functions.append(train)
    params, hints = {}, {}
    for function in functions:
        params.update(inspect.signature(function).parameters)
        with contextlib.suppress(Exception):  # unresolvable hints: values are not checked
            hints.update(typing.get_type_hints(function))
    skip = ("pairs", "method", "out")
    return {k: v for k, v in params.items()
            if k not in skip and v.kind is not v.VAR_KEYWORD}, hints


def _check_method(method: str, params: dict) -> None:
    """Refuse an unknown method, parameter name or a parameter value of the wrong type."""
    from pairsr.methods import method_class

    try:
        cls = method_class(method)
    except ValueError as err:
        raise UsageError(f"--method: {err}") from None
    accepted, hints = _fit_signature(cls)
    for key, value in params.items():
        if key not in accepted:
            known = ", ".join(sorted(accepted)) or "none"
            raise UsageError(f"-p {key}: {method} has no parameter {key!r} (it takes: {known})")
        hint = hints.get(key, accepted[key].annotation)
        if not _accepts(value, hint):
            shown = getattr(hint, "__name__", None) or str(hint)
            raise UsageError(f"-p {key}={json.dumps(value)}: {key} of {method} must be {shown}")


def _check_model(model: str) -> None:
    """Refuse an ``apply`` model that is neither a model folder nor a method without fitting."""
    from pairsr.methods import method_class, needs_fit

    if Path(model).exists():
        if not (Path(model) / "model.json").is_file():
            raise UsageError(f"{model}: not a model folder (no model.json); make one with "
                             "`pairsr fit LR HR --out MODEL`")
        return
    try:
        cls = method_class(model)
    except ValueError as err:
        raise UsageError(f"{model}: no such model folder, and {err}") from None
    if needs_fit(cls):
        raise UsageError(f"{model} must be fitted first: `pairsr fit LR HR --method {model} "
                         "--out MODEL`, then `pairsr apply MODEL ...`")


@contextlib.contextmanager
def _rows_progress(description: str):
    """A progress bar fed by ``progress(done, total)`` callbacks; yields that callback."""
    from rich.progress import Progress

    with Progress(console=console, disable=_quiet()) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


Dose = Annotated[float | None, typer.Option(
    metavar="COUNTS", help="Counts per pixel at full signal (default drawn from 15-60).")]
Gamma = Annotated[float | None, typer.Option(help="Detector gamma (default drawn 0.8-1.25).")]


@app.command()
def simulate(
    outdir: Annotated[Path, typer.Argument(
        help="Folder for lr.tif, hr.tif, gt.tif, truth.json (zarr: lr.zarr, gt.zarr).")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    specimen: Annotated[str | None, typer.Option(
        help="Real HR micrograph to use as specimen, or a built-in one: nanocomposite (default), "
        "lattice, lattice-perfect.")] = None,
    crop: Crop = None,
    lr_shape: Annotated[
        str | None, typer.Option(help="LR field ROWSxCOLS (default 944x1280 built-in).")
    ] = None,
    hr_shape: Annotated[str | None, typer.Option(
        help="HR scan ROWSxCOLS (default: from --hr-fraction).")] = None,
    zoom: Annotated[int | None, typer.Option(
        "--zoom", help="LR/HR pixel-size ratio: 2, 3 or 4 (default 2).")] = None,
    hr_fraction: Annotated[float | None, typer.Option(
        "--hr-fraction", help="HR field area as a fraction of the LR field.")] = None,
    rotation: Annotated[float | None, typer.Option(
        metavar="DEG", help="HR scan rotation, degrees (default: drawn).")] = None,
    max_rotation: Annotated[float | None, typer.Option(
        "--max-rotation", metavar="DEG", help="HR scan rotation drawn from ±DEG degrees.")] = None,
    hr_inside: Annotated[float | None, typer.Option(
        help="Fraction of the HR area inside the LR field (default: all of it).")] = None,
    lr_dose: Dose = None,
    hr_dose: Dose = None,
    lr_gamma: Gamma = None,
    hr_gamma: Gamma = None,
    lr_inverted: Annotated[bool, typer.Option(help="Invert the LR detector (BSE/TSEM).")] = False,
    hr_inverted: Annotated[bool, typer.Option(help="Invert the HR detector.")] = False,
    wide: Annotated[bool, typer.Option(
        help="Draw the acquisition from the wide ranges users meet (pairsr.simulate."
        "WIDE_RANGES: HR 128-4096 px, 10-100 %, ±8°, doses 2-200, gammas 0.6-1.7, inverted "
        "detectors, ×2/×3/×4); the options above override single draws.")] = False,
    format: Annotated[str, typer.Option(
        "--format", help="tiff: in memory; zarr: lr.zarr and gt.zarr (OME-Zarr) rendered tile by "
        "tile in bounded memory, and hr.tif; auto: zarr when the in-memory simulation would need "
        "more than 1 GiB (from about a 1600x1600 LR field with a built-in specimen) or a real "
        "--specimen does not cover the field. Tiled, a "
        "built-in specimen is drawn by region (for a seed another realisation than in memory), a "
        "real --specimen is mirrored beyond its edges where the field needs more, and the pixels "
        "do not depend on --chunk.")] = "auto",
    chunk: Annotated[int, typer.Option(
        help="Zarr chunk and tile edge, LR px (a multiple of 64).")] = 1024,
    overwrite: Overwrite = False,
    auto_crop: AutoCrop = True,
) -> None:
    """Simulate a physical LR/HR pair (two independent scans of one specimen)."""
    import numpy as np

    from pairsr.simulate import (
        BUILTIN,
        NOISE_BLOCK,
        draw_acquisition,
        load_specimen,
        write_simulation,
    )

    given = {"zoom": zoom, "hr_fraction": hr_fraction, "max_rotation_deg": max_rotation,
             "lr_shape": _shape(lr_shape), "hr_shape": _shape(hr_shape), "rotation_deg": rotation,
             "hr_inside": hr_inside, "lr_dose": lr_dose, "hr_dose": hr_dose,
             "lr_gamma": lr_gamma, "hr_gamma": hr_gamma,
             "lr_inverted": lr_inverted or None, "hr_inverted": hr_inverted or None}
    try:
        if format not in ("auto", "tiff", "zarr"):
            raise UsageError(f"--format {format}: choose auto, tiff or zarr")
        if chunk < NOISE_BLOCK or chunk % NOISE_BLOCK:
            raise UsageError(f"--chunk {chunk}: give a multiple of {NOISE_BLOCK}")
        spec, path = None, None
        if specimen is not None and specimen not in BUILTIN:
            path = Path(specimen)
            _check_inputs(path)
            spec = load_specimen(path, crop=crop, auto_crop=auto_crop)
        options = {}
        if wide:
            options = draw_acquisition(np.random.default_rng(seed),
                                       specimen_shape=None if spec is None else spec.shape)
            if given["hr_fraction"] is not None or given["lr_shape"] is not None:
                options.pop("hr_shape", None)  # the given field size decides the HR's
        options.update({k: v for k, v in given.items() if v is not None})
        with _rows_progress("simulating (LR rows)") as progress:
            t, kind = write_simulation(outdir, spec if path is not None else specimen,
                                       format=format, chunk=chunk, overwrite=overwrite,
                                       progress=progress, seed=seed, **options)
    except (ValueError, OSError) as err:
        raise _fail(err) from err
    console.print(
        f"wrote {outdir} ({kind}): LR {tuple(t['lr_shape'])}, HR {tuple(t['hr_shape'])}, zoom "
        f"{t['zoom']:.4f}, rotation {t['rotation_deg']:.3f}°"
    )


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Input image (TIFF, OME-TIFF, PNG, NPY, zarr).")],
    dst: Annotated[Path, typer.Argument(help="Output: *.zarr (OME-Zarr), *.ome.tif or *.tif.")],
    chunk: Annotated[int, typer.Option(help="Chunk edge in pixels (zarr).")] = 1024,
    pixel_size: PixelSize = None,
    crop: Crop = None,
    overwrite: Overwrite = False,
    auto_crop: AutoCrop = True,
) -> None:
    """Convert a (large) image into chunked OME-Zarr (or OME-TIFF/TIFF), streaming it."""
    from pairsr.io import convert as convert_image

    try:
        _check_inputs(src)
        _check_out(dst, overwrite)
        with _rows_progress(f"converting {src.name} (rows)") as progress:
            out = convert_image(src, dst, chunk=chunk, pixel_size=pixel_size, crop=crop,
                                auto_crop=auto_crop, overwrite=overwrite, progress=progress)
    except (ValueError, OSError) as err:
        raise _fail(err) from err
    console.print(f"wrote {out}")


def _params(items: list[str] | None) -> dict:
    """Parse repeated ``key=value`` options; values are JSON when they parse, else strings."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def _find(folder: Path, stem: str) -> Path:
    hits = sorted(p for p in folder.glob(f"{stem}.*") if p.suffix != ".json")
    if not hits:
        raise typer.BadParameter(f"{folder}: no {stem}.* image in this pair folder")
    return hits[0]


def _pair_paths(spec: str) -> tuple[Path, list[Path]]:
    """The LR and HR scan(s) of a pair: a folder with ``lr.*`` and ``hr.*`` (as ``pairsr
    simulate`` writes) or, for several HR scans of the field, ``hr1.*``, ``hr2.*``, …; or
    ``LR,HR[,HR2…]``."""
    if "," in spec:
        lr, *hrs = spec.split(",")
        if not lr or not hrs or not all(hrs):
            raise typer.BadParameter(f"{spec!r}: expected LR,HR or LR,HR1,HR2,…")
        return Path(lr), [Path(hr) for hr in hrs]
    folder = Path(spec)
    scans: dict[str, Path] = {}
    for path in sorted(folder.glob("hr*")):
        name = re.fullmatch(r"(hr(\d*))\..+", path.name)
        if name and path.suffix != ".json":
            scans.setdefault(name[1], path)  # one file per scan: hr.tif before hr.zarr
    if not scans:
        raise typer.BadParameter(f"{folder}: no hr.* image in this pair folder")
    order = sorted(scans, key=lambda stem: int(stem[2:] or 0))
    return _find(folder, "lr"), [scans[stem] for stem in order]


ZoomOption = Annotated[float | None, typer.Option(
    "--zoom", help="LR/HR pixel-size ratio (HR pixels per LR pixel along an axis), e.g. 2, 3 "
    "or 4; fractional is fine for the registration, the SR output is ×its nearest integer. "
    "Default: the ratio of the files' pixel sizes when both carry one, else 2.")]
MaxRotation = Annotated[float | None, typer.Option(
    "--max-rotation", metavar="DEG", help="Search rotations within ±DEG degrees "
    "(default: the registration's).")]
Inversion = Annotated[bool, typer.Option(
    "--allow-inversion/--refuse-inversion", help="Accept an HR whose contrast is inverted with "
    "respect to the LR (e.g. TSEM or BSE vs SE), with a warning; or refuse such a pair.")]
MinNcc = Annotated[float | None, typer.Option(
    "--min-ncc", help="Least NCC of the coarse match (default: the registration's).")]
MinPeakRatio = Annotated[float | None, typer.Option(
    "--min-peak-ratio", help="Least ratio of the best to the second-best match peak "
    "(default: the registration's).")]
LrCrop = Annotated[str | None, typer.Option(help="Crop of the LR (info bar).")]
HrCrop = Annotated[str | None, typer.Option(help="Crop of the HR (info bar).")]
LocalOption = Annotated[bool, typer.Option(help="Also fit the local displacement field.")]


def _register_options(max_rotation: float | None = None, allow_inversion: bool = True,
                      min_ncc: float | None = None, min_peak_ratio: float | None = None) -> dict:
    """The registration keywords the command-line options ask for (unset ones left out)."""
    options = {"max_rotation_deg": max_rotation, "min_ncc": min_ncc,
               "min_peak_ratio": min_peak_ratio}
    return {"allow_inversion": allow_inversion,
            **{k: v for k, v in options.items() if v is not None}}



def _prepare(lr_path: Path, hr_path: Path, *, lr_crop=None, hr_crop=None, local=True,
             zoom: float | None = None, auto_crop=True, **register_options):
    from pairsr.api import prepare_pair
    from pairsr.io import read_image

    lr = read_image(lr_path, crop=lr_crop, auto_crop=auto_crop)
    hr = read_image(hr_path, crop=hr_crop, auto_crop=auto_crop)
    console.print(f"registering {hr_path.name} inside {lr_path.name} …")
    pair = prepare_pair(lr, hr, zoom=zoom, local=local,
                        **(register_options or _register_options()))
    r = pair.registration
    console.print(f"  zoom {r.zoom:.4f} (SR ×{pair.zoom}), rotation {r.rotation_deg:+.3f}°, "
                  f"NCC {r.ncc:.3f}, precision ±{r.corner_sd:.2f} LR px")
    return pair


@app.command("register")
def register_cmd(
    lr: Annotated[Path, typer.Argument(help="LR image of the whole field.")],
    hr: Annotated[Path, typer.Argument(help="HR image of a sub-area.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Registration JSON.")] = Path("reg.json"),
    plot: Annotated[Path | None, typer.Option(help="PNG of footprint and arrows.")] = None,
    zoom: ZoomOption = None,
    lr_crop: LrCrop = None,
    hr_crop: HrCrop = None,
    local: LocalOption = True,
    max_rotation: MaxRotation = None,
    allow_inversion: Inversion = True,
    min_ncc: MinNcc = None,
    min_peak_ratio: MinPeakRatio = None,
    overwrite: Overwrite = False,
    auto_crop: AutoCrop = True,
) -> None:
    """Locate the HR field inside the LR field (global) and map its local distortions."""
    from pairsr.api import register_images
    from pairsr.io import read_image, to_float32
    from pairsr.register import plot_registration

    try:
        _check_inputs(lr, hr)
        for path in (out, plot):
            if path is not None:
                _check_out(path, overwrite, formats=())
        lr_img = read_image(lr, crop=lr_crop, auto_crop=auto_crop)
        hr_img = read_image(hr, crop=hr_crop, auto_crop=auto_crop)
        t0 = time.perf_counter()
        reg, _ = register_images(lr_img, hr_img, zoom=zoom, local=local, **_register_options(
            max_rotation, allow_inversion, min_ncc, min_peak_ratio))
        seconds = time.perf_counter() - t0
        reg.save(out)
        if plot is not None:
            plot_registration(to_float32(lr_img.values), to_float32(hr_img.values), reg, plot)
    except (ValueError, OSError) as err:
        raise _fail(err) from err
    console.print(
        f"registered in {seconds:.2f} s: zoom {reg.zoom:.4f}, rotation {reg.rotation_deg:+.3f}°, "
        f"NCC {reg.ncc:.3f} (peak ratio {reg.peak_ratio:.2f}), precision ±{reg.corner_sd:.2f} "
        f"LR px, {100 * reg.inside_fraction:.0f}% "
        f"inside; local: {reg.patches_accepted}/{reg.patches_tried} patches, RMS "
        f"{reg.rms_displacement:.2f} HR px → {out}"
    )


def _fit_stages(method: str, n_pairs: int, params: dict) -> None:
    """Say what fitting does (its steps report no progress of their own, except training)."""
    from pairsr.methods import method_class

    cls = method_class(method)
    if getattr(cls, "trains_in_folder", False):
        steps = "training (progress per epoch below)"
        if _quiet():
            params.setdefault("progress", False)
    elif params.get("sigma", "auto") == "auto" and "sigma" in _fit_signature(cls)[0]:
        steps = "σ selection on a held-out strip, then the patch library"
    else:
        steps = "building the model"
    console.print(f"fitting {method} on {n_pairs} pair(s): {steps} …")


Method = Annotated[str, typer.Option("--method", "-m", help="bicubic, lbnlm, lbnlm-original, "
                                     "vdsr, edsr, rcan, scsr, srsw.")]
Param = Annotated[list[str] | None, typer.Option("--param", "-p", help="Method parameter "
                                                 "key=value, e.g. -p sigma=0.05 -p L=5000.")]


@app.command("fit")
def fit_cmd(
    lr: Annotated[Path, typer.Argument(help="LR image of the whole field.")],
    hr: Annotated[list[Path], typer.Argument(help="HR image(s) of sub-areas of this field, "
                                             "each registered in it; one library of all.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    method: Method = "lbnlm",
    pair: Annotated[list[str] | None, typer.Option(
        "--pair", help="More pairs for pooled training: 'LR,HR[,HR2…]' or a pair "
        "folder.")] = None,
    param: Param = None,
    lr_crop: LrCrop = None,
    hr_crop: HrCrop = None,
    local: LocalOption = True,
    zoom: ZoomOption = None,
    max_rotation: MaxRotation = None,
    allow_inversion: Inversion = True,
    min_ncc: MinNcc = None,
    min_peak_ratio: MinPeakRatio = None,
    overwrite: Overwrite = False,
    auto_crop: AutoCrop = True,
    uncertainty: Annotated[bool | None, typer.Option(
        "--uncertainty/--no-uncertainty", help="Calibrate the uncertainty map (apply "
        "--uncertainty) on held-out bands of the HR; default: yes, except for networks (it "
        "trains them twice more).")] = None,
) -> None:
    """Register the HR scan(s) in the LR field (and the --pair pairs) and fit a method on the
    overlaps; write a model folder (×zoom)."""
    from pairsr.api import fit

    options = {"local": local, "zoom": zoom,
               **_register_options(max_rotation, allow_inversion, min_ncc, min_peak_ratio)}
    try:
        params = _params(param)
        _check_method(method, params)
        extra = [_pair_paths(p) for p in pair or []]
        _check_inputs(lr, *hr, *(path for other, hrs in extra for path in (other, *hrs)))
        if (out / "model.json").exists() and not overwrite:
            raise FileExistsError(f"{out}: a model exists there; pass --overwrite to replace it")
        _check_out(out / "model.json", True, formats=())
        pairs = [_prepare(lr, path, lr_crop=lr_crop, hr_crop=hr_crop, auto_crop=auto_crop,
                          **options) for path in hr]
        pairs += [_prepare(other, path, auto_crop=auto_crop, **options)
                  for other, hrs in extra for path in hrs]
        t0 = time.perf_counter()
        _fit_stages(method, len(pairs), params)
        model = fit(pairs, method, out=out, overwrite=overwrite, uncertainty=uncertainty,
                    **params)
    except (ValueError, OSError, TypeError) as err:
        raise _fail(err) from err
    console.print(f"fitted {model.name} ×{model.zoom} on {len(pairs)} pair(s) in "
                  f"{time.perf_counter() - t0:.1f} s → {out}")


@app.command("plan")
def plan_cmd(
    lr: Annotated[Path, typer.Argument(help="LR image of the whole field (zarr for large ones).")],
    hr_shape: Annotated[str, typer.Option("--hr-shape", help="HR scan size ROWSxCOLS in HR "
                                          "pixels.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Plan JSON.")],
    count: Annotated[int, typer.Option("--count", "-n", help="HR boxes to propose.")] = 1,
    zoom: Annotated[float, typer.Option("--zoom", help="HR pixels per LR pixel along an axis "
                                        "(the HR box is --hr-shape / --zoom LR pixels).")] = 2.0,
    plot: Annotated[Path | None, typer.Option(help="PNG of the field with the boxes.")] = None,
    classes: Annotated[int, typer.Option(help="Structure classes of the field.")] = 16,
    overwrite: Overwrite = False,
    pixel_size: PixelSize = None,
    crop: Crop = None,
    auto_crop: AutoCrop = True,
) -> None:
    """Propose where to scan the HR: the box(es) whose library covers the whole field's
    structures best, weighted by how much SR changes them (boxes in LR pixels and nm)."""
    from pairsr.io import read_image
    from pairsr.plan import plan_acquisition, plot_plan

    try:
        shape = _shape(hr_shape)
        if count < 1 or zoom <= 0:
            raise UsageError(f"--count must be at least 1 and --zoom positive, got {count}, "
                             f"{zoom:g}")
        _check_inputs(lr)
        for path in (out, plot):
            if path is not None:
                _check_out(path, overwrite, formats=())
        image = read_image(lr, pixel_size=pixel_size, crop=crop, auto_crop=auto_crop)
        t0 = time.perf_counter()
        with _rows_progress(f"reading {lr.name} (rows)") as progress:
            plan = plan_acquisition(image, shape, count, zoom=zoom, classes=classes,
                                    info_bar=crop is None, progress=progress)
        pixel = image.attrs.get("pixel_size_nm")
        record = plan.to_dict(pixel, image.attrs.get("translation_nm", (0.0, 0.0)),
                              source=str(lr), hr_shape=list(shape), zoom=zoom)
        origin = image.attrs.get("origin_px", (0, 0))
        for box in record["boxes"]:  # pixels of the file, not of a --crop
            box["row"], box["col"] = box["row"] + origin[0], box["col"] + origin[1]
        out.write_text(json.dumps(record, indent=1))
        if plot is not None:
            plot_plan(plan, plot)
    except (ValueError, OSError) as err:
        raise _fail(err) from err
    for i, box in enumerate(record["boxes"]):
        nm = (f" = ({box['row_nm']:.1f}, {box['col_nm']:.1f}) nm" if box["row_nm"] is not None
              else "")
        console.print(f"box {i + 1}: rows {box['row']}:{box['row'] + box['rows']}, cols "
                      f"{box['col']}:{box['col'] + box['cols']} (LR px){nm}, adds "
                      f"{100 * box['gain']:.1f}% coverage")
    console.print(f"planned {len(plan.boxes)} box(es) in {time.perf_counter() - t0:.1f} s: "
                  f"{100 * plan.coverage:.1f}% of the field's structure covered → {out}")


Workers = Annotated[int | None, typer.Option(help="Worker processes (default: one per core).")]
Threads = Annotated[int | None, typer.Option(help="Threads per worker (default 1).")]
Memory = Annotated[str | None, typer.Option(help="Memory limit per worker, e.g. 4GiB.")]
Scheduler = Annotated[str | None, typer.Option(help="Address of a running Dask scheduler.")]
ClusterKind = Annotated[str, typer.Option("--cluster", help="local, slurm, or none (in-process).")]
JobqueueConfig = Annotated[Path | None, typer.Option(help="dask-jobqueue YAML (--cluster slurm).")]
Gpu = Annotated[str, typer.Option(help="Network tasks: auto (GPU workers if any, else CPU "
                                   "workers with a message) or require (error without GPU).")]


def _check_uncertainty(model: str) -> None:
    """Refuse ``--uncertainty`` for a model without an uncertainty calibration."""
    from pairsr.methods import cached_model
    from pairsr.uncertainty import UncertaintyError, UncertaintyMap

    try:
        UncertaintyMap(cached_model(model))
    except UncertaintyError as err:
        raise UsageError(f"--uncertainty: {err}") from None


@contextlib.contextmanager
def _client(lr: Path | None, scheduler, cluster, workers, threads, memory, jobqueue_config):
    """The Dask client the options ask for (None: run in-process), dashboard link printed."""
    from pairsr.cluster import dashboard_link, get_client
    from pairsr.io import is_zarr

    if scheduler is None and cluster == "none":
        yield None
        return
    if lr is not None and not is_zarr(lr):
        console.print(f"{lr} is not zarr: running in-process (use `pairsr convert` for a cluster)")
        yield None
        return
    options = {"workers": workers, "threads_per_worker": threads, "memory_limit": memory,
               "jobqueue_config": jobqueue_config}
    kwargs = {"scheduler": scheduler} if scheduler else {"cluster": cluster, **options}
    with get_client(**kwargs) as client:
        console.print(f"dashboard: {dashboard_link(client)}")
        yield client


@app.command("apply")
def apply_cmd(
    model: Annotated[str, typer.Argument(help="Model folder, or 'bicubic'.")],
    lr: Annotated[Path, typer.Argument(help="LR image (zarr/OME-Zarr for large fields).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output OME-Zarr.")],
    tile: Annotated[int, typer.Option(help="Tile edge in LR pixels.")] = 2048,
    blend: Annotated[str, typer.Option(help="none, linear or cosine.")] = "none",
    dtype: Annotated[str | None, typer.Option(help="Output dtype (default: the input's).")] = None,
    pyramid: Annotated[bool, typer.Option(help="Also write a multiscale pyramid.")] = False,
    resume: Annotated[bool, typer.Option(help="Finish an interrupted run.")] = False,
    workers: Workers = None,
    threads_per_worker: Threads = None,
    memory_limit: Memory = None,
    scheduler: Scheduler = None,
    cluster: ClusterKind = "local",
    jobqueue_config: JobqueueConfig = None,
    gpu: Gpu = "auto",
    overwrite: Overwrite = False,
    pixel_size: PixelSize = None,
    crop: Crop = None,
    auto_crop: AutoCrop = True,
    uncertainty: Annotated[bool, typer.Option(
        "--uncertainty", help="Also write OUT/uncertainty: the expected RMS error of each SR "
        "pixel against an HR scan (OME-Zarr outputs).")] = False,
) -> None:
    """Super-resolve a whole LR field with a fitted model (or 'bicubic'), tile by tile; write
    OME-Zarr (--out *.zarr), OME-TIFF (*.ome.tif) or TIFF (*.tif)."""
    from pairsr.tiles import apply_tiled

    try:
        _check_model(model)
        _check_inputs(lr)
        _check_out(out, overwrite, resume=resume, **({"formats": ("zarr",)} if uncertainty
                                                     else {}))
        if uncertainty:
            _check_uncertainty(model)
        t0 = time.perf_counter()
        with _client(lr, scheduler, cluster, workers, threads_per_worker, memory_limit,
                     jobqueue_config) as client:
            apply_tiled(model, lr, out, tile=tile, blend=blend, client=client, resume=resume,
                        overwrite=overwrite, out_dtype=dtype, pyramid=pyramid, gpu=gpu,
                        progress=not _quiet(), pixel_size=pixel_size, crop=crop,
                        auto_crop=auto_crop, uncertainty=uncertainty)
    except (ValueError, OSError, RuntimeError) as err:
        raise _fail(err) from err
    console.print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")


@app.command()
def batch(
    manifest: Annotated[Path, typer.Argument(help="TOML manifest: [defaults], [[pair]] entries.")],
    workers: Workers = None,
    threads_per_worker: Threads = None,
    memory_limit: Memory = None,
    scheduler: Scheduler = None,
    cluster: ClusterKind = "local",
    jobqueue_config: JobqueueConfig = None,
    gpu: Gpu = "auto",
    resume: Annotated[bool, typer.Option(help="Keep models, finish partial outputs.")] = False,
    zoom: ZoomOption = None,
    max_rotation: MaxRotation = None,
    allow_inversion: Inversion = True,
    min_ncc: MinNcc = None,
    min_peak_ratio: MinPeakRatio = None,
    overwrite: Overwrite = False,
) -> None:
    """Fit and apply many pairs (a facility's day of survey scans) on one cluster.

    Each ``[[pair]]`` has ``name``, ``lr``, ``hr`` (a path, or a list of the field's HR scans:
    one model of all), ``out`` and optionally ``model`` (default
    ``<out>.model``), ``method`` and ``params``; ``[defaults]`` holds shared ``method``, ``tile``,
    ``blend`` and ``params``. The registration keys ``zoom``, ``max_rotation``,
    ``allow_inversion``, ``min_ncc`` and ``min_peak_ratio`` may stand in either, as the options
    of the same names do on the command line, which give them for pairs that don't. Relative
    paths resolve against the manifest's folder. Models of methods that ask for a resource (the
    networks: ``GPU=1``) train on a worker offering it, all at once; the others are fitted here,
    pair by pair, before their tiles run.
    """
    from pairsr.cluster import TASK_THREADS, task_resources
    from pairsr.io import is_zarr
    from pairsr.methods import method_class
    from pairsr.tiles import apply_tiled

    try:
        jobs = _read_manifest(manifest, {"zoom": zoom, "max_rotation": max_rotation,
                                         "allow_inversion": allow_inversion, "min_ncc": min_ncc,
                                         "min_peak_ratio": min_peak_ratio})
        for job in jobs:  # every entry checked before the cluster starts
            _check_method(job["method"], job["params"])
            _check_inputs(job["lr"], *job["hr"])
            _check_out(job["out"], overwrite, resume=resume)
        with _client(None, scheduler, cluster, workers, threads_per_worker, memory_limit,
                     jobqueue_config) as client:
            todo = [not (resume and (j["model"] / "model.json").exists()) for j in jobs]
            remote = {}  # job index → future of its fit on a resource-tagged worker
            for i, job in enumerate(jobs):
                needs = method_class(job["method"]).resources
                resources = task_resources(client, needs, gpu) if client and needs else None
                if todo[i] and resources:
                    remote[i] = client.submit(_fit_job, job, overwrite, TASK_THREADS,
                                              resources=resources,
                                              key=f"pairsr-fit-{i}-{job['name']}", pure=False)
            for i, job in enumerate(jobs):
                console.print(f"[bold]{job['name']}[/bold]: {job['method']} → {job['out']}")
                if i in remote:
                    console.print("  waiting for its model (training on a worker offering "
                                  f"{method_class(job['method']).resources})")
                    remote[i].result()
                elif todo[i]:
                    _fit_job(job, overwrite)
                apply_tiled(job["model"], job["lr"], job["out"], tile=job["tile"],
                            blend=job["blend"], client=client if is_zarr(job["lr"]) else None,
                            resume=resume, overwrite=overwrite, gpu=gpu, progress=not _quiet())
    except (ValueError, OSError, RuntimeError, KeyError) as err:
        raise _fail(err) from err


def _fit_job(job: dict, overwrite: bool, threads: int | None = None) -> None:
    """Register a manifest entry's HR scan(s) in its LR (on ``threads`` threads, default every
    CPU: a worker's task passes its share) and fit its model into ``job["model"]``."""
    from pairsr.api import fit

    pairs = [_prepare(job["lr"], hr, zoom=job["zoom"], threads=threads, **job["register"])
             for hr in job["hr"]]
    fit(pairs, job["method"], out=job["model"], overwrite=overwrite, **job["params"])


#: Manifest keys of the registration (``allow_inversion`` true/false, the others numbers).
REGISTER_KEYS = ("zoom", "max_rotation", "allow_inversion", "min_ncc", "min_peak_ratio")


def _read_manifest(path: Path, options: dict | None = None) -> list[dict]:
    """The jobs of a batch manifest, with defaults applied and paths resolved; ``options`` are
    the command line's registration options (see :data:`REGISTER_KEYS`), for pairs whose entry
    and ``[defaults]`` don't set them."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{path}: cannot read the manifest ({err})") from None
    defaults = data.get("defaults", {})
    pairs = data.get("pair", [])
    if not pairs:
        raise ValueError(f"{path}: no [[pair]] entries")
    jobs = []
    for i, entry in enumerate(pairs):
        missing = [k for k in ("lr", "hr", "out") if k not in entry]
        if missing:
            raise ValueError(f"{path}: pair {i + 1} lacks {', '.join(missing)}")
        job = {"name": entry.get("name", f"pair{i + 1}"),
               "method": entry.get("method", defaults.get("method", "lbnlm")),
               "tile": entry.get("tile", defaults.get("tile", 2048)),
               "blend": entry.get("blend", defaults.get("blend", "none")),
               "params": {**defaults.get("params", {}), **entry.get("params", {})}}
        for key in ("lr", "out"):
            job[key] = path.parent / entry[key]
        hrs = entry["hr"] if isinstance(entry["hr"], list) else [entry["hr"]]
        if not hrs or not all(isinstance(hr, str) and hr for hr in hrs):
            raise ValueError(f"{path}: pair {i + 1}: hr = {entry['hr']!r} is not a path or a "
                             "list of paths")
        job["hr"] = [path.parent / hr for hr in hrs]
        job["model"] = path.parent / entry.get("model", f"{entry['out']}.model")
        reg = {k: entry.get(k, defaults.get(k, (options or {}).get(k))) for k in REGISTER_KEYS}
        for key, value in reg.items():
            flag = key == "allow_inversion"
            if value is not None and (isinstance(value, bool) != flag
                                      or not isinstance(value, bool | int | float)):
                raise ValueError(f"{path}: pair {i + 1}: {key} = {value!r} is not "
                                 f"{'true or false' if flag else 'a number'}")
        job["zoom"] = reg.pop("zoom")
        job["register"] = _register_options(reg["max_rotation"],
                                            reg["allow_inversion"] is not False,
                                            reg["min_ncc"], reg["min_peak_ratio"])
        jobs.append(job)
    return jobs


def _method_params(items: list[str] | None) -> dict[str, dict]:
    """``method.key=value`` options → {method: {key: value}}."""
    out: dict[str, dict] = {}
    for key, value in _params(items).items():
        method, sep, name = key.rpartition(".")
        if not sep:
            raise typer.BadParameter(f"expected method.key=value, got {key!r}")
        out.setdefault(method.replace("_", "-"), {})[name] = value
    return out


def _eval_pairs(specs: list[str], local: bool = True, zoom: float | None = None,
                **register_options):
    from pairsr.evaluate import EvalPair
    from pairsr.grid import sr_shape
    from pairsr.io import read_image, to_float32

    sets = [_pair_paths(spec) for spec in specs]
    _check_inputs(*(path for lr, hrs in sets for path in (lr, *hrs)))  # before any registration
    pairs = []
    for spec, (lr, hrs) in zip(specs, sets, strict=True):
        gt = next(iter(sorted(lr.parent.glob("gt.*"))), None) if "," not in spec else None
        name = Path(spec).name if "," not in spec else lr.stem
        prepared = [_prepare(lr, hr, local=local, zoom=zoom, **register_options) for hr in hrs]
        truth = None if gt is None else to_float32(read_image(gt).values)
        grid = sr_shape(prepared[0].field_shape, prepared[0].zoom)
        if truth is not None and truth.shape != grid:
            console.print(f"[yellow]warning:[/yellow] {gt} has shape {truth.shape}, not the ×"
                          f"{prepared[0].zoom} SR grid {grid}: no whole-field scores")
            truth = None
        if len(hrs) == 1:
            pairs.append(EvalPair(name, prepared[0], truth))
        else:  # one field (named by its LR file), several HR scans: one model
            pairs += [EvalPair(f"{name}/{hr.stem}", pair, truth, field_name=str(lr))
                      for hr, pair in zip(hrs, prepared, strict=True)]
    return pairs


def _report(rows: list[dict], crops: dict, out: Path, overwrite: bool) -> None:
    from pairsr.evaluate import markdown, write_panel, write_report

    table = write_report(rows, out, overwrite=overwrite)
    write_panel(crops, out / "panel.png")
    print(markdown(table))
    console.print(f"report in {out} (report.md, rows.csv, summary.csv, report.json, panel.png)")


@app.command("evaluate")
def evaluate_cmd(
    pairs: Annotated[list[str], typer.Argument(help="Pair folders (lr.*, hr.* or several "
                                               "hr1.*, hr2.*, …, optional gt.*) or "
                                               "'LR,HR[,HR2…]'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = "bicubic,lbnlm",
    strategy: Annotated[str, typer.Option(help="self, pooled or both.")] = "self",
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="method.key=value, e.g. -p lbnlm.L=5000.")] = None,
    local: Annotated[bool, typer.Option(help="Use the local displacement field.")] = True,
    zoom: ZoomOption = None,
    max_rotation: MaxRotation = None,
    allow_inversion: Inversion = True,
    min_ncc: MinNcc = None,
    min_peak_ratio: MinPeakRatio = None,
    overwrite: Overwrite = False,
) -> None:
    """Score methods with the paper's 3×4 sub-image protocol (9 train / 3 held out), each pair
    at its zoom (pooled training needs one zoom for all pairs). A field with several HR scans
    splits each footprint 3×4 and self-trains one model on all of them."""
    from pairsr.evaluate import run

    if strategy not in ("self", "pooled", "both"):
        raise _fail(ValueError(f"--strategy must be self, pooled or both, not {strategy!r}"))
    try:
        if (out / "report.md").exists() and not overwrite:
            raise FileExistsError(f"{out}: a report exists there; pass --overwrite")
        crops: dict = {}
        eval_pairs = _eval_pairs(pairs, local, zoom, **_register_options(
            max_rotation, allow_inversion, min_ncc, min_peak_ratio))
        rows = run(eval_pairs, [m.strip() for m in methods.split(",")],
                   strategy=strategy, params=_method_params(param), crops=crops)
        _report(rows, crops, out, overwrite)
    except (ValueError, OSError) as err:
        raise _fail(err) from err


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("demo-output"),
    seed: Annotated[int, typer.Option(help="Simulation seed.")] = 0,
    lr_shape: Annotated[str, typer.Option(help="LR field ROWSxCOLS.")] = "944x1280",
    overwrite: Overwrite = False,
) -> None:
    """Simulate a physical pair, register it, fit paired LB-NLM, super-resolve the whole field,
    and print bicubic vs LB-NLM (held-out sub-images vs HR, whole field vs ground truth)."""
    from pairsr.api import fit, super_resolve
    from pairsr.evaluate import run
    from pairsr.io import OutputExistsError, write_ome_zarr
    from pairsr.region import sr_translation
    from pairsr.simulate import save_pair, simulate_pair

    try:
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise OutputExistsError(f"{out} exists and is not empty; pass --overwrite")
        t0 = time.perf_counter()
        pair = simulate_pair(seed=seed, lr_shape=_shape(lr_shape))
        save_pair(pair, out / "pair", overwrite=overwrite)
        console.print(f"simulated a pair in {out / 'pair'} ({time.perf_counter() - t0:.1f} s)")
        (ep,) = _eval_pairs([str(out / "pair")])
        ep.pair.registration.save(out / "registration.json")
        crops: dict = {}
        rows = run([ep], ["bicubic", "lbnlm"], strategy="self", crops=crops)
        _report(rows, crops, out / "report", overwrite)
        model = fit([ep.pair], "lbnlm", out=out / "model", overwrite=overwrite)
        sr = super_resolve(model, ep.pair.read())
        pixel = pair.truth["lr_pixel_size_nm"]
        write_ome_zarr(out / "sr.zarr", sr, overwrite=overwrite, pixel_size_nm=pixel / model.zoom,
                       translation_nm=sr_translation((0.0, 0.0), pixel, model.zoom))
    except (ValueError, OSError) as err:
        raise _fail(err) from err
    console.print(f"whole-field SR in {out / 'sr.zarr'}; total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    app()
