"""Command-line interface: a thin layer over the library functions."""

from __future__ import annotations

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
    typer.Option("--crop", help="Keep 'y0:y1,x0:x1' (Python slices), e.g. ':-66,' drops an info bar."),
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


if __name__ == "__main__":
    app()
