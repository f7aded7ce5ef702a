"""Image input/output: TIFF/OME-TIFF, PNG, NPY and (OME-)Zarr in and out.

Every image is read as a 2-D :class:`xarray.DataArray` with dims ``("y", "x")``. Its coordinates
are in nanometres when the pixel size is known (``y = row * pixel_size + translation``), else
plain pixel indices; each carries ``units`` and ``long_name``. ``attrs`` holds ``pixel_size_nm``
(float or None), ``translation_nm`` ``(y, x)``, ``origin_px`` (the source row, column of pixel
(0, 0), i.e. the crop offset), ``info_bar`` (the cropped info bar, or None), ``source`` (the
path) and ``dtype`` (the stored dtype's name). Data keep their stored dtype; use
:func:`to_float32` / :func:`from_float32` for the ``[0, 1]`` float32 working scale.

The pixel size comes from, in this order: the ``pixel_size`` argument, the OME-NGFF scale (zarr),
OME-XML ``PhysicalSizeX/Y`` (OME-TIFF), the Zeiss ``CZ_SEM`` tag, JEOL metadata (SEM MakerNote or
``.txt`` sidecar, TEM tags), FEI/Thermo ``FEI_HELIOS``/``FEI_SFEG`` tags, a Hitachi ``.txt``
sidecar, and resolution tags with a real unit (TIFF, ImageJ, PNG ``pHYs``). Resolutions coarser
than :data:`MAX_RESOLUTION_PIXEL_NM` per pixel (72, 96, 300 dpi, ...) are screen or print
settings, not a scan, and are ignored.

Microscope info bars (the text band below the scan) are cropped on reading unless a ``crop`` is
given or ``auto_crop=False``: at the image height the vendor metadata states (JEOL
``$CM_IMAGE_SIZE``, FEI ``[Image] ResolutionY``, Hitachi ``DataSize``), else where
:func:`find_info_bar` finds one in the pixels (Zeiss data zones, other files); an
:class:`InfoBarCropped` warning says what was cropped. Zarr stores are read as they are.

Large images live in OME-Zarr (zarr v3, OME-NGFF 0.5): :func:`create_ome_zarr` makes empty
levels that workers fill region by region, :func:`write_ome_zarr` and :func:`convert` stream a
whole image chunk by chunk with dask, :func:`build_pyramid` fills the 2×2-mean levels and
:func:`set_display_window` the ``omero`` contrast window viewers open with.
"""

from __future__ import annotations

import itertools
import math
import re
import shutil
import warnings
import xml.etree.ElementTree as ET
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
    "InfoBarCropped",
    "MissingPixelSize",
    "OutputExistsError",
    "build_pyramid",
    "convert",
    "create_ome_zarr",
    "find_info_bar",
    "from_float32",
    "image_dataarray",
    "output_format",
    "parse_crop",
    "read_image",
    "set_display_window",
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
#: Output formats by suffix (``.ome.tif`` before ``.tif``).
_WRITE_SUFFIXES = {".ome.tif": "ome-tiff", ".ome.tiff": "ome-tiff", ".tif": "tiff",
                   ".tiff": "tiff", ".png": "png", ".npy": "npy", ".zarr": "zarr"}  # fmt: skip
#: An info bar is at most this fraction of the image height (found in the pixels).
MAX_INFO_BAR_FRACTION = 1 / 6


class ImageError(ValueError):
    """An input image that pairsr cannot use; the message names the file and the problem."""


class OutputExistsError(FileExistsError):
    """An output path exists and ``overwrite`` is False."""


class InfoBarCropped(UserWarning):
    """An info bar was found below the scan and cropped; the message says which rows and why."""


class MissingPixelSize(UserWarning):
    """An image without a pixel size: geometry is written in pixel units."""


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


def _jeol_texts(tif: tifffile.TiffFile, path: Path) -> list[tuple[str, str]]:
    """JEOL SEM metadata texts: (where, text) of the MakerNote and of a ``.txt`` sidecar."""
    texts = []
    exif = tif.pages.first.tags.valueof("ExifTag") or {}
    note = exif.get("MakerNote", b"") if isinstance(exif, dict) else b""
    if isinstance(note, bytes) and b"JEOL" in note.replace(b"\0", b""):
        encoding = "utf-16-le" if note.startswith(b"UNICODE") else "latin-1"  # 8-byte code
        texts.append(("MakerNote", note[8:].decode(encoding, errors="replace")))
    sidecar = path.with_suffix(".txt")
    if sidecar.is_file():
        text = sidecar.read_text(encoding="latin-1")
        if "JEOL" in _jeol_fields(text).get("CM_FORMAT", ""):
            texts.append((sidecar.name, text))
    return texts


def _jeol_pixel_size(tif: tifffile.TiffFile, path: Path) -> float | None:
    """JEOL SEM ``$CM_PIXEL_SIZE`` or micron bar (MakerNote, then ``.txt``); JEOL TEM tags."""
    for where, text in _jeol_texts(tif, path):
        fields = _jeol_fields(text)
        size = re.fullmatch(r"([\d.eE+-]+)\s*(\S+?)/pixel", fields.get("CM_PIXEL_SIZE", ""))
        if size:
            return _to_nm(float(size[1]), size[2], path, f"JEOL {where} CM_PIXEL_SIZE")
        marker = re.fullmatch(r"([\d.]+)\s*(\S+)", fields.get("SM_MICRON_MARKER", ""))
        bar = fields.get("SM_MICRON_BAR", "")
        if marker and bar.isdigit() and int(bar) > 0:
            return _to_nm(float(marker[1]), marker[2], path, f"JEOL {where} micron bar") / int(bar)
    # JEOL TEM cameras: pixel size (x, y) in tags 65009/65010, their unit in 65012/65013.
    tags = tif.pages.first.tags
    if 65027 in tags and 65009 in tags and 65010 in tags and 65012 in tags:
        unit = str(tags.valueof(65012))
        return _square(
            _to_nm(tags.valueof(65010), unit, path, "JEOL tag 65010"),
            _to_nm(tags.valueof(65009), unit, path, "JEOL tag 65009"),
            path,
            "JEOL tags",
        )
    return None


def _fei_pixel_size(tif: tifffile.TiffFile, path: Path) -> float | None:
    """FEI/Thermo SEM and FIB: ``[Scan] PixelWidth/PixelHeight`` (metres) of the FEI tags."""
    scan = (tif.fei_metadata or {}).get("Scan", {})
    width, height = scan.get("PixelWidth"), scan.get("PixelHeight", scan.get("PixelWidth"))
    if not isinstance(width, int | float) or not isinstance(height, int | float) or width <= 0:
        return None
    return _square(height * 1e9, width * 1e9, path, "FEI [Scan] PixelWidth/PixelHeight")


def _hitachi_fields(path: Path) -> dict[str, str]:
    """``key=value`` fields of a Hitachi SEM ``.txt`` sidecar (``[SemImageFile]``), else {}."""
    sidecar = path.with_suffix(".txt")
    if not sidecar.is_file():
        return {}
    text = sidecar.read_text(encoding="latin-1")
    if "[SemImageFile]" not in text:
        return {}
    return {k.strip(): v.strip() for k, v in re.findall(r"^([^=\r\n]+)=([^\r\n]*)", text, re.M)}


def _hitachi_pixel_size(tif: tifffile.TiffFile, path: Path) -> float | None:
    """Hitachi SEM: ``PixelSize`` (nm) of the ``.txt`` sidecar."""
    value = _hitachi_fields(path).get("PixelSize")
    try:
        size = float(value) if value else None
    except ValueError:
        raise ImageError(f"{path}: Hitachi PixelSize {value!r} is not a number") from None
    return None if size is None else _square(size, size, path, "Hitachi PixelSize")


def _ome_pixels(tif: tifffile.TiffFile) -> ET.Element | None:
    """The ``Pixels`` element of the first OME-XML image, or None."""
    if not tif.is_ome or not tif.ome_metadata:
        return None
    root = ET.fromstring(tif.ome_metadata)
    return next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)


def _ome_geometry(tif: tifffile.TiffFile, path: Path) -> tuple[float | None, tuple[float, float]]:
    """Pixel size (``PhysicalSizeX/Y``, default unit µm) and the first plane's position (nm)."""
    pixels = _ome_pixels(tif)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None, (0.0, 0.0)
    a = pixels.attrib

    def length(axis: str) -> float:  # PhysicalSizeY defaults to PhysicalSizeX
        key = f"PhysicalSize{axis}" if f"PhysicalSize{axis}" in a else "PhysicalSizeX"
        return _to_nm(float(a[key]), a.get(f"{key}Unit", "µm"), path, f"OME-XML {key}")

    size = _square(length("Y"), length("X"), path, "OME-XML PhysicalSizeX/Y")
    plane = next((e for e in pixels if e.tag.rsplit("}", 1)[-1] == "Plane"), None)
    position = (0.0, 0.0)
    if plane is not None and {"PositionY", "PositionX"} <= set(plane.keys()):
        try:  # positions in a stage frame without a length unit are not image geometry
            position = tuple(_to_nm(float(plane.get(f"Position{ax}")),
                                    plane.get(f"Position{ax}Unit", "µm"), path, "OME-XML Plane")
                             for ax in "YX")
        except ImageError:
            position = (0.0, 0.0)
    return size, position


def _tiff_image_rows(tif: tifffile.TiffFile, path: Path) -> tuple[int, str] | None:
    """Rows of scan data the vendor metadata states (JEOL, FEI, Hitachi) and where it says so."""
    for where, text in _jeol_texts(tif, path):
        size = re.fullmatch(r"(\d+)\s+(\d+)", _jeol_fields(text).get("CM_IMAGE_SIZE", ""))
        if size:
            return int(size[2]), f"JEOL {where} $CM_IMAGE_SIZE {size[1]} {size[2]}"
    rows = (tif.fei_metadata or {}).get("Image", {}).get("ResolutionY")
    if isinstance(rows, int):
        return rows, f"FEI [Image] ResolutionY={rows}"
    size = re.fullmatch(r"(\d+)\s*[xX*]\s*(\d+)", _hitachi_fields(path).get("DataSize", ""))
    if size:
        return int(size[2]), f"Hitachi {path.with_suffix('.txt').name} DataSize={size[0]}"
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
    _zeiss_pixel_size, _jeol_pixel_size, _fei_pixel_size, _hitachi_pixel_size,
    _resolution_pixel_size)  # fmt: skip


# ----------------------------------------------------------------------------- readers
# Each reader returns the array, a function giving (pixel size in nm or None, translation in
# nm) from the metadata, called only without a pixel_size override, and a function giving the
# rows of scan data the metadata states (None: look for an info bar in the pixels) with where it
# says so. ``lazy`` readers return dask arrays and register what must stay open on ``stack``.

_NO_ROWS = (None, "")


def _read_tiff(path: Path, lazy: bool, stack: ExitStack):
    tif = stack.enter_context(tifffile.TiffFile(path))
    ome = _ome_pixels(tif) is not None
    if ome:  # OME-TIFF: level 0 of the first image (pyramid levels are SubIFDs or extra pages)
        series = tif.series[0]
        if lazy:
            data = da.from_zarr(zarr.open_array(series.aszarr(level=0), mode="r"))
        else:
            data = series.levels[0].asarray()
        axes = series.levels[0].axes
    else:
        if len(tif.pages) != 1:
            raise ImageError(f"{path}: TIFF with {len(tif.pages)} pages; pairsr reads one 2-D "
                             "image")
        page = tif.pages.first
        if not lazy:
            data = page.asarray()  # palette images: the stored indices, not the colours
        elif page.is_memmappable:
            data = da.from_array(tifffile.memmap(path, mode="r"))
        else:
            data = da.from_zarr(zarr.open_array(page.aszarr(), mode="r"))
        axes = page.axes
    if axes.startswith("S"):  # planar (separate) colour samples first
        data = da.moveaxis(data, 0, -1) if lazy else np.moveaxis(data, 0, -1)

    def metadata():
        if ome:
            size, translation = _ome_geometry(tif, path)
            if size is not None:
                return size, translation
        size = next((s for find in _TIFF_PIXEL_SIZE if (s := find(tif, path)) is not None), None)
        return size, (0.0, 0.0)

    def image_rows():
        found = _tiff_image_rows(tif, path)
        if found is not None:
            return found
        return None, "Zeiss data zone" if tif.sem_metadata else ""

    return data, metadata, image_rows


def _read_png(path: Path, lazy: bool, stack: ExitStack):
    with Image.open(path) as img:
        data = np.asarray(img)  # palette images: the stored indices, not the colours
        dpi = img.info.get("dpi")  # only set for a pHYs chunk in pixels per metre
    if dpi is None:
        return data, lambda: (None, (0.0, 0.0)), lambda: _NO_ROWS
    return (data, lambda: (_from_resolution(dpi[1], dpi[0], 2.54e7, path, "PNG pHYs"), (0.0, 0.0)),
            lambda: _NO_ROWS)


def _read_npy(path: Path, lazy: bool, stack: ExitStack):
    data = np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
    return (da.from_array(data) if lazy else data), lambda: (None, (0.0, 0.0)), lambda: _NO_ROWS


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
        return da.from_zarr(array), lambda: (None, (0.0, 0.0)), None
    return da.from_zarr(array), lambda: _ngff_geometry(multiscale, dataset, path), None


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


# ----------------------------------------------------------------------------- info bars


def _row_statistics(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``rows`` (n, w): the fewest distinct values holding 95 % of its pixels, the
    fraction of pixels off its most common value, and its value span (max - min)."""
    levels, off, span = np.empty(len(rows), int), np.empty(len(rows)), np.empty(len(rows))
    for i, row in enumerate(rows):
        _, counts = np.unique(row, return_counts=True)
        counts = np.sort(counts)[::-1]
        levels[i] = np.searchsorted(np.cumsum(counts), 0.95 * row.size) + 1
        off[i] = 1.0 - counts[0] / row.size
    span[:] = rows.max(axis=1).astype(float) - rows.min(axis=1)
    return levels, off, span


def find_info_bar(image: np.ndarray | da.Array) -> int | None:
    """The first row of an info bar at the bottom of a 2-D ``image``, or None if it has none.

    A scan row holds many grey levels; a row of an info bar (text, lines and logos on a flat
    background) holds a few: a row is *bar-like* when 95 % of its pixels take at most 1/8 of the
    levels a typical row of the image's bottom third does. The bar is the run of bar-like rows
    ending at the bottom (a few stray last rows allowed), at least 1 % and at most
    :data:`MAX_INFO_BAR_FRACTION` of the height, with text in it (rows with pixels off the
    background by half the image's contrast, 90 % of them in as few levels as a bar-like row),
    and a sharp boundary (the rows just above look like the image). Images without such a band
    give None. Reads the bottom third in blocks
    (≤ 4096 sampled columns).
    """
    rows, cols = image.shape
    band = rows // 3
    if band < 3:
        return None
    bottom, step = rows - band, max(1, cols // 4096)
    stats = [_row_statistics(np.asarray(image[r : min(r + 256, rows), ::step]))
             for r in range(bottom, rows, 256)]
    levels, off, span = (np.concatenate(parts) for parts in zip(*stats))
    typical = np.percentile(levels, 75)
    barlike = levels <= max(1.0, typical / 8)
    i, tolerance = band - 1, max(1, math.ceil(rows / 200))
    while i >= band - 1 - tolerance and i >= 0 and not barlike[i]:
        i -= 1
    stop = i + 1
    while i >= 0 and barlike[i]:
        i -= 1
    start = i + 1
    if i < 0 or stop - start < max(3, math.ceil(rows / 100)):
        return None
    if rows - (bottom + start) > rows * MAX_INFO_BAR_FRACTION:
        return None
    contrast = np.median(span[:start])
    text = (off[start:stop] >= 0.002) & (span[start:stop] >= contrast / 2)
    above = levels[max(0, start - 3) : start]
    if contrast <= 0 or not text.any() or above.min() < typical / 2:
        return None
    # Glyphs take a few grey levels (anti-aliasing); objects on a flat background take many.
    values, counts = np.unique(np.asarray(image[bottom + start : bottom + stop, ::step]),
                               return_counts=True)
    marks = np.sort(counts[values != values[counts.argmax()]])[::-1]
    if np.searchsorted(np.cumsum(marks), 0.9 * marks.sum()) + 1 > max(2.0, typical / 8):
        return None
    return bottom + start


def _info_bar(data, image_rows) -> dict | None:
    """The info bar to crop: ``{"rows": (start, stop), "found": where}`` or None."""
    if image_rows is None:
        return None
    rows, source = image_rows()
    if rows is not None:
        if not 0 < rows < data.shape[0]:
            return None
        found = source
    else:
        rows = find_info_bar(data)
        if rows is None:
            return None
        found = f"{source} found in the pixels" if source else "found in the pixels"
    return {"rows": (int(rows), int(data.shape[0])), "found": found}


# ----------------------------------------------------------------------------- DataArrays


def image_dataarray(
    data,
    step: float | None,
    origin: tuple[float, float] = (0.0, 0.0),
    *,
    unit: str = "nm",
    attrs: dict | None = None,
    name: str | None = None,
) -> xr.DataArray:
    """A 2-D ``("y", "x")`` DataArray with coordinates ``index * step + origin`` in ``unit``
    (``step`` None: pixel indices plus ``origin``, unit ``"pixel"``), each with ``units`` and
    ``long_name`` so that ``.plot()`` labels its axes."""
    unit = unit if step is not None else "pixel"
    step = 1.0 if step is None else float(step)
    coords = {
        dim: xr.Variable(dim, np.arange(n) * step + t, {"units": unit, "long_name": dim})
        for dim, n, t in zip(("y", "x"), data.shape, origin, strict=True)
    }
    return xr.DataArray(data, dims=("y", "x"), coords=coords, attrs=attrs or {}, name=name)


def _load(path: Path, pixel_size: float | None, crop, lazy: bool, stack: ExitStack,
          auto_crop: bool = True) -> xr.DataArray:
    """Read ``path`` as a checked 2-D DataArray; dask-backed for zarr, and for all if ``lazy``."""
    path = Path(path)
    if pixel_size is not None and not (math.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(f"pixel_size must be a positive number of nm, got {pixel_size!r}")
    kind = _format(path)
    try:
        data, metadata, image_rows = _READERS[kind](path, lazy, stack)
        pixel_size, translation = metadata() if pixel_size is None else (pixel_size, (0.0, 0.0))
    except ImageError:
        raise
    except Exception as err:  # corrupt or truncated files raise many different errors
        raise ImageError(f"{path}: unreadable {kind.upper()} file ({err})") from err
    dtype = data.dtype
    data = _as_2d(data, path)
    origin, bar = (0, 0), None
    if crop is None and auto_crop:
        bar = _info_bar(data, image_rows)
        if bar is not None:
            (start, stop), found = bar["rows"], bar["found"]
            crop = (slice(0, start), slice(None))
            warnings.warn(
                f"{path.name}: cropped an info bar, rows {start}:{stop} ({stop - start} rows, "
                f"{found}); --crop sets another crop, --no-auto-crop keeps it",
                InfoBarCropped, stacklevel=3)
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
    if pixel_size is not None:
        pixel_size = float(pixel_size)
        translation = tuple(t + o * pixel_size for t, o in zip(translation, origin, strict=True))
    else:
        translation = (0.0, 0.0)
    attrs = {
        "pixel_size_nm": pixel_size,
        "translation_nm": translation,
        "origin_px": origin,
        "info_bar": bar,
        "source": str(path),
        "dtype": dtype.name,
    }
    coords_translation = translation if pixel_size is not None else origin
    return image_dataarray(data, pixel_size, coords_translation, attrs=attrs, name=path.name)


def read_image(
    path: str | Path,
    *,
    pixel_size: float | None = None,
    crop: str | tuple[slice, slice] | None = None,
    auto_crop: bool = True,
) -> xr.DataArray:
    """Read one 2-D image as a DataArray with dims ``("y", "x")`` in its stored dtype.

    Parameters
    ----------
    path
        TIFF or OME-TIFF (8/16-bit, float; LZW/deflate; palette TIFFs give their stored
        indices; OME-TIFF: level 0 of the first image), PNG, NPY, or a zarr store: an OME-Zarr
        group (level 0 of its first multiscale, e.g. what :func:`write_image` wrote) or a plain
        array.
    pixel_size
        Pixel size in nm; overrides the file's metadata (the translation is then 0).
    crop
        ``"y0:y1,x0:x1"`` (see :func:`parse_crop`) or two slices, applied before the checks;
        the translation moves with it, so coordinates stay those of the source.
    auto_crop
        Without ``crop``, crop an info bar below the scan (not for zarr stores): at the height
        the vendor metadata gives, else where :func:`find_info_bar` finds one; warns
        :class:`InfoBarCropped` and records it in ``attrs["info_bar"]``.

    Zarr inputs are opened read-only and stay lazy (dask-backed); they are checked for NaN/Inf
    block by block when computed and not for being constant. The others are read into numpy.
    Raises :class:`ImageError` (naming the file) for missing, unreadable or unknown files,
    colour images, stacks, empty, constant or non-finite images and a crop that leaves nothing.
    """
    with ExitStack() as stack:
        return _load(Path(path), pixel_size, crop, lazy=False, stack=stack, auto_crop=auto_crop)


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


def output_format(path: str | Path) -> str:
    """The format an output path asks for by its suffix: ``"ome-tiff"`` (``.ome.tif``,
    ``.ome.tiff``), ``"tiff"`` (``.tif``, ``.tiff``), ``"png"``, ``"npy"`` or ``"zarr"``.

    Any other suffix is a ValueError naming the ones known.
    """
    name = Path(path).name.lower()
    for suffix, kind in _WRITE_SUFFIXES.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return kind
    raise ValueError(f"{path}: unknown output format; name it *.zarr (OME-Zarr), *.ome.tif "
                     "(OME-TIFF), *.tif, *.png or *.npy")


def _stem(path: Path) -> str:
    """The file name without its output suffix (``sr.ome.tif`` → ``sr``)."""
    name = Path(path).name
    suffix = next((x for x in _WRITE_SUFFIXES if name.lower().endswith(x)), "")
    return name[: len(name) - len(suffix)] or name


#: Tile edge (px) of TIFFs streamed from dask arrays.
TIFF_TILE = 512


def _remove(path: Path) -> None:
    """Delete a file or folder of this process's own making (a partial output), if present."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _write_tiff(path: Path, array, pixel_size_nm: float | None, translation_nm=(0.0, 0.0), *,
                ome: bool = False, name: str | None = None,
                progress: Callable[[int, int], None] | None = None) -> None:
    """A zlib TIFF with resolution tags in cm; ``ome``: OME-XML with ``PhysicalSizeX/Y`` and the
    plane position in nm. Dask arrays are streamed in tiles of :data:`TIFF_TILE` (one row of
    tiles in memory at a time)."""
    options: dict[str, Any] = {"photometric": "minisblack", "compression": "zlib"}
    if pixel_size_nm is not None:
        per_cm = 1e7 / pixel_size_nm
        options.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    if ome:
        metadata: dict[str, Any] = {"axes": "YX", "Name": name or _stem(path)}
        if pixel_size_nm is not None:
            (ty, tx), size = translation_nm, float(pixel_size_nm)
            metadata.update(PhysicalSizeX=size, PhysicalSizeXUnit="nm", PhysicalSizeY=size,
                            PhysicalSizeYUnit="nm",
                            Plane={"PositionY": [ty], "PositionYUnit": ["nm"],
                                   "PositionX": [tx], "PositionXUnit": ["nm"]})
        options.update(ome=True, metadata=metadata)
    options["bigtiff"] = array.nbytes > 2**31
    if not isinstance(array, da.Array):
        tifffile.imwrite(path, np.asarray(array), **options)
        return
    t, (rows, cols) = TIFF_TILE, array.shape

    def tiles():
        for start in range(0, rows, t):
            strip = np.asarray(array[start : start + t])
            for c in range(0, cols, t):
                yield strip[:, c : c + t]
            if progress is not None:
                progress(min(start + t, rows), rows)

    tifffile.imwrite(path, tiles(), shape=array.shape, dtype=array.dtype, tile=(t, t), **options)
    if progress is not None:  # tifffile need not resume the generator after the last tile
        progress(rows, rows)


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


def write_image(
    path: str | Path,
    data: np.ndarray | da.Array | xr.DataArray,
    *,
    pixel_size_nm: float | None = None,
    translation_nm: tuple[float, float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a 2-D image in its dtype; the format follows the suffix (:func:`output_format`).

    ``.ome.tif``/``.ome.tiff``: OME-TIFF with ``PhysicalSizeX/Y`` and the plane position
    (``translation_nm``) in nm; ``.tif``/``.tiff``: TIFF with resolution tags in cm (both
    zlib-compressed, dask arrays streamed tile by tile); PNGs must be uint8/uint16 and keep the
    pixel size in ``pHYs``; NPY keeps no pixel size; ``.zarr`` goes to :func:`write_ome_zarr`.
    A DataArray gives its ``pixel_size_nm`` and ``translation_nm`` unless they are passed. All
    are read back by :func:`read_image`. Raises :class:`OutputExistsError` if ``path`` exists
    and not ``overwrite``.
    """
    path = Path(path)
    kind = output_format(path)
    if kind == "zarr":
        return write_ome_zarr(path, data, pixel_size_nm=pixel_size_nm,
                              translation_nm=translation_nm, overwrite=overwrite)
    array, pixel_size_nm, translation_nm = _unwrap(data, pixel_size_nm, translation_nm)
    _claim(path, overwrite)
    if kind in ("tiff", "ome-tiff"):
        _write_tiff(path, array, pixel_size_nm, translation_nm, ome=kind == "ome-tiff")
    elif kind == "png":
        _write_png(path, np.asarray(array), pixel_size_nm)
    else:
        np.save(path, np.asarray(array))  # NPY has no metadata: the pixel size is not stored
    return path


# ----------------------------------------------------------------------------- OME-Zarr


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _multiscale(levels: int, scale: float | None, translation, unit: str | None,
                name: str) -> dict:
    """NGFF 0.5 ``multiscales`` entry: level ``i`` is the ``2**i`` block mean of level 0.

    A level-``i`` pixel centre lies at the mean of the level-0 centres it covers, i.e. shifted
    by ``(2**i - 1)/2`` level-0 pixels.
    """
    step = 1.0 if scale is None else float(scale)
    unit_field = {} if scale is None or unit is None else {"unit": unit}
    datasets = [
        {
            "path": str(i),
            "coordinateTransformations": [
                {"type": "scale", "scale": [step * 2**i] * 2},
                {
                    "type": "translation",
                    "translation": [t + (2**i - 1) * step / 2 for t in translation],
                },
            ],
        }
        for i in range(levels)
    ]
    return {
        "name": name,
        "axes": [{"name": ax, "type": "space", **unit_field} for ax in ("y", "x")],
        "datasets": datasets,
        "type": "mean",
        "metadata": {"description": "2x2 block mean of the previous level, edges replicated"},
    }


def _limits(dtype: np.dtype, sample: np.ndarray | None = None) -> tuple[float, float]:
    """Display limits: the range of an integer dtype; for floats the sample's range (or 0..1)."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if dtype.kind == "b":
        return 0.0, 1.0
    if sample is None or sample.size == 0:
        return 0.0, 1.0
    return float(min(sample.min(), 0.0)), float(max(sample.max(), 1.0))


def _omero(name: str, dtype: np.dtype, window: tuple[float, float],
           limits: tuple[float, float]) -> dict:
    """The ``omero`` block: one grey channel with a contrast window inside its limits."""
    start, end = window
    return {
        "name": name,
        "channels": [{"label": name, "color": "FFFFFF", "active": True, "coefficient": 1.0,
                      "family": "linear", "inverted": False,
                      "window": {"start": start, "end": end, "min": limits[0], "max": limits[1]}}],
        "rdefs": {"model": "greyscale", "defaultZ": 0, "defaultT": 0},
    }


def create_ome_zarr(
    path: str | Path,
    shape: tuple[int, int],
    dtype: Any,
    *,
    chunks: int | tuple[int, int] = (1024, 1024),
    pixel_size_nm: float | None = None,
    translation_nm: tuple[float, float] = (0.0, 0.0),
    unit: str | None = "nanometer",
    name: str | None = None,
    attrs: dict | None = None,
    pyramid_levels: int = 1,
    overwrite: bool = False,
) -> zarr.Group:
    """Create an empty OME-Zarr image (zarr v3, OME-NGFF 0.5) to be filled region by region.

    Level ``"0"`` has ``shape`` (rows, cols); level ``i`` has ``ceil(shape / 2**i)`` and is filled
    by :func:`build_pyramid`. All levels use ``chunks`` (clipped to the level's shape) and the
    fill value 0; write chunk-aligned regions to share level 0 between processes. With a pixel
    size the axes are in ``unit`` (default ``"nanometer"``; None: unit-less, e.g. an SR in LR
    pixels with ``pixel_size_nm=1/zoom``), else the scale is in level-0 pixels. ``name``
    (default: the file name's stem) names the multiscale and the ``omero`` channel, whose
    window is the dtype's range until :func:`set_display_window` sets it from the data.
    ``attrs`` (JSON-serialisable provenance) are stored under the ``"pairsr"`` attribute.
    """
    path = Path(path)
    shape = _pair(shape)
    chunks = _pair(chunks)
    dtype = np.dtype(dtype)
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
    name = name or _stem(path)
    limits = _limits(dtype)
    ome = {
        "version": NGFF_VERSION,
        "multiscales": [_multiscale(pyramid_levels, pixel_size_nm, translation_nm, unit, name)],
        "omero": _omero(name, dtype, limits, limits),
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


def _chunk_sample(array: zarr.Array, chunks: int = 64, pixels: int = 2**20) -> np.ndarray:
    """Values of up to ``chunks`` whole chunks spread over ``array``, thinned to ``pixels``."""
    (cy, cx), (rows, cols) = array.chunks, array.shape
    grid = (-(-rows // cy), -(-cols // cx))
    k = max(1, math.ceil(math.sqrt(grid[0] * grid[1] / chunks)))
    picks = [(i, j) for i in range(0, grid[0], k) for j in range(0, grid[1], k)]
    stride = max(1, math.ceil(math.sqrt(len(picks) * cy * cx / pixels)))
    parts = [np.asarray(array[i * cy : (i + 1) * cy, j * cx : (j + 1) * cx])[::stride, ::stride]
             for i, j in picks]
    return np.concatenate([p.ravel() for p in parts])


def set_display_window(group: zarr.Group, percentiles: tuple[float, float] = (0.1, 99.9)
                       ) -> tuple[float, float]:
    """Set the ``omero`` contrast window of an OME-Zarr image from its data; return it.

    The window spans the ``percentiles`` of a sample of level 0 (at most 64 chunks spread over
    the image are read); the limits are the dtype's range (floats: the sample's, at least 0..1).
    """
    ome = group.attrs["ome"]
    level = group[ome["multiscales"][0]["datasets"][0]["path"]]
    sample = _chunk_sample(level)
    start, end = (float(v) for v in np.percentile(sample, percentiles))
    name = ome["multiscales"][0].get("name", "image")
    group.attrs["ome"] = {**ome, "omero": _omero(name, level.dtype, (start, end),
                                                 _limits(level.dtype, sample))}
    return start, end


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
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a whole 2-D image as OME-Zarr, streaming dask inputs one row of chunks at a time.

    A DataArray gives ``pixel_size_nm`` and ``translation_nm`` from its attrs unless passed.
    ``progress(rows_done, rows)`` is called after each row of chunks. See
    :func:`create_ome_zarr` for the layout and ``name``; the ``omero`` window is set from the
    data.
    """
    array, pixel_size_nm, translation_nm = _unwrap(data, pixel_size_nm, translation_nm)
    group = create_ome_zarr(
        path,
        array.shape,
        array.dtype,
        chunks=chunks,
        pixel_size_nm=pixel_size_nm,
        translation_nm=translation_nm,
        name=name,
        attrs=attrs,
        pyramid_levels=pyramid_levels,
        overwrite=overwrite,
    )
    level0 = group["0"]
    source = array if isinstance(array, da.Array) else da.from_array(array, chunks=level0.chunks)
    source = source.rechunk(level0.chunks)  # one task per zarr chunk: no races
    height = level0.chunks[0]
    for start in range(0, array.shape[0], height):
        stop = min(start + height, array.shape[0])
        da.store(source[start:stop], level0, regions=(slice(start, stop), slice(None)),
                 lock=False)
        if progress is not None:
            progress(stop, array.shape[0])
    build_pyramid(group)
    set_display_window(group)
    return Path(path)


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    chunk: int = 1024,
    pixel_size: float | None = None,
    crop: str | tuple[slice, slice] | None = None,
    auto_crop: bool = True,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Convert an image (typically a large TIFF) without holding it in memory: to chunked
    OME-Zarr (``dst`` ``*.zarr``), OME-TIFF (``*.ome.tif``) or TIFF (``*.tif``).

    TIFFs are streamed through tifffile's memory map (uncompressed) or zarr view (compressed
    strips/tiles); NPY through a memory map. ``pixel_size``, ``crop`` and ``auto_crop`` are as
    in :func:`read_image`; for zarr outputs the source path and crop offset go to the
    ``"pairsr"`` attributes. Colour and NaN/Inf checks run chunk by chunk; ``progress(rows_done,
    rows)`` is called as rows are written. The output is written beside ``dst`` and moved into
    place when complete, so a failed conversion leaves no (partial) output. It runs on local
    threads, also where a ``distributed.Client`` is the default scheduler.
    """
    src, dst = Path(src), Path(dst)
    kind = output_format(dst)
    if kind not in ("zarr", "tiff", "ome-tiff"):
        raise ValueError(f"{dst}: convert writes *.zarr, *.ome.tif or *.tif, not {kind.upper()}")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: convert cannot write over its own source")
    _claim(dst, overwrite, remove=False)
    partial = dst.with_name(f".{dst.name}.partial")
    # The source is open in this process: read it here even if a Client is the default.
    with ExitStack() as stack, dask.config.set(scheduler="threads"):
        image = _load(src, pixel_size, crop, lazy=True, stack=stack, auto_crop=auto_crop)
        provenance = {key: image.attrs[key] for key in ("source", "dtype", "origin_px")}
        _remove(partial)
        try:
            if kind == "zarr":
                write_ome_zarr(partial, image, chunks=chunk, attrs=provenance, overwrite=True,
                               name=_stem(dst), progress=progress)
            else:
                array, pixel, translation = _unwrap(image, None)
                _write_tiff(partial, array, pixel, translation, ome=kind == "ome-tiff",
                            name=_stem(dst), progress=progress)
        except BaseException:
            _remove(partial)
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
