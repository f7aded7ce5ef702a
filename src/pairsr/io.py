"""Image input/output: TIFF, PNG, NPY and (OME-)Zarr in; TIFF, PNG, NPY and OME-Zarr out.

Every image is read as a 2-D :class:`xarray.DataArray` with dims ``("y", "x")``. Its coordinates
are in nanometres when the pixel size is known (``y = row * pixel_size + translation``), else
plain pixel indices; ``attrs`` holds ``pixel_size_nm`` (float or None), ``translation_nm``
``(y, x)``, ``origin_px`` (the source row, column of pixel (0, 0), i.e. the crop offset),
``source`` (the path) and ``dtype`` (the stored dtype's name). Data keep their stored dtype; use
:func:`to_float32` / :func:`from_float32` for the ``[0, 1]`` float32 working scale.

The pixel size comes from, in this order: the ``pixel_size`` argument, the OME-NGFF scale (zarr),
the Zeiss ``CZ_SEM`` tag, JEOL metadata (SEM MakerNote or ``.txt`` sidecar, TEM tags), and
resolution tags with a real unit (TIFF, ImageJ, PNG ``pHYs``). Resolutions coarser than
:data:`MAX_RESOLUTION_PIXEL_NM` per pixel (72, 96, 300 dpi, ...) are screen or print settings,
not a scan, and are ignored.

Large images live in OME-Zarr (zarr v3, OME-NGFF 0.5): :func:`create_ome_zarr` makes empty
levels that workers fill region by region, :func:`write_ome_zarr` and :func:`convert` stream a
whole image chunk by chunk with dask, :func:`build_pyramid` fills the 2×2-mean levels.
"""

from __future__ import annotations

import itertools
import math
import re
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import tifffile
import xarray as xr
import zarr
from PIL import Image
from skimage.util import img_as_float32

__all__ = [
    "ImageError",
    "OutputExistsError",
    "build_pyramid",
    "convert",
    "create_ome_zarr",
    "from_float32",
    "parse_crop",
    "read_image",
    "to_float32",
    "write_image",
    "write_ome_zarr",
]

#: OME-NGFF version written by :func:`create_ome_zarr`.
NGFF_VERSION = "0.5"
#: Resolution tags giving a pixel this large or larger (nm; 10 µm = 2540 dpi) are print settings.
MAX_RESOLUTION_PIXEL_NM = 1e4

# Length units as written by microscopes, TIFF/ImageJ and OME-NGFF (UDUNITS names), in nm.
_NM_PER_UNIT = {
    "pm": 1e-3, "picometer": 1e-3,
    "a": 0.1, "å": 0.1, "angstrom": 0.1,
    "nm": 1.0, "nanometer": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "micrometer": 1e3,
    "mm": 1e6, "millimeter": 1e6,
    "cm": 1e7, "centimeter": 1e7,
    "m": 1e9, "meter": 1e9,
    "inch": 2.54e7,
}  # fmt: skip
_RESUNIT_NM = {
    tifffile.RESUNIT.INCH: 2.54e7,
    tifffile.RESUNIT.CENTIMETER: 1e7,
    tifffile.RESUNIT.MILLIMETER: 1e6,
    tifffile.RESUNIT.MICROMETER: 1e3,
}
_MAGIC = {b"II*\0": "tiff", b"MM\0*": "tiff", b"II+\0": "tiff", b"MM\0+": "tiff",
          b"\x89PNG": "png", b"\x93NUM": "npy"}  # fmt: skip
_WRITE_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".zarr")


class ImageError(ValueError):
    """An input image that pairsr cannot use; the message names the file and the problem."""


class OutputExistsError(FileExistsError):
    """An output path exists and ``overwrite`` is False."""


# ----------------------------------------------------------------------------- crop


def parse_crop(text: str) -> tuple[slice, slice]:
    """Parse ``"y0:y1,x0:x1"`` (Python slice semantics, either part may be empty).

    ``":-64,"`` drops a 64-row info bar at the bottom; ``":690,:"`` keeps rows < 690.
    """
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"crop {text!r}: expected 'y0:y1,x0:x1' (e.g. ':-64,' or ':690,:')")
    slices = []
    for part in parts:
        match = re.fullmatch(r"\s*(?:(-?\d*)\s*:\s*(-?\d*))?\s*", part)
        if match is None:
            raise ValueError(f"crop {text!r}: {part.strip()!r} is not 'start:stop' of integers")
        start, stop = (int(g) if g else None for g in match.groups())
        slices.append(slice(start, stop))
    return slices[0], slices[1]


def _crop_box(crop, shape: tuple[int, int], path: Path) -> tuple[slice, slice]:
    """Resolve ``crop`` (text or slices) against ``shape`` to two step-1 slices with bounds."""
    slices = parse_crop(crop) if isinstance(crop, str) else tuple(crop)
    if len(slices) != 2 or any(s.step not in (None, 1) for s in slices):
        raise ValueError(f"crop {crop!r}: expected two slices (rows, cols) without step")
    box = tuple(slice(*s.indices(n)[:2]) for s, n in zip(slices, shape, strict=True))
    if any(s.stop <= s.start for s in box):
        raise ImageError(f"{path}: crop {crop!r} leaves nothing of the {shape[0]}x{shape[1]} image")
    return box


# ----------------------------------------------------------------------------- pixel size


def _to_nm(value: float, unit: str, path: Path, what: str) -> float:
    factor = _NM_PER_UNIT.get(unit.strip().lower())
    if factor is None:
        raise ImageError(f"{path}: unknown length unit {unit!r} in {what}")
    return float(value) * factor


def _square(size_y: float, size_x: float, path: Path, what: str) -> float:
    """The pixel size (nm) if ``size_y`` ≈ ``size_x``, else an ImageError."""
    if not math.isclose(size_y, size_x, rel_tol=1e-3):
        raise ImageError(
            f"{path}: non-square pixels in {what} ({size_y:g} x {size_x:g} nm); "
            "pass pixel_size to override"
        )
    if not (math.isfinite(size_x) and size_x > 0):
        raise ImageError(f"{path}: invalid pixel size {size_x!r} nm in {what}")
    return size_x


def _from_resolution(
    per_unit_y: float, per_unit_x: float, nm_per_unit: float, path: Path, what: str
) -> float | None:
    """Pixel size (nm) from resolutions in pixels per unit; None for print/screen settings."""
    if per_unit_y <= 0 or per_unit_x <= 0:
        return None
    size = _square(nm_per_unit / per_unit_y, nm_per_unit / per_unit_x, path, what)
    return size if size < MAX_RESOLUTION_PIXEL_NM else None


def _zeiss_pixel_size(tif: tifffile.TiffFile, path: Path) -> float | None:
    """Zeiss SEM: ``ap_image_pixel_size`` (or ``ap_pixel_size``) of the ``CZ_SEM`` tag."""
    sem = tif.sem_metadata or {}
    for key in ("ap_image_pixel_size", "ap_pixel_size"):
        entry = sem.get(key)
        if isinstance(entry, tuple) and len(entry) == 3 and entry[1]:
            size = _to_nm(entry[1], entry[2], path, f"CZ_SEM {key}")
            return _square(size, size, path, "CZ_SEM")
    return None


def _jeol_fields(text: str) -> dict[str, str]:
    """``$KEY=value`` / ``$$KEY value`` fields of JEOL SEM metadata (MakerNote or sidecar)."""
    return {k: v.strip() for k, v in re.findall(r"\$+(\w+)(?:=|[ \t]+)([^\t\r\n]*)", text)}


def _jeol_pixel_size(tif: tifffile.TiffFile, path: Path) -> float | None:
    """JEOL SEM ``$CM_PIXEL_SIZE`` or micron bar (MakerNote, then ``.txt``); JEOL TEM tags."""
    page = tif.pages.first
    texts = []
    exif = page.tags.valueof("ExifTag") or {}
    note = exif.get("MakerNote", b"") if isinstance(exif, dict) else b""
    if isinstance(note, bytes) and b"JEOL" in note.replace(b"\0", b""):
        encoding = "utf-16-le" if note.startswith(b"UNICODE") else "latin-1"  # 8-byte code
        texts.append(("MakerNote", note[8:].decode(encoding, errors="replace")))
    sidecar = path.with_suffix(".txt")
    if sidecar.is_file():
        text = sidecar.read_text(encoding="latin-1")
        if "JEOL" in _jeol_fields(text).get("CM_FORMAT", ""):
            texts.append((sidecar.name, text))
    for where, text in texts:
        fields = _jeol_fields(text)
        size = re.fullmatch(r"([\d.eE+-]+)\s*(\S+?)/pixel", fields.get("CM_PIXEL_SIZE", ""))
        if size:
            return _to_nm(float(size[1]), size[2], path, f"JEOL {where} CM_PIXEL_SIZE")
        marker = re.fullmatch(r"([\d.]+)\s*(\S+)", fields.get("SM_MICRON_MARKER", ""))
        bar = fields.get("SM_MICRON_BAR", "")
        if marker and bar.isdigit() and int(bar) > 0:
            return _to_nm(float(marker[1]), marker[2], path, f"JEOL {where} micron bar") / int(bar)
    # JEOL TEM cameras: pixel size (x, y) in tags 65009/65010, their unit in 65012/65013.
    tags = page.tags
    if 65027 in tags and 65009 in tags and 65010 in tags and 65012 in tags:
        unit = str(tags.valueof(65012))
        return _square(
            _to_nm(tags.valueof(65010), unit, path, "JEOL tag 65010"),
            _to_nm(tags.valueof(65009), unit, path, "JEOL tag 65009"),
            path,
            "JEOL tags",
        )
    return None


def _resolution_pixel_size(tif: tifffile.TiffFile, path: Path) -> float | None:
    """TIFF resolution tags with a real unit, or ImageJ's calibration unit with unit-less tags."""
    page = tif.pages.first
    nm_per_unit = _RESUNIT_NM.get(page.resolutionunit)
    what = "TIFF resolution tags"
    if nm_per_unit is None and tif.is_imagej:
        unit = (tif.imagej_metadata or {}).get("unit")
        if not unit or unit.strip().lower() in ("pixel", "pixels"):
            return None
        nm_per_unit, what = _to_nm(1.0, unit.replace("\\u00B5", "µ"), path, "ImageJ unit"), "ImageJ"
    if nm_per_unit is None:
        return None
    per_unit_x, per_unit_y = page.get_resolution()
    return _from_resolution(per_unit_y, per_unit_x, nm_per_unit, path, what)


_TIFF_PIXEL_SIZE: tuple[Callable[[tifffile.TiffFile, Path], float | None], ...] = (
    _zeiss_pixel_size, _jeol_pixel_size, _resolution_pixel_size)  # fmt: skip


# ----------------------------------------------------------------------------- readers
# Each reader returns the array and a function giving (pixel size in nm or None, translation in
# nm) from the metadata, called only without a pixel_size override. ``lazy`` readers return dask
# arrays and register what must stay open on ``stack``.


def _read_tiff(path: Path, lazy: bool, stack: ExitStack):
    tif = stack.enter_context(tifffile.TiffFile(path))
    if len(tif.pages) != 1:
        raise ImageError(f"{path}: TIFF with {len(tif.pages)} pages; pairsr reads one 2-D image")
    page = tif.pages.first
    if not lazy:
        data = page.asarray()  # palette images: the stored indices, not the colours
    elif page.is_memmappable:
        data = da.from_array(tifffile.memmap(path, mode="r"))
    else:
        data = da.from_zarr(zarr.open_array(page.aszarr(), mode="r"))
    if page.axes.startswith("S"):  # planar (separate) colour samples first
        data = da.moveaxis(data, 0, -1) if lazy else np.moveaxis(data, 0, -1)

    def metadata():
        size = next((s for find in _TIFF_PIXEL_SIZE if (s := find(tif, path)) is not None), None)
        return size, (0.0, 0.0)

    return data, metadata


def _read_png(path: Path, lazy: bool, stack: ExitStack):
    with Image.open(path) as img:
        data = np.asarray(img)  # palette images: the stored indices, not the colours
        dpi = img.info.get("dpi")  # only set for a pHYs chunk in pixels per metre
    if dpi is None:
        return data, lambda: (None, (0.0, 0.0))
    return data, lambda: (_from_resolution(dpi[1], dpi[0], 2.54e7, path, "PNG pHYs"), (0.0, 0.0))


def _read_npy(path: Path, lazy: bool, stack: ExitStack):
    data = np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
    return (da.from_array(data) if lazy else data), lambda: (None, (0.0, 0.0))


def _ngff_transform(multiscale: dict, dataset: dict, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis (scale, translation) of ``dataset`` composed with the multiscale-level ones."""
    ndim = len(multiscale["axes"])
    scale, translation = np.ones(ndim), np.zeros(ndim)
    for transform in dataset.get("coordinateTransformations", []) + multiscale.get(
        "coordinateTransformations", []
    ):
        kind = transform.get("type")
        if kind == "scale" and "scale" in transform:
            scale, translation = scale * transform["scale"], translation * transform["scale"]
        elif kind == "translation" and "translation" in transform:
            translation = translation + transform["translation"]
        elif kind != "identity":
            raise ImageError(f"{path}: unsupported OME-NGFF coordinate transformation {transform}")
    return scale, translation


def _ngff_geometry(multiscale: dict, dataset: dict, path: Path):
    """(pixel size, translation) in nm of an NGFF dataset; (None, (0, 0)) without a unit."""
    scale, translation = _ngff_transform(multiscale, dataset, path)
    axes = multiscale["axes"]
    if [ax.get("type") for ax in axes[-2:]] != ["space", "space"]:
        raise ImageError(f"{path}: the last two OME-NGFF axes are not spatial: {axes}")
    units = {ax.get("unit") for ax in axes[-2:]}
    if units == {None}:  # no unit: the scale is in unknown units
        return None, (0.0, 0.0)
    if len(units) != 1:
        raise ImageError(f"{path}: y and x axes have different units {sorted(map(str, units))}")
    nm = _to_nm(1.0, units.pop(), path, "OME-NGFF axes")
    size = _square(scale[-2] * nm, scale[-1] * nm, path, "OME-NGFF scale")
    return size, (float(translation[-2] * nm), float(translation[-1] * nm))


def _level0(path: Path) -> tuple[zarr.Array, dict | None, dict | None]:
    """Level-0 array of a zarr store (read-only) and, for OME-Zarr, its multiscale and dataset."""
    node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Array):
        return node, None, None
    attrs = node.attrs.asdict()
    multiscales = attrs.get("ome", attrs).get("multiscales")  # NGFF 0.5 nests under "ome"
    if not multiscales:
        raise ImageError(f"{path}: zarr group without OME-NGFF multiscales metadata")
    dataset = multiscales[0]["datasets"][0]
    return node[dataset["path"]], multiscales[0], dataset


def open_level0(path: str | Path) -> zarr.Array:
    """The full-resolution array of a zarr store (plain array or OME-Zarr level 0), read-only."""
    return _level0(Path(path))[0]


def is_zarr(path: str | Path) -> bool:
    """Whether ``path`` is a zarr store (v2 or v3)."""
    path = Path(path)
    return path.is_dir() and any((path / n).is_file() for n in ("zarr.json", ".zgroup", ".zarray"))


def _read_zarr(path: Path, lazy: bool, stack: ExitStack):
    array, multiscale, dataset = _level0(path)
    if multiscale is None:
        return da.from_zarr(array), lambda: (None, (0.0, 0.0))
    return da.from_zarr(array), lambda: _ngff_geometry(multiscale, dataset, path)


_READERS = {"tiff": _read_tiff, "png": _read_png, "npy": _read_npy, "zarr": _read_zarr}


def _format(path: Path) -> str:
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        if is_zarr(path):
            return "zarr"
        raise ImageError(f"{path}: a directory that is not a zarr store")
    with path.open("rb") as file:
        kind = _MAGIC.get(file.read(4))
    if kind is None:
        raise ImageError(f"{path}: unknown image format (pairsr reads TIFF, PNG, NPY and zarr)")
    return kind


# ----------------------------------------------------------------------------- checks


def _grey(samples: np.ndarray, path: Path) -> np.ndarray:
    """``(..., C)`` grey RGB(A) / grey+alpha samples → ``(...)``; alpha is ignored."""
    colour = samples[..., :3] if samples.shape[-1] >= 3 else samples[..., :1]
    if not (colour == colour[..., :1]).all():
        raise ImageError(f"{path}: a colour image (its channels differ); pairsr needs greyscale")
    return colour[..., 0]


def _finite(block: np.ndarray, path: Path) -> np.ndarray:
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        bad = block.size - np.count_nonzero(np.isfinite(block))
        raise ImageError(f"{path}: {bad} NaN/Inf pixel values")
    return block


def _as_2d(data, path: Path):
    """Squeeze singleton axes, reduce grey colour samples, and check for one 2-D image."""
    if data.size == 0:
        raise ImageError(f"{path}: empty image (shape {data.shape})")
    if data.dtype.kind not in "biuf":
        raise ImageError(f"{path}: unsupported pixel type {data.dtype} (need integers or floats)")
    singletons = [axis for axis, n in enumerate(data.shape) if n == 1][: max(data.ndim - 2, 0)]
    data = data.squeeze(axis=tuple(singletons)) if singletons else data
    if data.ndim == 3 and data.shape[-1] in (2, 3, 4):
        if isinstance(data, da.Array):  # checked block by block when computed
            data = data.rechunk({2: -1}).map_blocks(_grey, path, drop_axis=2, dtype=data.dtype)
        else:
            data = _grey(data, path)
    if data.ndim != 2:
        raise ImageError(
            f"{path}: {data.ndim}-D data of shape {data.shape}; pairsr reads one 2-D image "
            "(no stacks, volumes or channels)"
        )
    return data


def _load(path: Path, pixel_size: float | None, crop, lazy: bool, stack: ExitStack) -> xr.DataArray:
    """Read ``path`` as a checked 2-D DataArray; dask-backed for zarr, and for all if ``lazy``."""
    path = Path(path)
    if pixel_size is not None and not (math.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(f"pixel_size must be a positive number of nm, got {pixel_size!r}")
    kind = _format(path)
    try:
        data, metadata = _READERS[kind](path, lazy, stack)
        pixel_size, translation = metadata() if pixel_size is None else (pixel_size, (0.0, 0.0))
    except ImageError:
        raise
    except Exception as err:  # corrupt or truncated files raise many different errors
        raise ImageError(f"{path}: unreadable {kind.upper()} file ({err})") from err
    dtype = data.dtype
    data = _as_2d(data, path)
    origin = (0, 0)
    if crop is not None:
        box = _crop_box(crop, data.shape, path)
        data, origin = data[box], (box[0].start, box[1].start)
    if isinstance(data, da.Array):
        if dtype.kind == "f":  # checked block by block when computed
            data = data.map_blocks(_finite, path, dtype=data.dtype)
    else:
        _finite(data, path)
        if data.min() == data.max():
            raise ImageError(f"{path}: constant image (every pixel is {data.flat[0]})")
    if pixel_size is None:
        step, translation = 1.0, (0.0, 0.0)
    else:
        pixel_size = step = float(pixel_size)
        translation = tuple(t + o * step for t, o in zip(translation, origin, strict=True))
    coords = {
        dim: np.arange(n) * step + t
        for dim, n, t in zip(("y", "x"), data.shape, translation, strict=True)
    }
    attrs = {
        "pixel_size_nm": pixel_size,
        "translation_nm": translation,
        "origin_px": origin,
        "source": str(path),
        "dtype": dtype.name,
    }
    return xr.DataArray(data, dims=("y", "x"), coords=coords, attrs=attrs, name=path.name)


def read_image(
    path: str | Path,
    *,
    pixel_size: float | None = None,
    crop: str | tuple[slice, slice] | None = None,
) -> xr.DataArray:
    """Read one 2-D image as a DataArray with dims ``("y", "x")`` in its stored dtype.

    Parameters
    ----------
    path
        TIFF (8/16-bit, float; LZW/deflate; palette TIFFs give their stored indices), PNG, NPY,
        or a zarr store: an OME-Zarr group (level 0 of its first multiscale) or a plain array.
    pixel_size
        Pixel size in nm; overrides the file's metadata (the translation is then 0).
    crop
        ``"y0:y1,x0:x1"`` (see :func:`parse_crop`) or two slices, applied before the checks;
        the translation moves with it, so coordinates stay those of the source.

    Zarr inputs are opened read-only and stay lazy (dask-backed); they are checked for NaN/Inf
    block by block when computed and not for being constant. The others are read into numpy.
    Raises :class:`ImageError` (naming the file) for missing, unreadable or unknown files,
    colour images, stacks, empty, constant or non-finite images and a crop that leaves nothing.
    """
    with ExitStack() as stack:
        return _load(Path(path), pixel_size, crop, lazy=False, stack=stack)


# ----------------------------------------------------------------------------- writers


def _unwrap(data, pixel_size_nm: float | None, translation_nm=None):
    """(array, pixel size, translation) of a numpy/dask array or a DataArray (from its attrs)."""
    if isinstance(data, xr.DataArray):
        attrs = data.attrs
        pixel_size_nm = attrs.get("pixel_size_nm") if pixel_size_nm is None else pixel_size_nm
        if translation_nm is None and pixel_size_nm is not None:
            translation_nm = attrs.get("translation_nm")
        data = data.data
    array = data if isinstance(data, da.Array) else np.asarray(data)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {array.shape}")
    return array, pixel_size_nm, tuple(map(float, translation_nm or (0.0, 0.0)))


def _claim(path: Path, overwrite: bool, *, remove: bool = True) -> None:
    """Refuse an existing ``path`` unless ``overwrite``, then (if ``remove``) delete it.

    Only files and zarr stores are replaced, never other directories.
    """
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it")
    if path.is_dir() and not path.is_symlink():
        if not any((path / name).exists() for name in ("zarr.json", ".zgroup", ".zarray")):
            raise OutputExistsError(f"{path} is a directory but not a zarr store; not replacing it")
        if remove:
            shutil.rmtree(path)
    elif remove:
        path.unlink()


def _write_tiff(path: Path, array: np.ndarray, pixel_size_nm: float | None) -> None:
    resolution = {}
    if pixel_size_nm is not None:
        per_cm = 1e7 / pixel_size_nm
        resolution = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, array, photometric="minisblack", compression="zlib", **resolution)


def _write_png(path: Path, array: np.ndarray, pixel_size_nm: float | None) -> None:
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"{path}: PNG stores uint8 or uint16, not {array.dtype}; "
            "use from_float32 or write a TIFF"
        )
    options = {}
    if pixel_size_nm is not None:
        if 1e9 / pixel_size_nm > 2**32 - 1:  # pHYs holds pixels per metre in 32 bits
            raise ValueError(f"{path}: PNG cannot store a {pixel_size_nm} nm pixel; write a TIFF")
        options["dpi"] = (2.54e7 / pixel_size_nm,) * 2
    Image.fromarray(array).save(path, **options)


def _write_npy(path: Path, array: np.ndarray, pixel_size_nm: float | None) -> None:
    np.save(path, array)  # NPY has no metadata: the pixel size is not stored


_WRITERS = {".tif": _write_tiff, ".tiff": _write_tiff, ".png": _write_png, ".npy": _write_npy}


def write_image(
    path: str | Path,
    data: np.ndarray | xr.DataArray,
    *,
    pixel_size_nm: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a 2-D image in its dtype; the format follows the suffix (.tif/.tiff/.png/.npy/.zarr).

    TIFFs are zlib-compressed with resolution tags in cm (read back by :func:`read_image`); PNGs
    must be uint8/uint16 and keep the pixel size in ``pHYs``; NPY keeps no pixel size; ``.zarr``
    goes to :func:`write_ome_zarr`. A DataArray gives its ``pixel_size_nm`` (and, for zarr,
    ``translation_nm``) unless ``pixel_size_nm`` is passed. Raises :class:`OutputExistsError`
    if ``path`` exists and not ``overwrite``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITE_SUFFIXES:
        raise ValueError(f"{path}: unknown output format {suffix!r}; use one of {_WRITE_SUFFIXES}")
    if suffix == ".zarr":
        return write_ome_zarr(path, data, pixel_size_nm=pixel_size_nm, overwrite=overwrite)
    array, pixel_size_nm, _ = _unwrap(data, pixel_size_nm)
    _claim(path, overwrite)
    _WRITERS[suffix](path, np.asarray(array), pixel_size_nm)
    return path


# ----------------------------------------------------------------------------- OME-Zarr


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _multiscale(levels: int, pixel_size_nm: float | None, translation_nm) -> dict:
    """NGFF 0.5 ``multiscales`` entry: level ``i`` is the ``2**i`` block mean of level 0.

    A level-``i`` pixel centre lies at the mean of the level-0 centres it covers, i.e. shifted
    by ``(2**i - 1)/2`` level-0 pixels.
    """
    step = 1.0 if pixel_size_nm is None else float(pixel_size_nm)
    unit = {} if pixel_size_nm is None else {"unit": "nanometer"}
    datasets = [
        {
            "path": str(i),
            "coordinateTransformations": [
                {"type": "scale", "scale": [step * 2**i] * 2},
                {
                    "type": "translation",
                    "translation": [t + (2**i - 1) * step / 2 for t in translation_nm],
                },
            ],
        }
        for i in range(levels)
    ]
    return {
        "axes": [{"name": ax, "type": "space", **unit} for ax in ("y", "x")],
        "datasets": datasets,
        "type": "mean",
        "metadata": {"description": "2x2 block mean of the previous level, edges replicated"},
    }


def create_ome_zarr(
    path: str | Path,
    shape: tuple[int, int],
    dtype: Any,
    *,
    chunks: int | tuple[int, int] = (1024, 1024),
    pixel_size_nm: float | None = None,
    translation_nm: tuple[float, float] = (0.0, 0.0),
    attrs: dict | None = None,
    pyramid_levels: int = 1,
    overwrite: bool = False,
) -> zarr.Group:
    """Create an empty OME-Zarr image (zarr v3, OME-NGFF 0.5) to be filled region by region.

    Level ``"0"`` has ``shape`` (rows, cols); level ``i`` has ``ceil(shape / 2**i)`` and is filled
    by :func:`build_pyramid`. All levels use ``chunks`` (clipped to the level's shape) and the
    fill value 0; write chunk-aligned regions to share level 0 between processes. With a pixel
    size the axes are in ``"nanometer"``, else the scale is in level-0 pixels. ``attrs``
    (JSON-serialisable provenance) are stored under the ``"pairsr"`` attribute.
    """
    path = Path(path)
    shape = _pair(shape)
    chunks = _pair(chunks)
    if min(shape) < 1 or min(chunks) < 1 or pyramid_levels < 1:
        raise ValueError(
            f"{path}: need positive shape {shape}, chunks {chunks} and "
            f"pyramid_levels {pyramid_levels}"
        )
    if pixel_size_nm is not None and not (math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise ValueError(f"{path}: pixel_size_nm must be a positive number, got {pixel_size_nm!r}")
    if pixel_size_nm is None and any(translation_nm):
        raise ValueError(f"{path}: translation_nm {translation_nm} needs pixel_size_nm")
    _claim(path, overwrite)
    ome = {
        "version": NGFF_VERSION,
        "multiscales": [_multiscale(pyramid_levels, pixel_size_nm, translation_nm)],
    }
    group = zarr.create_group(path, zarr_format=3, attributes={"ome": ome, "pairsr": attrs or {}})
    for level in range(pyramid_levels):
        level_shape = tuple(-(-n // 2**level) for n in shape)
        group.create_array(
            str(level),
            shape=level_shape,
            dtype=dtype,
            chunks=tuple(min(c, n) for c, n in zip(chunks, level_shape, strict=True)),
            fill_value=0,
            dimension_names=("y", "x"),
        )
    return group


def _downsample(level: da.Array, chunks: tuple[int, int]) -> da.Array:
    """2×2 block mean (odd edges replicated) in ``level``'s dtype, with chunks ``chunks``."""
    double = tuple(2 * c for c in chunks)
    x = level.rechunk(double)
    if level.shape[0] % 2 or level.shape[1] % 2:
        x = da.pad(x, [(0, n % 2) for n in level.shape], mode="edge").rechunk(double)
    mean = da.coarsen(np.mean, x, {0: 2, 1: 2})
    if level.dtype.kind in "biu":
        mean = da.round(mean)
    return mean.astype(level.dtype)


def build_pyramid(group: zarr.Group) -> None:
    """Fill levels ≥ 1 of an OME-Zarr image from level 0 by repeated 2×2 means, chunk-wise."""
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    for previous, current in itertools.pairwise(datasets):
        target = group[current["path"]]
        _downsample(da.from_zarr(group[previous["path"]]), target.chunks).store(target, lock=False)


def write_ome_zarr(
    path: str | Path,
    data: np.ndarray | da.Array | xr.DataArray,
    *,
    chunks: int | tuple[int, int] = 1024,
    pixel_size_nm: float | None = None,
    translation_nm: tuple[float, float] | None = None,
    attrs: dict | None = None,
    pyramid_levels: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write a whole 2-D image as OME-Zarr, streaming dask inputs chunk by chunk.

    A DataArray gives ``pixel_size_nm`` and ``translation_nm`` from its attrs unless passed.
    See :func:`create_ome_zarr` for the layout.
    """
    array, pixel_size_nm, translation_nm = _unwrap(data, pixel_size_nm, translation_nm)
    group = create_ome_zarr(
        path,
        array.shape,
        array.dtype,
        chunks=chunks,
        pixel_size_nm=pixel_size_nm,
        translation_nm=translation_nm,
        attrs=attrs,
        pyramid_levels=pyramid_levels,
        overwrite=overwrite,
    )
    level0 = group["0"]
    source = array if isinstance(array, da.Array) else da.from_array(array, chunks=level0.chunks)
    source.rechunk(level0.chunks).store(level0, lock=False)  # one task per zarr chunk: no races
    build_pyramid(group)
    return Path(path)


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    chunk: int = 1024,
    pixel_size: float | None = None,
    crop: str | tuple[slice, slice] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an image (typically a large TIFF) to chunked OME-Zarr without holding it in memory.

    TIFFs are streamed through tifffile's memory map (uncompressed) or zarr view (compressed
    strips/tiles); NPY through a memory map. ``pixel_size`` and ``crop`` are as in
    :func:`read_image`; the source path and crop offset go to the ``"pairsr"`` attributes.
    Colour and NaN/Inf checks run chunk by chunk. The store is written beside ``dst`` and moved
    into place when complete, so a failed conversion leaves no (partial) output. It runs on
    local threads, also where a ``distributed.Client`` is the default scheduler.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: convert cannot write over its own source")
    _claim(dst, overwrite, remove=False)
    partial = dst.with_name(f".{dst.name}.partial")
    with ExitStack() as stack:
        image = _load(src, pixel_size, crop, lazy=True, stack=stack)
        provenance = {key: image.attrs[key] for key in ("source", "dtype", "origin_px")}
        try:  # the source is open in this process: read it here even if a Client is default
            with dask.config.set(scheduler="threads"):
                write_ome_zarr(partial, image, chunks=chunk, attrs=provenance, overwrite=True)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    _claim(dst, overwrite)
    partial.rename(dst)
    return dst


# ----------------------------------------------------------------------------- intensities


def to_float32(data: np.ndarray | xr.DataArray) -> np.ndarray:
    """Float32 intensities: integers scaled by their dtype to ``[0, 1]`` (signed: ``[-1, 1]``).

    ``skimage.util.img_as_float32`` semantics; floats are only cast. Computes dask-backed data.
    """
    return img_as_float32(np.asarray(data))


def from_float32(x: np.ndarray, dtype: Any) -> np.ndarray:
    """Inverse of :func:`to_float32`: clip to ``[0, 1]`` (``[-1, 1]`` signed), scale and round.

    Float dtypes are only cast; bool is ``x >= 0.5``.
    """
    dtype = np.dtype(dtype)
    x = np.asarray(x)
    if dtype.kind == "f":
        return x.astype(dtype)
    if dtype.kind == "b":
        return x >= 0.5
    if dtype.kind not in "iu":
        raise ValueError(f"from_float32: unsupported dtype {dtype}")
    top = np.iinfo(dtype).max
    # float32 holds every level of a ≤ 16-bit type exactly and rounds x·top within 0.004.
    scaled = x.astype(np.float32 if top < 2**24 else np.float64)
    np.clip(scaled, -1.0 if dtype.kind == "i" else 0.0, 1.0, out=scaled)
    scaled *= top
    return np.rint(scaled, out=scaled).astype(dtype)
