"""Registration figure: the HR footprint and the local field drawn on the LR."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import draw, transform

from pairsr.register._images import _as_image
from pairsr.register._mapping import Registration, _rotation


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """Grey image → uint8 RGB, contrast stretched between its 0.5 and 99.5 percentiles."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)


def _draw_line(rgb: np.ndarray, start: np.ndarray, end: np.ndarray, colour: tuple) -> None:
    """Line from ``start`` to ``end`` ((row, col)), clipped to ``rgb``."""
    rr, cc = draw.line(*np.round(start).astype(int), *np.round(end).astype(int))
    keep = (rr >= 0) & (rr < rgb.shape[0]) & (cc >= 0) & (cc < rgb.shape[1])
    rgb[rr[keep], cc[keep]] = colour


def _draw_arrow(rgb: np.ndarray, start: np.ndarray, end: np.ndarray, colour: tuple) -> None:
    """Arrow from ``start`` to ``end`` ((row, col)) with a two-stroke head, clipped to ``rgb``."""
    vec = end - start
    length = np.hypot(*vec)
    strokes = [(start, end)]
    if length > 1:
        back = -vec / length * min(6.0, 0.4 * length)
        for angle in (25, -25):
            strokes.append((end, end + _rotation(angle) @ back))
    for a, b in strokes:
        _draw_line(rgb, a, b, colour)


def plot_registration(lr, hr, reg: Registration, path: str | Path, n_arrows: int = 16) -> Path:
    """Write a PNG in the spirit of the paper's Fig. 4: the LR image with the HR footprint (red),
    beside the HR image with the local displacements as arrows (yellow, magnified so that the
    longest is 1/``n_arrows`` of the HR width)."""
    lr = _as_image(lr, "lr")
    hr = _as_image(hr, "hr")
    left = _to_rgb(lr)
    corners = np.vstack([reg.footprint, reg.footprint[:1]])
    for a, b in pairwise(corners):
        _draw_line(left, a, b, (255, 0, 0))
    scale = lr.shape[0] / hr.shape[0]  # the HR panel is shown at the LR image's height
    right = _to_rgb(transform.resize(hr, (lr.shape[0], round(hr.shape[1] * scale)),
                                     anti_aliasing=True))
    if reg.local_field is not None:
        step = max(1, min(hr.shape) // n_arrows)
        rows, cols = np.mgrid[step // 2 : hr.shape[0] : step, step // 2 : hr.shape[1] : step]
        vec = reg.local_field(np.stack([rows, cols])).reshape(2, -1).T
        gain = hr.shape[1] / n_arrows / max(np.hypot(*vec.T).max(), 1e-6)
        for base, v in zip(np.stack([rows.ravel(), cols.ravel()], 1), vec):
            start = (base + 0.5) * scale - 0.5
            _draw_arrow(right, start, start + v * gain * scale, (255, 255, 0))
    gap = np.full((lr.shape[0], 8, 3), 255, np.uint8)
    path = Path(path)
    Image.fromarray(np.hstack([left, gap, right])).save(path)
    return path
