"""Python API: numpy or xarray in, xarray out.

>>> pair = prepare_pair(lr, hr)                 # register; HR resampled onto the LR's SR grid
>>> model = fit([pair], method="lbnlm")         # learn LR→HR from the overlap
>>> sr = super_resolve(model, lr)               # xarray.DataArray on the SR grid, in nm
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from pairsr.grid import sr_to_lr
from pairsr.io import from_float32, image_dataarray, to_float32
from pairsr.methods import SRMethod, load_model, method_class, save_model


@dataclass
class TrainingPair:
    """A registered pair: ``lr`` float32 (H, W); ``hr`` float32 (zoom*H, zoom*W) on the SR grid
    of ``lr``, NaN where the HR scan does not reach; ``registration`` as found."""

    lr: np.ndarray
    hr: np.ndarray
    registration: object  # pairsr.register.Registration


def _values(image: np.ndarray | xr.DataArray) -> np.ndarray:
    return np.asarray(image.values if isinstance(image, xr.DataArray) else image)


def prepare_pair(lr: np.ndarray | xr.DataArray, hr: np.ndarray | xr.DataArray, *, zoom: int = 2,
                 local: bool = True, **register_options) -> TrainingPair:
    """Register ``hr`` inside ``lr`` and resample it onto the SR grid of ``lr``."""
    from pairsr.register import register_pair, warp_hr_to_sr

    lr_f, hr_f = to_float32(_values(lr)), to_float32(_values(hr))
    reg = register_pair(lr_f, hr_f, zoom=float(zoom), local=local, **register_options)
    return TrainingPair(lr_f, warp_hr_to_sr(hr_f, reg, lr_f.shape, zoom=zoom, local=local), reg)


def fit(pairs: Sequence[TrainingPair], method: str = "lbnlm", *, out: str | Path | None = None,
        overwrite: bool = False, zoom: int = 2, **params) -> SRMethod:
    """Fit ``method`` on one pair (self-training) or many (pooled); save it to ``out`` if given."""
    cls = method_class(method)
    if getattr(cls, "trains_in_folder", False) and out is not None:
        params.setdefault("folder", out)
    model = cls.fit([(p.lr, p.hr) for p in pairs], zoom=zoom, **params)
    if out is not None:
        records = [p.registration.to_dict() for p in pairs]
        save_model(model, out, extra={"registrations": records}, overwrite=overwrite)
    return model


def super_resolve(model: SRMethod | str | Path, lr: np.ndarray | xr.DataArray,
                  *, dtype: str | np.dtype | None = None) -> xr.DataArray:
    """Super-resolve a whole LR image in memory.

    Returns a DataArray of shape (zoom*H, zoom*W) with dims ("y", "x"), in ``dtype`` (default:
    the input's), named after the input, with SR-grid coordinates in nm when the LR pixel size
    is known (``attrs["pixel_size_nm"]``), else in LR pixel units (``units`` says which).
    """
    if not isinstance(model, SRMethod):
        model = load_model(model)
    values = _values(lr)
    out = model.predict(to_float32(values))
    out = from_float32(out, np.dtype(dtype or values.dtype))
    attrs = dict(lr.attrs) if isinstance(lr, xr.DataArray) else {}
    pixel = attrs.get("pixel_size_nm")
    step = pixel or 1.0
    ty, tx = attrs.get("translation_nm", (0.0, 0.0)) if pixel else (0.0, 0.0)
    first = float(sr_to_lr(0, model.zoom)) * step  # centre of SR pixel 0, from LR pixel 0
    origin = (first + ty, first + tx)
    attrs.update(method=model.name, zoom=model.zoom, pixel_size_nm=pixel and pixel / model.zoom,
                 translation_nm=origin if pixel else (0.0, 0.0))
    name = f"{lr.name}-sr" if isinstance(lr, xr.DataArray) and lr.name else "sr"
    return image_dataarray(out, step / model.zoom, origin, unit="nm" if pixel else "LR pixel",
                           attrs=attrs, name=name)
