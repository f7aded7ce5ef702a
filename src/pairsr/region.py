"""Rectangular regions of an image, their SR-grid versions, and predicting a region with its halo.

A :class:`Region` is a box of whole pixels ``(row, col, rows, cols)``: top-left pixel and size,
end-exclusive, in the pixels of the image it refers to (LR pixels unless said otherwise). Its
version on the ×``zoom`` SR grid (:meth:`Region.sr`) covers the same area: SR pixels
``[zoom·row, zoom·(row + rows))`` per axis, the rule of :mod:`pairsr.grid` (SR pixel ``p`` has its
centre at LR coordinate ``(p + 0.5)/zoom − 0.5``, so the SR pixels of an LR pixel tile its area),
stated here once. The SR grid's origin in physical units (the OME-NGFF ``translation``) is
:func:`sr_translation`; :func:`predict_region` runs a prediction over a region with its context.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pairsr.grid import lr_to_sr, sr_to_lr


@dataclass(frozen=True)
class Region:
    """A box of pixels: top-left ``(row, col)`` and size ``(rows, cols)`` (end-exclusive)."""

    row: int
    col: int
    rows: int
    cols: int

    def __post_init__(self) -> None:
        for name in ("row", "col", "rows", "cols"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.rows < 0 or self.cols < 0:
            raise ValueError(f"a region has a size of at least 0, got {self.rows}×{self.cols}")

    @classmethod
    def of(cls, shape: Sequence[int]) -> Region:
        """The whole of an image of ``shape`` (its last two axes)."""
        return cls(0, 0, shape[-2], shape[-1])

    @classmethod
    def from_bounds(cls, start: Sequence[int], stop: Sequence[int]) -> Region:
        """Pixels ``start <= (row, col) < stop`` (empty where ``stop <= start``)."""
        return cls(start[0], start[1], max(0, stop[0] - start[0]), max(0, stop[1] - start[1]))

    @classmethod
    def covering(cls, points: np.ndarray, margin: float = 0.0) -> Region:
        """Pixels from ``floor(min − margin)`` to ``ceil(max + margin)`` (inclusive) of ``points``
        ``(N, 2)`` ``(row, col)`` coordinates: a box around them, before clipping."""
        points = np.asarray(points, dtype=float).reshape(-1, 2)
        lo = np.floor(points.min(0) - margin).astype(int)
        hi = np.ceil(points.max(0) + margin).astype(int) + 1
        return cls.from_bounds(lo, hi)

    @classmethod
    def bounding(cls, regions: Iterable[Region]) -> Region:
        """The smallest region holding every one of ``regions``."""
        regions = list(regions)
        lo = [min(r.row for r in regions), min(r.col for r in regions)]
        hi = [max(r.stop[0] for r in regions), max(r.stop[1] for r in regions)]
        return cls.from_bounds(lo, hi)

    @property
    def start(self) -> tuple[int, int]:
        return self.row, self.col

    @property
    def stop(self) -> tuple[int, int]:
        return self.row + self.rows, self.col + self.cols

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def empty(self) -> bool:
        return self.rows == 0 or self.cols == 0

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices of the region (for ``array[region.slices]``)."""
        return slice(self.row, self.row + self.rows), slice(self.col, self.col + self.cols)

    def crop(self, array):
        """The region of ``array`` (its last two axes; numpy, dask, zarr or anything that
        slices)."""
        return array[self.slices] if array.ndim == 2 else array[(..., *self.slices)]

    def sr(self, zoom: int) -> Region:
        """The same area on the ×``zoom`` SR grid: the SR pixels whose centres lie inside it."""
        lo = [math.ceil(lr_to_sr(s - 0.5, zoom)) for s in self.start]
        hi = [math.ceil(lr_to_sr(s - 0.5, zoom)) for s in self.stop]
        return Region.from_bounds(lo, hi)

    def lr(self, zoom: int) -> Region:
        """The LR region whose SR version (:meth:`sr`) this SR region is; ``ValueError`` unless
        its edges lie on LR pixel edges (multiples of ``zoom``)."""
        if any(v % zoom for v in (*self.start, *self.stop)):
            raise ValueError(f"{self} is not made of whole LR pixels at ×{zoom}")
        lo = [round(float(sr_to_lr(s - 0.5, zoom)) + 0.5) for s in self.start]
        hi = [round(float(sr_to_lr(s - 0.5, zoom)) + 0.5) for s in self.stop]
        return Region.from_bounds(lo, hi)

    def intersect(self, other: Region) -> Region:
        """The pixels in both (an empty region where they do not meet)."""
        lo = [max(a, b) for a, b in zip(self.start, other.start, strict=True)]
        hi = [min(a, b) for a, b in zip(self.stop, other.stop, strict=True)]
        return Region.from_bounds(lo, hi)

    def pad(self, halo: int, within: Sequence[int] | Region | None = None) -> Region:
        """The region grown by ``halo`` pixels on each side, clipped to ``within`` (an image
        shape or a region) if given."""
        grown = Region(self.row - halo, self.col - halo, self.rows + 2 * halo,
                       self.cols + 2 * halo)
        if within is None:
            return grown
        return grown.intersect(within if isinstance(within, Region) else Region.of(within))

    def aligned(self, align: int) -> Region:
        """The region grown up and left to start on multiples of ``align`` pixels."""
        return Region.from_bounds([v - v % align for v in self.start], self.stop)

    def shift(self, offset: Sequence[int]) -> Region:
        """The region moved by ``offset`` ``(rows, cols)``."""
        return Region(self.row + offset[0], self.col + offset[1], self.rows, self.cols)

    def relative_to(self, other: Region) -> Region:
        """The region in the pixels of ``other`` (whose top-left pixel becomes ``(0, 0)``)."""
        return self.shift((-other.row, -other.col))

    def tiles(self, size: int) -> list[Region]:
        """Tiles of at most ``size`` pixels a side partitioning the region, row-major."""
        return [Region(r, c, min(size, self.stop[0] - r), min(size, self.stop[1] - c))
                for r in range(self.row, self.stop[0], size)
                for c in range(self.col, self.stop[1], size)]

    def translation(self, pixel_size: float = 1.0, origin: Sequence[float] = (0.0, 0.0),
                    zoom: int = 1) -> tuple[float, float]:
        """Physical ``(y, x)`` of the centre of the region's first pixel on the ×``zoom`` SR grid
        (``zoom=1``: on the LR grid), for an image whose pixel ``(0, 0)`` is centred at
        ``origin`` with pixels of ``pixel_size`` (the NGFF ``translation`` of the region)."""
        return sr_translation([o + pixel_size * s for o, s in zip(origin, self.start,
                                                                  strict=True)],
                              pixel_size, zoom)


def sr_translation(translation: Sequence[float], pixel_size: float,
                   zoom: int) -> tuple[float, float]:
    """Physical ``(y, x)`` of SR pixel ``(0, 0)``'s centre for an LR image whose pixel ``(0, 0)``
    is centred at ``translation`` with pixels of ``pixel_size``: ``translation − pixel_size·(zoom
    − 1)/(2·zoom)`` (the OME-NGFF ``translation`` of the SR image, whose ``scale`` is
    ``pixel_size/zoom``)."""
    first = float(sr_to_lr(0, zoom)) * pixel_size
    return float(translation[0]) + first, float(translation[1]) + first


def predict_region(predict: Callable[[np.ndarray], np.ndarray], lr: np.ndarray, region: Region,
                   halo: int, zoom: int, align: int = 1) -> np.ndarray:
    """The ×``zoom`` SR of ``region`` of ``lr``, predicted from the region and up to ``halo``
    pixels of context on each side (clipped to ``lr``, whose border ``predict`` then sees as the
    whole-image prediction does), the window starting on multiples of ``align`` pixels of ``lr``
    (:attr:`pairsr.methods.SRMethod.align`); float32 ``(zoom·rows, zoom·cols)``.

    ``predict`` maps an LR array ``(h, w)`` to its SR ``(zoom·h, zoom·w)``.
    """
    window = region.pad(halo, lr.shape).aligned(align)
    out = predict(window.crop(lr))
    expected = window.sr(zoom).shape
    if out.shape != expected:
        raise ValueError(f"predict gave shape {out.shape} for an LR window of shape "
                         f"{window.shape}; expected {expected} (×{zoom})")
    return region.relative_to(window).sr(zoom).crop(out)


def window_sums(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Sums of ``a`` over every ``shape`` window of its last two axes, at the windows' top-left
    pixels (valid positions only): ``(..., H − h + 1, W − w + 1)``, by a summed-area table;
    int64 for a boolean or integer ``a``."""
    a = np.asarray(a)
    dtype = np.int64 if a.dtype.kind in "biu" else None
    table = np.cumsum(np.cumsum(a, -2, dtype=dtype), -1)
    table = np.pad(table, [(0, 0)] * (a.ndim - 2) + [(1, 0), (1, 0)])
    h, w = shape
    return table[..., h:, w:] - table[..., :-h, w:] - table[..., h:, :-w] + table[..., :-h, :-w]
