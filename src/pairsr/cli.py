"""Command-line interface: a thin layer over the library functions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Super-resolve whole-field EM scans from a physical LR/HR image pair.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
PixelSize = Annotated[
    float | None, typer.Option("--pixel-size", help="Pixel size in nm (overrides metadata).")
]
Crop = Annotated[
    str | None,
    typer.Option("--crop", help="Keep 'y0:y1,x0:x1' (Python slices); ':-66,' drops an info bar."),
]


def _shape(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected ROWSxCOLS, e.g. 944x1280, got {text!r}") from None
    return rows, cols


def _fail(err: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {err}")
    return typer.Exit(code=2)


@app.command()
def simulate(
    outdir: Annotated[Path, typer.Argument(help="Folder for lr.tif, hr.tif, gt.tif, truth.json.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    specimen: Annotated[
        Path | None, typer.Option(help="Real HR micrograph to use as specimen.")
    ] = None,
    crop: Crop = None,
    lr_shape: Annotated[
        str | None, typer.Option(help="LR field ROWSxCOLS (default 944x1280 built-in).")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Simulate a physical LR/HR pair (two independent scans of one specimen)."""
    from pairsr.io import read_image, to_float32
    from pairsr.simulate import save_pair, simulate_pair

    try:
        spec = None
        if specimen is not None:
            spec = to_float32(read_image(specimen, crop=crop).values)
        pair = simulate_pair(spec, lr_shape=_shape(lr_shape), seed=seed)
        save_pair(pair, outdir, overwrite=overwrite)
    except (ValueError, OSError) as err:
        raise _fail(err) from err
    t = pair.truth
    console.print(
        f"wrote {outdir}: LR {pair.lr.shape}, HR {pair.hr.shape}, zoom {t['zoom']:.4f}, "
        f"rotation {t['rotation_deg']:.3f}°"
    )


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Input image (TIFF, PNG, NPY, zarr).")],
    dst: Annotated[Path, typer.Argument(help="Output OME-Zarr folder.")],
    chunk: Annotated[int, typer.Option(help="Chunk edge in pixels.")] = 1024,
    pixel_size: PixelSize = None,
    crop: Crop = None,
    overwrite: Overwrite = False,
) -> None:
    """Convert a (large) image into chunked OME-Zarr without loading it twice."""
    from pairsr.io import convert as convert_image

    try:
        out = convert_image(src, dst, chunk=chunk, pixel_size=pixel_size, crop=crop,
                            overwrite=overwrite)
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


def _pair_paths(spec: str) -> tuple[Path, Path]:
    """A pair: a folder with ``lr.*`` and ``hr.*`` (as ``pairsr simulate`` writes), or ``LR,HR``."""
    if "," in spec:
        lr, hr = spec.split(",", 1)
        return Path(lr), Path(hr)
    folder = Path(spec)
    return _find(folder, "lr"), _find(folder, "hr")


def _prepare(lr_path: Path, hr_path: Path, *, lr_crop=None, hr_crop=None, local=True):
    from pairsr.api import prepare_pair
    from pairsr.io import read_image

    lr = read_image(lr_path, crop=lr_crop)
    hr = read_image(hr_path, crop=hr_crop)
    console.print(f"registering {hr_path.name} inside {lr_path.name} …")
    pair = prepare_pair(lr, hr, local=local)
    r = pair.registration
    console.print(f"  zoom {r.zoom:.4f}, rotation {r.rotation_deg:+.3f}°, NCC {r.ncc:.3f}")
    return pair


Method = Annotated[str, typer.Option("--method", "-m", help="bicubic, lbnlm, lbnlm-original, "
                                     "vdsr, edsr, rcan, scsr, srsw.")]
Param = Annotated[list[str] | None, typer.Option("--param", "-p", help="Method parameter "
                                                 "key=value, e.g. -p sigma=0.05 -p L=5000.")]


@app.command("fit")
def fit_cmd(
    lr: Annotated[Path, typer.Argument(help="LR image of the whole field.")],
    hr: Annotated[Path, typer.Argument(help="HR image of a sub-area.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    method: Method = "lbnlm",
    pair: Annotated[list[str] | None, typer.Option(
        "--pair", help="More pairs for pooled training: 'LR,HR' or a pair folder.")] = None,
    param: Param = None,
    lr_crop: Annotated[str | None, typer.Option(help="Crop of the LR (info bar).")] = None,
    hr_crop: Annotated[str | None, typer.Option(help="Crop of the HR (info bar).")] = None,
    local: Annotated[bool, typer.Option(help="Also fit the local displacement field.")] = True,
    overwrite: Overwrite = False,
) -> None:
    """Register the pair(s) and fit a method on the overlap; write a model folder."""
    from pairsr.api import fit

    try:
        if (out / "model.json").exists() and not overwrite:
            raise FileExistsError(f"{out}: a model exists there; pass --overwrite to replace it")
        pairs = [_prepare(lr, hr, lr_crop=lr_crop, hr_crop=hr_crop, local=local)]
        pairs += [_prepare(*_pair_paths(p), local=local) for p in pair or []]
        t0 = time.perf_counter()
        model = fit(pairs, method, out=out, overwrite=overwrite, **_params(param))
    except (ValueError, OSError, TypeError) as err:
        raise _fail(err) from err
    console.print(f"fitted {model.name} on {len(pairs)} pair(s) in "
                  f"{time.perf_counter() - t0:.1f} s → {out}")


@app.command("apply")
def apply_cmd(
    model: Annotated[str, typer.Argument(help="Model folder, or 'bicubic'.")],
    lr: Annotated[Path, typer.Argument(help="LR image (zarr/OME-Zarr for large fields).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output OME-Zarr.")],
    tile: Annotated[int, typer.Option(help="Tile edge in LR pixels.")] = 1024,
    chunk: Annotated[int, typer.Option(help="Output chunk edge in pixels.")] = 1024,
    pixel_size: PixelSize = None,
    crop: Crop = None,
    overwrite: Overwrite = False,
) -> None:
    """Super-resolve a whole LR field with a fitted model; write OME-Zarr on the SR grid."""
    from pairsr import __version__
    from pairsr.api import super_resolve
    from pairsr.io import OutputExistsError, read_image, write_ome_zarr
    from pairsr.methods import load_model, model_hash

    try:
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
        method = load_model(model)
        image = read_image(lr, pixel_size=pixel_size, crop=crop)
        t0 = time.perf_counter()
        sr = super_resolve(method, image)
        provenance = {"pairsr_version": __version__, "model": str(model),
                      "model_hash": model_hash(model), "method": method.name,
                      "params": method.params, "input": str(lr), "zoom": method.zoom}
        write_ome_zarr(out, sr, chunks=chunk, attrs=provenance, overwrite=overwrite)
    except (ValueError, OSError) as err:
        raise _fail(err) from err
    console.print(f"wrote {out} {sr.shape} in {time.perf_counter() - t0:.1f} s")


def _method_params(items: list[str] | None) -> dict[str, dict]:
    """``method.key=value`` options → {method: {key: value}}."""
    out: dict[str, dict] = {}
    for key, value in _params(items).items():
        method, sep, name = key.rpartition(".")
        if not sep:
            raise typer.BadParameter(f"expected method.key=value, got {key!r}")
        out.setdefault(method.replace("_", "-"), {})[name] = value
    return out


def _eval_pairs(specs: list[str], local: bool = True):
    from pairsr.evaluate import EvalPair
    from pairsr.io import read_image, to_float32

    pairs = []
    for spec in specs:
        lr, hr = _pair_paths(spec)
        gt = next(iter(sorted(lr.parent.glob("gt.*"))), None) if "," not in spec else None
        name = Path(spec).name if "," not in spec else lr.stem
        pairs.append(EvalPair(name, _prepare(lr, hr, local=local),
                              None if gt is None else to_float32(read_image(gt).values)))
    return pairs


def _report(rows: list[dict], crops: dict, out: Path, overwrite: bool) -> None:
    from pairsr.evaluate import markdown, write_panel, write_report

    table = write_report(rows, out, overwrite=overwrite)
    write_panel(crops, out / "panel.png")
    print(markdown(table))
    console.print(f"report in {out} (report.md, rows.csv, summary.csv, report.json, panel.png)")


@app.command("evaluate")
def evaluate_cmd(
    pairs: Annotated[list[str], typer.Argument(help="Pair folders (lr.*, hr.*, optional gt.*) "
                                               "or 'LR,HR'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = "bicubic,lbnlm",
    strategy: Annotated[str, typer.Option(help="self, pooled or both.")] = "self",
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="method.key=value, e.g. -p lbnlm.L=5000.")] = None,
    local: Annotated[bool, typer.Option(help="Use the local displacement field.")] = True,
    overwrite: Overwrite = False,
) -> None:
    """Score methods with the paper's 3×4 sub-image protocol (9 train / 3 held out)."""
    from pairsr.evaluate import run

    if strategy not in ("self", "pooled", "both"):
        raise _fail(ValueError(f"--strategy must be self, pooled or both, not {strategy!r}"))
    try:
        if (out / "report.md").exists() and not overwrite:
            raise FileExistsError(f"{out}: a report exists there; pass --overwrite")
        crops: dict = {}
        rows = run(_eval_pairs(pairs, local), [m.strip() for m in methods.split(",")],
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
        sr = super_resolve(model, ep.pair.lr)
        write_ome_zarr(out / "sr.zarr", sr, overwrite=overwrite,
                       pixel_size_nm=pair.truth["lr_pixel_size_nm"] / 2,
                       translation_nm=(-pair.truth["lr_pixel_size_nm"] / 4,) * 2)
    except (ValueError, OSError) as err:
        raise _fail(err) from err
    console.print(f"whole-field SR in {out / 'sr.zarr'}; total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    app()
