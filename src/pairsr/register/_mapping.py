"""The registration record: the HR→LR mapping, its local field, and warping by it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from pairsr.grid import interpolate, lr_to_sr, sr_shape, sr_to_lr
from pairsr.register._images import _as_image


class RegistrationError(ValueError):
    """The pair cannot be registered reliably; the message says why and what to change."""


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def _zoom(matrix: np.ndarray) -> float:
    """HR/LR pixel-density ratio of an HR→LR matrix."""
    return float(1.0 / np.sqrt(abs(np.linalg.det(matrix))))


def _apply(matrix: np.ndarray, offset: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``matrix @ coords + offset`` for coordinates of shape (2, ...)."""
    coords = np.asarray(coords, dtype=float)
    return np.tensordot(matrix, coords, axes=1) + offset.reshape(2, *([1] * (coords.ndim - 1)))


@dataclass
class Registration:
    """HR→LR mapping of a registered pair: ``lr = matrix @ (hr + disp(hr)) + offset``.

    Attributes
    ----------
    matrix, offset
        Global affine (2, 2) and (2,), HR→LR pixel coordinates; with a local field it is the
        least-squares affine of the whole correspondence and ``disp`` has no affine part.
    lr_shape, hr_shape
        Shapes of the registered images.
    ncc, peak_ratio
        Peak normalised cross-correlation of the coarse search (both images smoothed to the coarse
        scale) and its ratio to the second-best peak: the evidence that the HR is in the LR.
    fit_ncc
        NCC of the LR against the HR blurred to the LR resolution at the fitted mapping.
    corner_sd
        Predicted RMS error of the HR image's corners in the LR (LR px) of the global fit: its
        parameters' covariance (Gauss-Newton normal matrix and residuals) propagated to them.
    blur_sigma
        Gaussian σ (HR pixels) that brings the HR image to the LR resolution.
    inverted
        The HR contrast was found inverted with respect to the LR (accepted with a warning
        under ``allow_inversion=True``); the mapping holds for the HR as acquired.
    patches_tried, patches_accepted
        Textured patches searched by the local step, and those that passed every test.
    disp
        Local displacement field, float32 (2, h, w) in HR pixels, or None.
    """

    matrix: np.ndarray
    offset: np.ndarray
    lr_shape: tuple[int, int]
    hr_shape: tuple[int, int]
    ncc: float = float("nan")
    peak_ratio: float = float("nan")
    significance: float = float("nan")
    fit_ncc: float = float("nan")
    corner_sd: float = float("nan")
    blur_sigma: float = 0.0
    inverted: bool = False
    patches_tried: int = 0
    patches_accepted: int = 0
    disp: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=float).reshape(2, 2)
        self.offset = np.asarray(self.offset, dtype=float).reshape(2)
        self.lr_shape = tuple(int(n) for n in self.lr_shape)
        self.hr_shape = tuple(int(n) for n in self.hr_shape)
        if self.disp is not None:
            self.disp = np.asarray(self.disp, dtype=np.float32)
            if self.disp.shape != (2, *self.hr_shape):
                raise ValueError(
                    f"disp must have shape (2, *hr_shape) = {(2, *self.hr_shape)}, "
                    f"got {self.disp.shape}"
                )

    @property
    def rms_displacement(self) -> float:
        """RMS length of the local displacements over the HR image, HR pixels (0 without)."""
        return 0.0 if self.disp is None else float(np.sqrt(np.mean(np.sum(self.disp**2, 0))))

    @property
    def zoom(self) -> float:
        """HR/LR pixel-density ratio of the global mapping."""
        return _zoom(self.matrix)

    @property
    def rotation_deg(self) -> float:
        """Rotation of the HR scan in the LR frame, degrees (as ``pairsr.simulate``'s truth)."""
        m = self.matrix
        return float(np.rad2deg(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))

    @property
    def footprint(self) -> np.ndarray:
        """LR (row, col) of the HR image's 4 outer corners (pixel edges), (4, 2), in order."""
        h, w = self.hr_shape
        corners = np.array([[-0.5, -0.5], [-0.5, w - 0.5], [h - 0.5, w - 0.5], [h - 0.5, -0.5]])
        return _apply(self.matrix, self.offset, corners.T).T

    @property
    def inside_fraction(self) -> float:
        """Fraction of the HR image's area that the global mapping puts inside the LR image."""
        h, w = self.hr_shape
        rows, cols = np.meshgrid(np.linspace(-0.5, h - 0.5, 65), np.linspace(-0.5, w - 0.5, 65),
                                 indexing="ij")
        y = _apply(self.matrix, self.offset, np.stack([rows, cols]))
        inside = [(y[k] >= -0.5) & (y[k] <= n - 0.5) for k, n in enumerate(self.lr_shape)]
        return float(np.mean(inside[0] & inside[1]))

    def _disp_at(self, hr_coords: np.ndarray) -> np.ndarray:
        """Local field sampled (linearly, mirrored beyond the HR edges) at HR coords (2, ...)."""
        return np.stack([interpolate(d, hr_coords, order=1) for d in self.disp])

    def hr_to_lr(self, coords: np.ndarray, local: bool = True) -> np.ndarray:
        """LR (row, col) of HR coordinates ``coords`` (2, ...); with the local field if any."""
        x = np.asarray(coords, dtype=float)
        if local and self.disp is not None:
            x = x + self._disp_at(x)
        return _apply(self.matrix, self.offset, x)

    def lr_to_hr(self, coords: np.ndarray, local: bool = True, tol: float = 1e-5) -> np.ndarray:
        """HR (row, col) of LR coordinates ``coords`` (2, ...): the inverse of :meth:`hr_to_lr`.

        With the local field, solves ``x + disp(x) = matrix⁻¹ (y − offset)`` by fixed-point
        iteration (it contracts: the field's gradient is far below 1) to ``tol`` HR pixels.
        """
        inv = np.linalg.inv(self.matrix)
        x0 = _apply(inv, -inv @ self.offset, coords)
        if not local or self.disp is None:
            return x0
        x = x0
        for _ in range(100):
            x_new = x0 - self._disp_at(x)
            step = np.max(np.abs(x_new - x), initial=0.0)
            x = x_new
            if step < tol:
                break
        return x

    def to_dict(self) -> dict:
        """JSON-ready record of everything but ``disp``, derived values included."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "disp"}
        record.update(matrix=self.matrix.tolist(), offset=self.offset.tolist(),
                      lr_shape=list(self.lr_shape), hr_shape=list(self.hr_shape))
        # Derived values, written for the reader; load() recomputes them.
        record.update(zoom=self.zoom, rotation_deg=self.rotation_deg,
                      footprint=self.footprint.tolist(), inside_fraction=self.inside_fraction,
                      rms_displacement=self.rms_displacement)
        return json.loads(json.dumps(record, default=lambda v: v.item()))  # numpy scalars

    def save(self, path: str | Path) -> Path:
        """Write the scalars as JSON to ``path`` and ``disp`` to ``<stem>_disp.npy`` beside it."""
        path = Path(path)
        record = self.to_dict()
        disp_path = path.with_name(f"{path.stem}_disp.npy")
        record["disp_file"] = disp_path.name if self.disp is not None else None
        path.write_text(json.dumps(record, indent=1))
        if self.disp is not None:
            np.save(disp_path, self.disp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Registration:
        """Read a registration written by :meth:`save`."""
        path = Path(path)
        record = json.loads(path.read_text())
        kwargs = {f.name: record[f.name] for f in fields(cls) if f.name in record}
        if record.get("disp_file"):
            kwargs["disp"] = np.load(path.with_name(record["disp_file"]))
        return cls(**kwargs)


def warp_hr_to_sr(hr, reg: Registration, lr_shape: tuple[int, int] | None = None,
                  zoom: int = 2, local: bool = True) -> np.ndarray:
    """Resample the HR image onto the ×``zoom`` SR grid of the LR field (the training target).

    SR pixel ``p`` has LR coordinate ``(p + 0.5)/zoom − 0.5`` (:func:`pairsr.grid.sr_to_lr`); its
    value is the HR image's bicubic (:func:`pairsr.grid.interpolate`) at ``reg.lr_to_hr`` of it.
    Returns float32 (zoom·H, zoom·W), NaN outside the HR footprint.
    """
    hr = _as_image(hr, "hr")
    if hr.shape != reg.hr_shape:
        raise ValueError(f"hr has shape {hr.shape}, the registration was made for {reg.hr_shape}")
    lr_shape = tuple(reg.lr_shape if lr_shape is None else lr_shape)
    out = np.full(sr_shape(lr_shape, zoom), np.nan, dtype=np.float32)
    # SR bounding box of the footprint, widened by the local field and a pixel.
    margin = zoom * (1 + (np.abs(reg.disp).max() / reg.zoom if reg.disp is not None else 0))
    corners = lr_to_sr(reg.footprint, zoom)
    lo = np.clip(np.floor(corners.min(0) - margin).astype(int), 0, out.shape)
    hi = np.clip(np.ceil(corners.max(0) + margin).astype(int) + 1, 0, out.shape)
    if np.any(hi <= lo):
        return out
    p = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]].astype(float)
    x = reg.lr_to_hr(sr_to_lr(p, zoom), local=local)
    inside = np.all((x >= -0.5) & (x <= np.array(hr.shape).reshape(2, 1, 1) - 0.5), axis=0)
    out[lo[0] : hi[0], lo[1] : hi[1]] = np.where(inside, interpolate(hr, x), np.nan)
    return out
