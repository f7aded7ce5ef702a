"""The registration record: the HR→LR mapping, its local field (spline coefficients), warping."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from pairsr.grid import interpolate, lr_to_sr, spline_coefficients, sr_to_lr
from pairsr.region import Region
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


#: Points evaluated at once where a whole grid is walked (row blocks of about this many pixels).
BLOCK_PIXELS = 2**20


def _row_blocks(shape: tuple[int, int]) -> Iterator[slice]:
    """Row slices of a ``shape`` grid, about :data:`BLOCK_PIXELS` pixels each."""
    step = max(1, BLOCK_PIXELS // max(shape[1], 1))
    for r0 in range(0, shape[0], step):
        yield slice(r0, min(r0 + step, shape[0]))


def _pixel_grid(rows: slice, cols: slice) -> np.ndarray:
    """Pixel-centre coordinates (2, r, c), float64, of the pixels ``rows`` × ``cols``."""
    return np.mgrid[rows, cols].astype(float)


@dataclass(frozen=True)
class RidgeSpline:
    """One term of a :class:`LocalField`: a cubic B-spline ``s(u)`` (2 components, HR px) of the
    1-D coordinate ``u = direction · x + offset`` of HR coordinates ``x`` (the HR row, or the LR
    row the global affine maps ``x`` to).

    Its knots are uniform, ``knot0 + step · j`` for ``j = 0 … n + 3`` (``n`` coefficients); it
    is constant beyond its base interval ``[knot0 + 3 step, knot0 + n step]`` (which covers the
    HR image), so the field stays bounded where it is extrapolated.
    """

    direction: np.ndarray
    offset: float
    knot0: float
    step: float
    coef: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", np.asarray(self.direction, float).reshape(2))
        object.__setattr__(self, "coef", np.asarray(self.coef, float).reshape(-1, 2))

    @property
    def knots(self) -> np.ndarray:
        """The knot vector (n + 4,)."""
        return self.knot0 + self.step * np.arange(len(self.coef) + 4)

    def coordinate(self, coords: np.ndarray) -> np.ndarray:
        """``u`` of HR coordinates (2, ...)."""
        return np.tensordot(self.direction, coords, axes=1) + self.offset

    def __call__(self, coords: np.ndarray, derivative: bool = False) -> np.ndarray:
        """``s(u(x))`` (or ``ds/du``) at HR coordinates (2, ...): (2, ...) float64."""
        n = len(self.coef)
        v = np.clip((self.coordinate(coords) - self.knot0) / self.step, 3.0, float(n))
        i = np.minimum(np.floor(v).astype(np.intp), n - 1)
        tau = v - i
        rest = 1.0 - tau
        if derivative:  # d/du of the uniform cubic basis; none beyond the base interval
            beyond = (v <= 3.0) | (v >= n)
            weights = [-0.5 * rest**2, 1.5 * tau**2 - 2 * tau, -1.5 * tau**2 + tau + 0.5,
                       0.5 * tau**2]
            weights = [np.where(beyond, 0.0, b / self.step) for b in weights]
        else:
            weights = [rest**3 / 6, (3 * tau**3 - 6 * tau**2 + 4) / 6,
                       (-3 * tau**3 + 3 * tau**2 + 3 * tau + 1) / 6, tau**3 / 6]
        out = np.empty((2, *v.shape))
        for component in range(2):  # gathers from 1-D coefficients, summed in the basis order
            c = self.coef[:, component]
            out[component] = (weights[0] * c[i - 3] + weights[1] * c[i - 2]
                              + weights[2] * c[i - 1] + weights[3] * c[i])
        return out

    def to_dict(self) -> dict:
        return {"direction": self.direction.tolist(), "offset": float(self.offset),
                "knot0": float(self.knot0), "step": float(self.step),
                "coef": self.coef.tolist()}


@dataclass(frozen=True)
class LocalField:
    """Smooth local displacement field, HR px: ``disp(x) = Σ_k s_k(x) + linear @ x + shift``.

    ``terms`` are :class:`RidgeSpline` s (for scan drift: a spline in the HR row and one in the
    LR row, see :class:`pairsr.register._field._ScanLineField`); ``linear`` (2, 2) and ``shift``
    (2,) hold what re-expressing the field against another global affine adds
    (:meth:`reexpressed`). A few hundred numbers define it; it is evaluated where asked.
    """

    terms: tuple[RidgeSpline, ...]
    linear: np.ndarray = field(default_factory=lambda: np.zeros((2, 2)))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", tuple(self.terms))
        object.__setattr__(self, "linear", np.asarray(self.linear, float).reshape(2, 2))
        object.__setattr__(self, "shift", np.asarray(self.shift, float).reshape(2))

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        """The field at HR coordinates ``coords`` (2, ...): (2, ...) float64, HR px."""
        coords = np.asarray(coords, dtype=float)
        return sum(term(coords) for term in self.terms) + _apply(self.linear, self.shift, coords)

    def jacobian_det(self, coords: np.ndarray) -> np.ndarray:
        """``det(I + ∂disp/∂x)`` at HR coordinates (2, ...): positive where the map does not
        fold."""
        coords = np.asarray(coords, dtype=float)
        jac = np.eye(2)[:, :, None] + self.linear[:, :, None]
        jac = jac.reshape(2, 2, *([1] * (coords.ndim - 1)))
        for term in self.terms:
            jac = jac + term(coords, derivative=True)[:, None] * term.direction.reshape(
                1, 2, *([1] * (coords.ndim - 1)))
        return jac[0, 0] * jac[1, 1] - jac[0, 1] * jac[1, 0]

    def reexpressed(self, matrix: np.ndarray, offset: np.ndarray, new_matrix: np.ndarray,
                    new_offset: np.ndarray) -> LocalField:
        """The same HR→LR map against another affine: ``disp'`` with ``new_matrix (x + disp'(x))
        + new_offset = matrix (x + disp(x)) + offset`` for every ``x``."""
        inv = np.linalg.inv(new_matrix)
        b = inv @ matrix
        terms = [RidgeSpline(t.direction, t.offset, t.knot0, t.step, t.coef @ b.T)
                 for t in self.terms]
        return LocalField(terms, b - np.eye(2) + b @ self.linear,
                          b @ self.shift + inv @ (offset - new_offset))

    def to_dict(self) -> dict:
        return {"terms": [t.to_dict() for t in self.terms], "linear": self.linear.tolist(),
                "shift": self.shift.tolist()}

    @classmethod
    def from_dict(cls, record: dict) -> LocalField:
        return cls([RidgeSpline(**t) for t in record["terms"]], record["linear"],
                   record["shift"])


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
    local_field
        The local displacement field ``disp`` (:class:`LocalField`, spline coefficients,
        evaluated where asked: :meth:`displacement`, :meth:`hr_to_lr`), or None.
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
    local_field: LocalField | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=float).reshape(2, 2)
        self.offset = np.asarray(self.offset, dtype=float).reshape(2)
        self.lr_shape = tuple(int(n) for n in self.lr_shape)
        self.hr_shape = tuple(int(n) for n in self.hr_shape)

    def displacement(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """The local field on the HR pixels ``rows`` × ``cols`` (default: all), float32 (2, r, c)
        in HR px; zeros without a field. Allocates the region only: ask for the part needed."""
        rows, cols = (slice(*s.indices(n)) for s, n in zip((rows, cols), self.hr_shape))
        shape = (len(range(rows.start, rows.stop, rows.step)),
                 len(range(cols.start, cols.stop, cols.step)))
        out = np.zeros((2, *shape), np.float32)
        if self.local_field is not None:
            for block in _row_blocks(shape):
                r = range(rows.start, rows.stop, rows.step)[block]
                out[:, block] = self.local_field(_pixel_grid(slice(r.start, r.stop, r.step),
                                                             cols))
        return out

    @property
    def rms_displacement(self) -> float:
        """RMS length of the local displacements over the HR image's pixels, HR px (0 without)."""
        if self.local_field is None:
            return 0.0
        total = sum(float(np.sum(self.local_field(_pixel_grid(block, slice(0, self.hr_shape[1])))
                                 ** 2)) for block in _row_blocks(self.hr_shape))
        return float(np.sqrt(total / (self.hr_shape[0] * self.hr_shape[1])))

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

    def lr_box(self, local: bool = True) -> np.ndarray:
        """LR bounding box ``[[row0, col0], [row1, col1]]`` (pixel edges, float) of the HR
        image's area, through the local field too (its outline, sampled at every HR pixel)."""
        h, w = self.hr_shape
        rows, cols = np.arange(-0.5, h), np.arange(-0.5, w)
        outline = np.concatenate(
            [np.stack([rows, np.full_like(rows, edge)]) for edge in (-0.5, w - 0.5)]
            + [np.stack([np.full_like(cols, edge), cols]) for edge in (-0.5, h - 0.5)], axis=1)
        y = self.hr_to_lr(outline, local=local)
        return np.stack([y.min(1), y.max(1)])

    def hr_to_lr(self, coords: np.ndarray, local: bool = True) -> np.ndarray:
        """LR (row, col) of HR coordinates ``coords`` (2, ...); with the local field if any."""
        x = np.asarray(coords, dtype=float)
        if local and self.local_field is not None:
            x = x + self.local_field(x)
        return _apply(self.matrix, self.offset, x)

    def lr_to_hr(self, coords: np.ndarray, local: bool = True, tol: float = 1e-5) -> np.ndarray:
        """HR (row, col) of LR coordinates ``coords`` (2, ...): the inverse of :meth:`hr_to_lr`.

        With the local field, solves ``x + disp(x) = matrix⁻¹ (y − offset)`` by fixed-point
        iteration (it contracts: the field's gradient is far below 1), each point until its
        step is under ``tol`` HR pixels (so a point's result does not depend on the others).
        """
        inv = np.linalg.inv(self.matrix)
        x0 = _apply(inv, -inv @ self.offset, coords)
        if not local or self.local_field is None:
            return x0
        shape = x0.shape
        x0 = x0.reshape(2, -1)
        x, todo = x0.copy(), np.arange(x0.shape[1])
        for _ in range(100):
            x_new = x0[:, todo] - self.local_field(x[:, todo])
            moving = np.max(np.abs(x_new - x[:, todo]), axis=0, initial=0.0) >= tol
            x[:, todo] = x_new
            todo = todo[moving]
            if not todo.size:
                break
        return x.reshape(shape)

    def to_dict(self) -> dict:
        """JSON-ready record, the local field as its coefficients, derived values included."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "local_field"}
        record.update(matrix=self.matrix.tolist(), offset=self.offset.tolist(),
                      lr_shape=list(self.lr_shape), hr_shape=list(self.hr_shape),
                      local_field=None if self.local_field is None else self.local_field.to_dict())
        # Derived values, written for the reader; load() recomputes them.
        record.update(zoom=self.zoom, rotation_deg=self.rotation_deg,
                      footprint=self.footprint.tolist(), inside_fraction=self.inside_fraction,
                      rms_displacement=self.rms_displacement)
        return json.loads(json.dumps(record, default=lambda v: v.item()))  # numpy scalars

    @classmethod
    def from_dict(cls, record: dict) -> Registration:
        """The registration of a :meth:`to_dict` record (derived values are recomputed)."""
        kwargs = {f.name: record[f.name] for f in fields(cls) if f.name in record}
        if kwargs.get("local_field") is not None:
            kwargs["local_field"] = LocalField.from_dict(kwargs["local_field"])
        return cls(**kwargs)

    def save(self, path: str | Path) -> Path:
        """Write the record, local field included (its coefficients), as JSON to ``path``."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Registration:
        """Read a registration written by :meth:`save`; one from an older pairsr with a dense
        field beside it (``disp_file``, ``<stem>_disp.npy``) has that field converted to spline
        coefficients (:func:`_field_from_dense`), with a warning."""
        path = Path(path)
        record = json.loads(path.read_text())
        reg = cls.from_dict(record)
        if record.get("disp_file"):
            dense_path = path.with_name(record["disp_file"])
            if not dense_path.is_file():
                raise FileNotFoundError(
                    f"{path}: its local field is stored in {dense_path.name}, which is missing; "
                    "re-run pairsr register to write the registration again")
            reg.local_field, error = _field_from_dense(np.load(dense_path), reg)
            warnings.warn(
                f"{path}: converted the dense local field of {dense_path.name} (an older "
                f"pairsr's) to spline coefficients, within {error:.2g} HR px; saving the "
                "registration again stores it without the .npy", stacklevel=2)
        return reg


#: Largest deviation (HR px) of a converted dense field from its spline form that is accepted.
DENSE_TOLERANCE = 0.01


def _field_from_dense(disp: np.ndarray, reg: Registration) -> tuple[LocalField, float]:
    """The scan-line spline form of a dense field (2, h, w) that an older pairsr stored: its
    least-squares fit on a grid of at most 256² pixels, with the number of knot intervals
    (1-24) that fits best, and the largest deviation over every pixel (HR px). Raises if even
    that deviates by more than :data:`DENSE_TOLERANCE`."""
    from pairsr.register._field import _ScanLineField

    disp = np.asarray(disp, dtype=float)
    if disp.shape != (2, *reg.hr_shape):
        raise ValueError(f"the dense local field has shape {disp.shape}, the registration's HR "
                         f"{reg.hr_shape}; re-run pairsr register")
    rows, cols = (np.unique(np.linspace(0, n - 1, min(n, 256)).round().astype(int))
                  for n in reg.hr_shape)
    coords = np.stack(np.meshgrid(rows, cols, indexing="ij")).reshape(2, -1).astype(float)
    values = disp[:, coords[0].astype(int), coords[1].astype(int)].T
    best = None
    for knots in range(1, 25):
        model = _ScanLineField(reg.matrix, reg.offset, reg.hr_shape, reg.lr_shape[0], knots)
        design = np.hstack([model.design(coords), coords.T, np.ones((coords.shape[1], 1))])
        sol, *_ = np.linalg.lstsq(design, values, rcond=None)
        k = model.n_coef
        candidate = model.field(sol[:k], linear=sol[k : k + 2].T, shift=sol[k + 2])
        error = max(float(np.abs(candidate(_pixel_grid(block, slice(0, reg.hr_shape[1])))
                                 - disp[:, block]).max()) for block in _row_blocks(reg.hr_shape))
        if best is None or error < best[1]:
            best = candidate, error
    if best[1] > DENSE_TOLERANCE:
        raise ValueError(f"the dense local field does not have the scan-line spline form (off by "
                         f"{best[1]:.2g} HR px); re-run pairsr register")
    return best


def _warp_box(hr: np.ndarray, reg: Registration, box: Region, zoom: int,
              local: bool) -> np.ndarray:
    """The HR image (float32, checked) resampled onto ``box`` of the ×``zoom`` SR grid, row
    block by row block: float32 ``box.shape``, NaN where the HR does not reach."""
    out = np.empty(box.shape, np.float32)
    top = np.array(hr.shape).reshape(2, 1, 1) - 0.5
    coefficients = spline_coefficients(hr)
    cols = slice(box.col, box.stop[1])
    for block in _row_blocks(box.shape):
        p = _pixel_grid(slice(box.row + block.start, box.row + block.stop), cols)
        x = reg.lr_to_hr(sr_to_lr(p, zoom), local=local)
        inside = np.all((x >= -0.5) & (x <= top), axis=0)
        out[block] = np.where(inside, interpolate(coefficients, x, prefiltered=True), np.nan)
    return out


def warp_hr_to_sr(hr, reg: Registration, lr_shape: tuple[int, int] | None = None,
                  zoom: int = 2, local: bool = True, region: Region | None = None) -> np.ndarray:
    """Resample the HR image onto the ×``zoom`` SR grid of the LR field (the training target),
    or of its ``region`` only (LR px, may reach beyond the field; default the whole field of
    ``lr_shape``, itself by default ``reg.lr_shape``).

    SR pixel ``p`` has LR coordinate ``(p + 0.5)/zoom − 0.5`` (:func:`pairsr.grid.sr_to_lr`); its
    value is the HR image's bicubic (:func:`pairsr.grid.interpolate`) at ``reg.lr_to_hr`` of it.
    Returns float32 ``region.sr(zoom).shape`` ((zoom·H, zoom·W) for the whole field), NaN outside
    the HR footprint; only the footprint's box (:func:`footprint_region`) is computed, in row
    blocks (bounded memory).
    """
    hr = _as_image(hr, "hr")
    if hr.shape != reg.hr_shape:
        raise ValueError(f"hr has shape {hr.shape}, the registration was made for {reg.hr_shape}")
    if region is None:
        region = Region.of(reg.lr_shape if lr_shape is None else lr_shape)
    grid = region.sr(zoom)
    out = np.full(grid.shape, np.nan, dtype=np.float32)
    box = footprint_region(reg, zoom, local).intersect(grid)
    if not box.empty:
        box.relative_to(grid).crop(out)[...] = _warp_box(hr, reg, box, zoom, local)
    return out


def footprint_region(reg: Registration, zoom: int = 1, local: bool = True) -> Region:
    """Pixels of the ×``zoom`` SR grid (``zoom=1``: the LR grid) whose centres the HR scan may
    cover: the box around :meth:`Registration.lr_box` (through the local field when ``local``)
    widened by a pixel (not clipped to the field)."""
    return Region.covering(lr_to_sr(reg.lr_box(local=local), zoom), 1)
