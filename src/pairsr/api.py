"""Python API: numpy or xarray in, xarray out.

>>> pair = prepare_pair(lr, hr)                 # register; HR resampled onto the LR's SR grid
>>> model = fit([pair], method="lbnlm")         # learn LR→HR from the overlap
>>> sr = super_resolve(model, lr)               # xarray.DataArray on the SR grid, in nm
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from pairsr.grid import sr_shape, sr_to_lr
from pairsr.io import from_float32, image_dataarray, to_float32
from pairsr.methods import SRMethod, load_model, method_class, save_model

#: A pixel-size ratio within this relative distance of an integer is that integer's zoom.
ZOOM_SNAP = 0.05
#: A given zoom further than this (relative) from the files' pixel-size ratio contradicts them.
ZOOM_CONFLICT = 0.1


@dataclass
class TrainingPair:
    """A registered pair: ``lr`` float32 (H, W); ``hr`` float32 (zoom*H, zoom*W) on the SR grid
    of ``lr``, NaN where the HR scan does not reach; ``registration`` as found."""

    lr: np.ndarray
    hr: np.ndarray
    registration: object  # pairsr.register.Registration

    def __post_init__(self) -> None:
        zoom = self.hr.shape[0] // max(self.lr.shape[0], 1)
        if self.lr.ndim != 2 or zoom < 1 or self.hr.shape != sr_shape(self.lr.shape, zoom):
            raise ValueError(f"hr of shape {self.hr.shape} is not on an integer SR grid of the "
                             f"lr of shape {self.lr.shape}")

    @property
    def zoom(self) -> int:
        """The SR grid's integer factor (``hr.shape == zoom * lr.shape``)."""
        return self.hr.shape[0] // self.lr.shape[0]


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
    _, _, reg, choice = _register(lr, hr, zoom, local, register_options)
    return reg, choice


def _register(lr, hr, zoom: float | None, local: bool, options: dict):
    """``(lr, hr)`` as float32, the registration and the zoom chosen."""
    from pairsr.register import RegistrationError, register_pair

    choice = pair_zoom(_pixel(lr), _pixel(hr), zoom)
    lr_f, hr_f = to_float32(_values(lr)), to_float32(_values(hr))
    try:
        reg = register_pair(lr_f, hr_f, zoom=choice.nominal, local=local, **options)
    except RegistrationError as err:
        raise RegistrationError(f"{err}{choice.hint()}") from None
    return lr_f, hr_f, reg, choice


def prepare_pair(lr: np.ndarray | xr.DataArray, hr: np.ndarray | xr.DataArray, *,
                 zoom: float | None = None, local: bool = True,
                 **register_options) -> TrainingPair:
    """Register ``hr`` inside ``lr`` (as :func:`register_images`) and resample it onto the SR
    grid of ``lr`` at the integer zoom chosen (:func:`pair_zoom`; ``TrainingPair.zoom``)."""
    from pairsr.register import warp_hr_to_sr

    lr_f, hr_f, reg, choice = _register(lr, hr, zoom, local, register_options)
    return TrainingPair(lr_f, warp_hr_to_sr(hr_f, reg, lr_f.shape, zoom=choice.sr, local=local),
                        reg)


def merge_fields(pairs: Sequence[TrainingPair]) -> list[TrainingPair]:
    """One pair per LR field: pairs whose LR arrays are equal (several HR scans registered in
    one field) become one pair whose HR is the union of their footprints on the SR grid (the
    mean where footprints overlap), with the first one's registration; the others are kept as
    they are, in order. A method then upsamples each field once and samples its patches from
    every footprint."""
    fields: list[tuple[TrainingPair, list[np.ndarray]]] = []
    for pair in pairs:
        for first, hrs in fields:
            if first.lr.shape == pair.lr.shape and first.hr.shape == pair.hr.shape and (
                    first.lr is pair.lr or np.array_equal(first.lr, pair.lr)):
                hrs.append(pair.hr)
                break
        else:
            fields.append((pair, [pair.hr]))
    out = []
    for first, hrs in fields:
        if len(hrs) == 1:
            out.append(first)
            continue
        stack = np.stack(hrs)
        seen = np.isfinite(stack)
        with np.errstate(invalid="ignore", divide="ignore"):
            hr = (np.where(seen, stack, 0).sum(0) / seen.sum(0)).astype(np.float32)
        out.append(TrainingPair(first.lr, hr, first.registration))
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
    ty, tx = attrs.get("translation_nm", (0.0, 0.0)) if pixel else (0.0, 0.0)
    first = float(sr_to_lr(0, model.zoom)) * step  # centre of SR pixel 0, from LR pixel 0
    origin = (first + ty, first + tx)
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
