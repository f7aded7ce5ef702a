"""The super-resolution output grid and the bicubic ×zoom baseline.

Conventions used throughout pairsr:

* Pixel coordinates are ``(row, col)`` of pixel *centres*; pixel ``(0, 0)`` covers ``[-0.5, 0.5)``.
* An SR output at integer ``zoom`` has shape ``(zoom*H, zoom*W)``; its pixel ``p`` (per axis) has
  its centre at LR coordinate ``(p + 0.5) / zoom - 0.5`` (``p/2 - 1/4`` for ×2): the output pixels
  tile the LR pixels' areas exactly, as ``skimage.transform.rescale`` does.
* Images are processed as float32; integer images are scaled to ``[0, 1]`` by their dtype
  (``skimage.util.img_as_float32``), one global scaling, never per tile.
* "Bicubic" is the cubic B-spline interpolation of ``scipy.ndimage`` (``order=3``) with
  mirror-symmetric ('reflect', half-sample) boundaries, for both the ×zoom upsampling and the
  resampling at arbitrary coordinates, so the two agree where their coordinates coincide.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Boundary mode shared by every interpolation (half-sample symmetric, as skimage 'symmetric').
BOUNDARY = "reflect"
#: LR pixels of context a tile needs so that the spline prefilter's edge effect is < 1e-6.
BICUBIC_HALO = 12


def sr_shape(shape: tuple[int, int], zoom: int = 2) -> tuple[int, int]:
    """Shape ``(zoom*H, zoom*W)`` of the SR output for an LR image of shape ``(H, W)``."""
    return (zoom * shape[0], zoom * shape[1])


def sr_to_lr(p: np.ndarray | float, zoom: int = 2) -> np.ndarray | float:
    """LR coordinate of the centre of SR pixel index ``p`` (per axis): ``(p + 0.5)/zoom - 0.5``."""
    return (np.asarray(p, dtype=float) + 0.5) / zoom - 0.5


def lr_to_sr(x: np.ndarray | float, zoom: int = 2) -> np.ndarray | float:
    """SR pixel coordinate of LR coordinate ``x`` (inverse of :func:`sr_to_lr`)."""
    return (np.asarray(x, dtype=float) + 0.5) * zoom - 0.5


def bicubic(lr: np.ndarray, zoom: int = 2) -> np.ndarray:
    """Bicubic ×``zoom`` upsampling of a 2-D image on the SR grid; float32 ``(zoom*H, zoom*W)``."""
    lr = np.asarray(lr, dtype=np.float32)
    if lr.ndim != 2:
        raise ValueError(f"bicubic expects a 2-D image, got shape {lr.shape}")
    return ndi.zoom(lr, zoom, order=3, mode="grid-mirror", grid_mode=True).astype(np.float32)


def interpolate(image: np.ndarray, coords: np.ndarray, order: int = 3, *,
                prefiltered: bool = False) -> np.ndarray:
    """Sample ``image`` at fractional ``(row, col)`` coordinates ``coords`` of shape ``(2, ...)``.

    Same spline and boundary as :func:`bicubic`; float32 of shape ``coords.shape[1:]``. With
    ``prefiltered``, ``image`` is already its :func:`spline_coefficients` (to sample one image
    many times).
    """
    if not prefiltered:
        image = np.asarray(image, dtype=np.float32)
    return ndi.map_coordinates(image, coords, order=order, mode=BOUNDARY,
                               prefilter=not prefiltered).astype(np.float32)


def spline_coefficients(image: np.ndarray, order: int = 3) -> np.ndarray:
    """The B-spline coefficients (float64) :func:`interpolate` samples ``image`` from."""
    image = np.asarray(image, dtype=np.float32)
    return ndi.spline_filter(image, order, output=np.float64, mode=BOUNDARY)
