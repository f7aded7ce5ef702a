"""Python API: numpy or xarray in, xarray out.

>>> pair = prepare_pair(lr, hr)                 # register; LR window, HR on its SR grid
>>> model = fit([pair], method="lbnlm")         # learn LR→HR from the overlap
>>> sr = super_resolve(model, lr)               # xarray.DataArray on the SR grid, in nm
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from pairsr.grid import BICUBIC_HALO, sr_shape
from pairsr.io import from_float32, image_dataarray, to_float32
from pairsr.methods import SRMethod, load_model, method_class, save_model
from pairsr.region import Region, sr_translation

#: A pixel-size ratio within this relative distance of an integer is that integer's zoom.
ZOOM_SNAP = 0.05
#: A given zoom further than this (relative) from the files' pixel-size ratio contradicts them.
ZOOM_CONFLICT = 0.1
#: SR pixels of context a training pair keeps around the HR footprint, besides the bicubic's
#: (:func:`pair_margin`): a fixed extent at the HR's scale, whatever the zoom.
PAIR_CONTEXT_SR = 256


@dataclass
class TrainingPair:
    """A registered pair, cropped to the overlap.

    ``lr``: float32 (h, w), the LR window around the HR footprint plus the methods' context
    (:func:`pair_margin`), at ``region`` (LR px) of the LR field; ``hr``: float32 (zoom·h,
    zoom·w), the HR on the SR grid of that window, NaN where the HR scan does not reach;
    ``registration`` as found (in the field's coordinates). ``source``: the field ``lr`` was cut
    from (an array or a DataArray, lazy for zarr; read by :meth:`read`), or None when ``lr`` is
    the whole field (``region`` then defaults to all of it).
    """

    lr: np.ndarray
    hr: np.ndarray
    registration: object  # pairsr.register.Registration
    region: Region | None = None
    source: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        zoom = self.hr.shape[0] // max(self.lr.shape[0], 1)
        if self.lr.ndim != 2 or zoom < 1 or self.hr.shape != sr_shape(self.lr.shape, zoom):
            raise ValueError(f"hr of shape {self.hr.shape} is not on an integer SR grid of the "
                             f"lr of shape {self.lr.shape}")
        if self.region is None:
            self.region = Region.of(self.lr.shape)
        if self.region.shape != self.lr.shape:
            raise ValueError(f"region {self.region} does not have the lr's shape {self.lr.shape}")

    @property
    def zoom(self) -> int:
        """The SR grid's integer factor (``hr.shape == zoom * lr.shape``)."""
        return self.hr.shape[0] // self.lr.shape[0]

    @property
    def field_shape(self) -> tuple[int, int]:
        """Shape (H, W) of the whole LR field."""
        return tuple(self.source.shape) if self.source is not None else self.region.stop

    def read(self, region: Region | None = None) -> np.ndarray:
        """float32 LR pixels of ``region`` of the field (default: all of it), from ``source``
        (only that region is read) or from ``lr``."""
        region = Region.of(self.field_shape) if region is None else region
        if self.source is not None:
            return _read(self.source, region)
        if region.intersect(self.region) != region:
            raise ValueError(f"{region} is outside the pair's window {self.region} and the pair "
                             "keeps no source to read it from")
        return region.relative_to(self.region).crop(self.lr)


def _read(image: np.ndarray | xr.DataArray, region: Region) -> np.ndarray:
    """float32 pixels of ``region`` of ``image`` (a lazy DataArray computes that region only)."""
    data = image.data if isinstance(image, xr.DataArray) else image
    return to_float32(np.asarray(region.crop(data)))


def pair_margin(zoom: int) -> int:
    """LR pixels of context a training pair keeps around the HR footprint at ×``zoom``:
    :data:`pairsr.grid.BICUBIC_HALO` plus :data:`PAIR_CONTEXT_SR` SR pixels (76 LR px at ×4,
    140 at ×2). It covers the halo of every patch method (LB-NLM, ScSR, SRSW) and of VDSR, EDSR
    and the CPU presets at any zoom, so that training (bicubic of the window) and evaluation
    (predictions with the model's context) see the same pixels as on the whole field; RCAN's
    nominal receptive field (global channel attention) is larger."""
    return BICUBIC_HALO + math.ceil(PAIR_CONTEXT_SR / zoom)


@dataclass(frozen=True)
class Zoom:
    """The zoom of a pair, as :func:`pair_zoom` chose it.

    ``nominal``: HR/LR pixel-density ratio the registration starts from (may be fractional);
    ``sr``: the SR grid's integer factor; ``source``: "metadata", "option" or "default";
    ``metadata``: the LR/HR pixel-size ratio when both files carry a pixel size, else None.
    """

    nominal: float
    sr: int
    source: str
    metadata: float | None = None

    def hint(self) -> str:
        """What to try when the registration fails at this zoom (command-line terms), where the
        zoom is in doubt: assumed, or given against the pixel sizes."""
        if self.source == "default":
            return (f" (zoom {self.nominal:g} assumed: the files do not both carry a pixel "
                    "size; pass --zoom with the LR/HR pixel-size ratio if it differs)")
        if self.source == "option" and self.metadata is not None and _conflicts(self):
            m = self.metadata
            near = _nearest(m) if abs(m / _nearest(m) - 1) <= ZOOM_SNAP else round(m, 2)
            return (f" (the files' pixel sizes give a ratio of {m:.3g}, not the --zoom "
                    f"{self.nominal:g}: try --zoom {near:g}, or leave --zoom out to use them)")
        return ""


def _conflicts(z: Zoom) -> bool:
    return z.metadata is not None and abs(z.nominal / z.metadata - 1) > ZOOM_CONFLICT


def _nearest(zoom: float) -> int:
    """The nearest integer, halves rounded up (an SR grid finer than the HR loses nothing)."""
    return int(np.floor(zoom + 0.5))


def pair_zoom(lr_pixel_nm: float | None, hr_pixel_nm: float | None,
              zoom: float | None = None) -> Zoom:
    """Choose a pair's zoom from the two pixel sizes (nm) and/or a given ``zoom`` (``--zoom``).

    The rule: a given ``zoom`` wins (with a warning when it differs from the pixel-size ratio by
    more than :data:`ZOOM_CONFLICT`: metadata can be wrong, the registration then tells); else the
    ratio LR pixel / HR pixel when both are known (ratios under 1.5 are not a pair's and are
    ignored with a warning); else 2. The registration starts from this nominal value, fractional
    or not. The SR grid's factor is its nearest integer (halves up), with a warning when the
    nominal value is more than :data:`ZOOM_SNAP` from it: the HR is then resampled onto that grid.
    """
    ratio = None
    if lr_pixel_nm and hr_pixel_nm and lr_pixel_nm > 0 and hr_pixel_nm > 0:
        ratio = float(lr_pixel_nm) / float(hr_pixel_nm)
        if ratio < 1.5:
            warnings.warn(f"the pixel sizes (LR {lr_pixel_nm:g} nm, HR {hr_pixel_nm:g} nm) do not "
                          "describe an LR/HR pair; ignoring them (pass --zoom)", stacklevel=2)
            ratio = None
    if zoom is not None:
        if not (np.isfinite(zoom) and zoom >= 1.5):
            raise ValueError(f"--zoom must be an LR/HR pixel-size ratio of at least 1.5, "
                             f"got {zoom}")
        choice = Zoom(float(zoom), _nearest(zoom), "option", ratio)
        if _conflicts(choice):
            warnings.warn(f"--zoom {zoom:g} contradicts the files' pixel sizes (LR {lr_pixel_nm:g} "
                          f"nm / HR {hr_pixel_nm:g} nm = {ratio:.3g}); using --zoom {zoom:g}",
                          stacklevel=2)
    elif ratio is not None:
        choice = Zoom(ratio, _nearest(ratio), "metadata", ratio)
    else:
        choice = Zoom(2.0, 2, "default")
    if abs(choice.nominal / choice.sr - 1) > ZOOM_SNAP:
        warnings.warn(f"the zoom {choice.nominal:.3g} is not close to an integer: the SR output is "
                      f"×{choice.sr} (pass --zoom to choose)", stacklevel=2)
    return choice


def _values(image: np.ndarray | xr.DataArray) -> np.ndarray:
    return np.asarray(image.values if isinstance(image, xr.DataArray) else image)


def _pixel(image: np.ndarray | xr.DataArray) -> float | None:
    return image.attrs.get("pixel_size_nm") if isinstance(image, xr.DataArray) else None


def register_images(lr: np.ndarray | xr.DataArray, hr: np.ndarray | xr.DataArray, *,
                    zoom: float | None = None, local: bool = True,
                    **register_options) -> tuple[object, Zoom]:
    """Register ``hr`` inside ``lr`` at the zoom :func:`pair_zoom` chooses from their
    ``pixel_size_nm`` attributes (DataArrays) and ``zoom``; return the registration and it.

    ``register_options`` go to :func:`pairsr.register.register_pair` (``max_rotation_deg``,
    ``allow_inversion``, ``min_ncc``, ``min_peak_ratio``, …). A registration error gets a hint
    about the zoom appended (:meth:`Zoom.hint`).
    """
    return _register(lr, hr, zoom, local, register_options)


def _data(image: np.ndarray | xr.DataArray):
    """The array of an image as it is (a dask-backed DataArray stays lazy)."""
    return image.data if isinstance(image, xr.DataArray) else image


def _register(lr, hr, zoom: float | None, local: bool, options: dict):
    """The registration and the zoom chosen; lazy (zarr) images are read as the search needs."""
    from pairsr.register import RegistrationError, register_pair

    choice = pair_zoom(_pixel(lr), _pixel(hr), zoom)
    try:
        reg = register_pair(_data(lr), _data(hr), zoom=choice.nominal, local=local, **options)
    except RegistrationError as err:
        raise RegistrationError(f"{err}{choice.hint()}") from None
    return reg, choice


def prepare_pair(lr: np.ndarray | xr.DataArray, hr: np.ndarray | xr.DataArray, *,
                 zoom: float | None = None, local: bool = True, margin: int | None = None,
                 **register_options) -> TrainingPair:
    """Register ``hr`` inside ``lr`` (as :func:`register_images`) and resample it onto the SR
    grid, at the integer zoom chosen (:func:`pair_zoom`; ``TrainingPair.zoom``), of the LR
    window around its footprint plus ``margin`` LR px (default :func:`pair_margin`), clipped
    to the field. Only that window of ``lr`` is kept (and read, for a lazy DataArray)."""
    from pairsr.register import footprint_region, warp_hr_to_sr

    reg, choice = _register(lr, hr, zoom, local, register_options)
    hr_f = to_float32(_values(hr))  # the HR scan is small
    margin = pair_margin(choice.sr) if margin is None else margin
    window = footprint_region(reg).pad(margin, lr.shape)
    if window.empty:
        raise ValueError(f"the registered HR footprint lies outside the LR field {lr.shape}")
    hr_sr = warp_hr_to_sr(hr_f, reg, zoom=choice.sr, local=local, region=window)
    return TrainingPair(_read(lr, window), hr_sr, reg, window, lr)


def _same_field(a: TrainingPair, b: TrainingPair) -> bool:
    """Whether two pairs were cut from one LR field: the same source object, the same file and
    crop (DataArrays from :func:`pairsr.io.read_image`), or equal numpy fields."""
    if a.field_shape != b.field_shape or a.zoom != b.zoom:
        return False
    if a.source is not None and a.source is b.source:
        return True
    attrs = [getattr(p.source, "attrs", {}) for p in (a, b)]
    keys = [(t.get("source"), tuple(t.get("origin_px", ())), t.get("info_bar")) for t in attrs]
    if keys[0][0] is not None or keys[1][0] is not None:
        return keys[0] == keys[1]
    fields = [p.lr if p.source is None else p.source for p in (a, b)]
    if not all(isinstance(f, np.ndarray) for f in fields):
        return False  # lazy arrays of no known file: not compared pixel by pixel
    return fields[0] is fields[1] or np.array_equal(fields[0], fields[1])


def merge_fields(pairs: Sequence[TrainingPair]) -> list[TrainingPair]:
    """One pair per LR field: pairs cut from one field (several HR scans registered in it, see
    :func:`_same_field`) become one pair over the union of their windows (the box holding them
    all), whose HR is the union of their footprints on the SR grid (the mean where footprints
    overlap), with the first one's registration; the others are kept as they are, in order. A
    method then upsamples each field once and samples its patches from every footprint."""
    fields: list[list[TrainingPair]] = []
    for pair in pairs:
        for group in fields:
            if _same_field(group[0], pair):
                group.append(pair)
                break
        else:
            fields.append([pair])
    out = []
    for group in fields:
        first = group[0]
        if len(group) == 1:
            out.append(first)
            continue
        union, zoom = Region.bounding(p.region for p in group), first.zoom
        grid = union.sr(zoom)
        total = np.zeros(grid.shape, np.float32)
        count = np.zeros(grid.shape, np.int32)
        for p in group:
            where = p.region.sr(zoom).relative_to(grid)
            seen = np.isfinite(p.hr)
            where.crop(total)[...] += np.where(seen, p.hr, 0)
            where.crop(count)[...] += seen
        with np.errstate(invalid="ignore", divide="ignore"):
            hr = (total / count).astype(np.float32)
        lr = first.lr if union == first.region else first.read(union)
        out.append(TrainingPair(lr, hr, first.registration, union, first.source))
    return out


def fit(pairs: Sequence[TrainingPair], method: str = "lbnlm", *, out: str | Path | None = None,
        overwrite: bool = False, zoom: int | None = None, uncertainty: bool | None = None,
        **params) -> SRMethod:
    """Fit ``method`` on one pair (self-training) or many (pooled) at the pairs' zoom (``zoom``,
    if given, must agree); save it to ``out`` if given. The model stores the zoom and every
    pair's registration. Pairs of one LR field (several HR scans of it) are fitted as one
    (:func:`merge_fields`). ``uncertainty`` also fits the calibration of its uncertainty map
    (:func:`pairsr.uncertainty.calibrate`: a refit per held-out band); None: when the model is
    saved (``out``) and does not train a network (a network's refit is a training)."""
    zooms = sorted({p.zoom for p in pairs})
    if len(zooms) > 1:
        raise ValueError(f"pairs of different zooms ({', '.join(f'×{z}' for z in zooms)}) cannot "
                         "train one model; fit one model per zoom")
    if zoom is not None and zooms and zoom != zooms[0]:
        raise ValueError(f"zoom {zoom} does not match the pairs' SR grid (×{zooms[0]})")
    cls = method_class(method)
    if getattr(cls, "trains_in_folder", False) and out is not None:
        params.setdefault("folder", out)
    train = [(p.lr, p.hr) for p in merge_fields(pairs)]
    model = cls.fit(train, zoom=zooms[0] if zooms else zoom or 2, **params)
    if uncertainty is None:
        uncertainty = out is not None and method != "bicubic" and not getattr(
            cls, "trains_in_folder", False)
    if uncertainty:
        from pairsr.uncertainty import calibrate

        model.calibration = calibrate(model, train, seed=params.get("seed", 0))
    if out is not None:
        records = [p.registration.to_dict() for p in pairs]
        save_model(model, out, extra={"registrations": records}, overwrite=overwrite)
    return model


def super_resolve(model: SRMethod | str | Path, lr: np.ndarray | xr.DataArray,
                  *, dtype: str | np.dtype | None = None,
                  uncertainty: bool = False) -> xr.DataArray | tuple[xr.DataArray, xr.DataArray]:
    """Super-resolve a whole LR image in memory.

    Returns a DataArray of shape (zoom*H, zoom*W) with dims ("y", "x"), in ``dtype`` (default:
    the input's), named after the input, with SR-grid coordinates in nm when the LR pixel size
    is known (``attrs["pixel_size_nm"]``), else in LR pixel units (``units`` says which). With
    ``uncertainty``, returns ``(sr, uncertainty)``: the model's uncertainty map on the same grid
    (:class:`pairsr.uncertainty.UncertaintyMap`), float32, the expected RMS error against an HR
    scan in the intensity units of ``sr``'s dtype.
    """
    if not isinstance(model, SRMethod):
        model = load_model(model)
    values = _values(lr)
    umap = None
    if uncertainty:
        from pairsr.uncertainty import UncertaintyMap

        umap = UncertaintyMap(model)  # refuses before the SR's work
    lr_f = to_float32(values)
    out_dtype = np.dtype(dtype or values.dtype)
    out = from_float32(model.predict(lr_f), out_dtype)
    attrs = dict(lr.attrs) if isinstance(lr, xr.DataArray) else {}
    pixel = attrs.get("pixel_size_nm")
    step = pixel or 1.0
    origin = sr_translation(attrs.get("translation_nm", (0.0, 0.0)) if pixel else (0.0, 0.0),
                            step, model.zoom)
    attrs.update(method=model.name, zoom=model.zoom, pixel_size_nm=pixel and pixel / model.zoom,
                 translation_nm=origin if pixel else (0.0, 0.0))
    name = f"{lr.name}-sr" if isinstance(lr, xr.DataArray) and lr.name else "sr"
    unit = "nm" if pixel else "LR pixel"
    sr = image_dataarray(out, step / model.zoom, origin, unit=unit, attrs=attrs, name=name)
    if umap is None:
        return sr
    top = float(np.iinfo(out_dtype).max) if out_dtype.kind in "iu" else 1.0
    spread = umap.predict(lr_f) * np.float32(top)
    return sr, image_dataarray(spread, step / model.zoom, origin, unit=unit,
                               attrs={**attrs, "quantity": "expected RMS error"},
                               name=f"{name}-uncertainty")
