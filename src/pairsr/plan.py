"""Acquisition planning: where to scan the HR of a survey field so that its library covers the
whole field's structures best.

The LR field is summarised on a coarse grid of ``step × step`` LR-pixel *cells* (read in row
bands, so a 16k survey in zarr never sits in memory). Each cell gets a descriptor (block mean
and standard deviation, the RMS of its LR-scale detail, and context from the coarse image at two
scales) and a *weight*: how much SR changes it, the RMS of the LR-scale band-pass detail above
the field's noise floor (blank areas and flat background weigh about nothing). k-means groups the
cells' descriptors into structure classes. A set of boxes *covers* class ``c`` by
``1 - exp(-n_c / m_c)``, ``n_c`` its cells inside the boxes and ``m_c`` a box's fair share of
cells per class (or half the class when it is smaller): diminishing returns, so a second box
goes where the first did not reach. The plan maximises the weighted coverage
``Σ_c W_c (1 - exp(-n_c / m_c))`` (``W_c`` the summed weights of class ``c`` over the field)
greedily: each next box is the one that adds most, evaluated at every cell position at once with
summed-area tables. Boxes lie inside the field and above its info bar (:func:`pairsr.io.
find_info_bar`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import ndimage as ndi
from sklearn.cluster import MiniBatchKMeans

from pairsr.io import find_info_bar, to_float32
from pairsr.region import Region, window_sums

#: Coarse cells the field is summarised on (the step grows with the field to keep to this).
TARGET_CELLS = 2**18
#: Cells a box spans along its shorter side at least (the step shrinks for small boxes).
MIN_BOX_CELLS = 4
#: Cells k-means is fitted on at most (the rest are assigned to the nearest class).
KMEANS_SAMPLE = 50000


@dataclass(frozen=True)
class Box(Region):
    """An HR box in LR pixels (a :class:`pairsr.region.Region`); ``gain``: the weighted coverage
    it added to the boxes before it (fraction of the field's structure)."""

    gain: float = 0.0

    def to_dict(self, pixel_size_nm: float | None, translation_nm=(0.0, 0.0)) -> dict:
        """JSON record; ``row_nm``/``col_nm``: the centre of the top-left pixel in nm (None
        without a pixel size), ``rows_nm``/``cols_nm`` the box's extent in nm."""
        out = {"row": self.row, "col": self.col, "rows": self.rows, "cols": self.cols}
        if pixel_size_nm:
            row_nm, col_nm = self.translation(pixel_size_nm, translation_nm)
            out.update(row_nm=row_nm, col_nm=col_nm,
                       rows_nm=self.rows * pixel_size_nm, cols_nm=self.cols * pixel_size_nm)
        else:
            out.update(row_nm=None, col_nm=None, rows_nm=None, cols_nm=None)
        out["gain"] = round(self.gain, 6)
        return out


@dataclass
class AcquisitionPlan:
    """The boxes :func:`plan_acquisition` proposes, best first.

    ``coverage``: weighted coverage of all boxes together (0-1); ``field_shape``: the LR field
    (rows, cols); ``usable_rows``: rows above the info bar (all without one); ``step``: LR pixels
    per coarse cell; ``classes``: structure classes found; ``thumbnail``: the coarse field
    (block means, float32) for plots; ``labels``: class of each cell (-1 outside the usable
    field).
    """

    boxes: list[Box]
    coverage: float
    field_shape: tuple[int, int]
    usable_rows: int
    step: int
    classes: int
    thumbnail: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)

    def to_dict(self, pixel_size_nm: float | None = None, translation_nm=(0.0, 0.0),
                **extra) -> dict:
        """The plan as JSON (``extra`` keys added, e.g. the source and zoom)."""
        return {"boxes": [b.to_dict(pixel_size_nm, translation_nm) for b in self.boxes],
                "coverage": round(self.coverage, 6),
                "field": {"rows": self.field_shape[0], "cols": self.field_shape[1],
                          "usable_rows": self.usable_rows},
                "pixel_size_nm": pixel_size_nm, "cell_px": self.step, "classes": self.classes,
                **extra}


def _block_stats(band: np.ndarray, step: int, halo: int) -> np.ndarray:
    """(3, h, w) block mean, standard deviation and RMS detail of the ``step × step`` cells of
    ``band`` (float32 rows with ``halo`` context rows above and below, removed after filtering)."""
    detail = ndi.gaussian_filter(band, 0.7) - ndi.gaussian_filter(band, 2.0)
    rows = band.shape[0] - 2 * halo
    core, detail = band[halo : halo + rows], detail[halo : halo + rows]
    h, w = rows // step, band.shape[1] // step

    def blocks(x):
        return x[: h * step, : w * step].reshape(h, step, w, step).mean(axis=(1, 3))

    mean = blocks(core)
    sd = np.sqrt(np.maximum(blocks(core * core) - mean * mean, 0))
    return np.stack([mean, sd, np.sqrt(blocks(detail * detail))])


def coarse_statistics(image, step: int, rows: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Block statistics (3, rows // step, cols // step) of a 2-D ``image`` (numpy, dask or zarr;
    integers scaled by their dtype), read in row bands of a few hundred rows: block mean,
    block standard deviation and block RMS of the LR-scale detail (difference of Gaussians,
    σ 0.7 and 2 px). ``rows``: only the first ``rows`` rows (above an info bar)."""
    rows = image.shape[0] if rows is None else rows
    halo = 8
    band = max(step, (512 // step) * step)
    parts = []
    for r0 in range(0, (rows // step) * step, band):
        r1 = min(r0 + band, (rows // step) * step)
        lo, hi = max(0, r0 - halo), min(rows, r1 + halo)
        data = to_float32(image[lo:hi])
        pad = (halo - (r0 - lo), halo - (hi - r1))
        data = np.pad(data, (pad, (0, 0)), mode="symmetric") if any(pad) else data
        parts.append(_block_stats(data, step, halo))
        if progress is not None:
            progress(r1, rows)
    return np.concatenate(parts, axis=1)


def _descriptors(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell descriptors (h, w, 6), robustly standardised, and weights (h, w)."""
    mean, sd, detail = stats
    context = [ndi.gaussian_filter(mean, 2.0), ndi.gaussian_gradient_magnitude(mean, 1.0),
               np.sqrt(ndi.gaussian_filter((mean - ndi.gaussian_filter(mean, 2.0)) ** 2, 2.0))]
    feats = np.stack([mean, sd, detail, *context], axis=-1).astype(np.float32)
    lo, mid, hi = np.percentile(feats.reshape(-1, feats.shape[-1]), [5, 50, 95], axis=0)
    feats = (feats - mid) / np.maximum(hi - lo, 1e-6)
    floor = np.percentile(detail, 2)  # noise-only detail: the quietest cells of the field
    weight = np.sqrt(np.maximum(detail**2 - floor**2, 0))
    return feats, weight


def choose_step(shape: tuple[int, int], box: tuple[int, int]) -> int:
    """LR pixels per coarse cell: about :data:`TARGET_CELLS` cells over the field, at least 2,
    and at most a :data:`MIN_BOX_CELLS`-th of the box's shorter side."""
    step = max(2, math.ceil(math.sqrt(shape[0] * shape[1] / TARGET_CELLS)))
    return max(2, min(step, min(box) // MIN_BOX_CELLS))


def plan_acquisition(
    lr,
    hr_shape: tuple[int, int],
    count: int = 1,
    *,
    zoom: float = 2.0,
    classes: int = 16,
    step: int | None = None,
    info_bar: bool = True,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> AcquisitionPlan:
    """Propose ``count`` HR boxes whose library would cover the field's structures best.

    Parameters
    ----------
    lr
        The LR field, 2-D (numpy, dask, zarr array or DataArray; integers scaled by their dtype).
    hr_shape
        The HR scan's size (rows, cols) in HR pixels; a box is ``hr_shape / zoom`` LR pixels.
    count
        Boxes to propose (greedy: each adds the most coverage to those before it).
    zoom
        HR pixels per LR pixel along an axis.
    classes
        Structure classes (k-means), fewer when the field has few cells.
    step
        LR pixels per coarse cell (default :func:`choose_step`).
    info_bar
        Keep boxes above an info bar found at the bottom (:func:`pairsr.io.find_info_bar`).
    progress
        Called as ``progress(rows_read, rows)`` while the field is read.

    Raises ``ValueError`` when a box does not fit in the field (above its info bar).
    """
    data = lr.data if isinstance(lr, xr.DataArray) else lr  # numpy, dask or zarr
    if len(data.shape) != 2:
        raise ValueError(f"the LR field must be 2-D, got shape {data.shape}")
    if count < 1 or zoom <= 0 or classes < 1:
        raise ValueError(f"need count >= 1, zoom > 0 and classes >= 1, got {count}, {zoom}, "
                         f"{classes}")
    rows, cols = int(data.shape[0]), int(data.shape[1])
    box = tuple(max(1, round(n / zoom)) for n in hr_shape)
    bar = find_info_bar(data) if info_bar else None
    usable = rows if bar is None else int(bar)
    if box[0] > usable or box[1] > cols:
        where = f" above its info bar (rows {usable}:{rows})" if bar is not None else ""
        raise ValueError(f"an HR scan of {hr_shape[0]}x{hr_shape[1]} HR px is {box[0]}x{box[1]} "
                         f"LR px at --zoom {zoom:g}: larger than the field ({usable}x{cols} LR "
                         f"px{where}); pass a smaller --hr-shape")
    step = step or choose_step((usable, cols), box)
    stats = coarse_statistics(data, step, usable, progress)
    feats, weight = _descriptors(stats)
    h, w = weight.shape
    flat = feats.reshape(-1, feats.shape[-1])
    k = max(1, min(classes, len(flat) // 8))
    rng = np.random.default_rng(seed)
    sample = flat[rng.choice(len(flat), min(len(flat), KMEANS_SAMPLE), replace=False)]
    kmeans = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    kmeans.fit(sample)
    labels = kmeans.predict(flat).reshape(h, w)

    bh, bw = min(h, max(1, round(box[0] / step))), min(w, max(1, round(box[1] / step)))
    mass = np.bincount(labels.ravel(), weights=weight.ravel(), minlength=k)
    sizes = np.bincount(labels.ravel(), minlength=k)
    share = np.maximum(1.0, np.minimum(bh * bw / k, sizes / 2))
    total = max(mass.sum(), 1e-12)
    covered = np.zeros((h, w), dtype=bool)
    seen = np.zeros(k)
    chosen: list[Box] = []
    for _ in range(count):
        gain = np.zeros((h - bh + 1, w - bw + 1))
        for c in np.flatnonzero(mass > 0):
            n = window_sums((labels == c) & ~covered, (bh, bw))
            gain += mass[c] * (np.exp(-seen[c] / share[c]) - np.exp(-(seen[c] + n) / share[c]))
        i, j = np.unravel_index(np.argmax(gain), gain.shape)
        covered[i : i + bh, j : j + bw] = True
        seen = np.bincount(labels[covered], minlength=k).astype(float)
        r0, c0 = min(i * step, usable - box[0]), min(j * step, cols - box[1])
        chosen.append(Box(int(r0), int(c0), box[0], box[1], float(gain[i, j] / total)))
    coverage = float((mass * (1 - np.exp(-seen / share))).sum() / total)
    return AcquisitionPlan(chosen, coverage, (rows, cols), usable, step, k, stats[0], labels)


def plot_plan(plan: AcquisitionPlan, path: str | Path) -> Path:
    """Write a PNG of the coarse field with the boxes drawn (red, then yellow, cyan, …) and
    numbered by their order."""
    from PIL import Image, ImageDraw

    from pairsr.register._plot import _to_rgb

    rgb = _to_rgb(plan.thumbnail)
    scale = max(1, 1024 // max(rgb.shape[:2]))
    image = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale))
    draw = ImageDraw.Draw(image)
    colours = ((255, 0, 0), (255, 255, 0), (0, 255, 255), (255, 0, 255), (0, 255, 0))
    f = scale / plan.step
    for i, b in enumerate(plan.boxes):
        colour = colours[i % len(colours)]
        corners = (b.col * f, b.row * f, (b.col + b.cols) * f - 1, (b.row + b.rows) * f - 1)
        draw.rectangle(corners, outline=colour, width=max(1, scale))
        draw.text((corners[0] + 3, corners[1] + 2), str(i + 1), fill=colour)
    path = Path(path)
    image.save(path)
    return path
