"""Physical-pair simulator: two independent scans of one specimen.

A physical LR image is *not* a blurred, downsampled HR image. Each simulated scan has its own

* geometry: pixel pitch, rotation and origin on the specimen (the HR scan covers a sub-area, about
  ``hr_fraction`` of the LR field, at ``zoom``× the pixel density, rotated by up to
  ``max_rotation_deg``, with a small magnification calibration error);
* scan distortion: a smooth random drift of every scan line (mostly along the slow-scan axis)
  plus fast-axis line jitter, in scan pixels;
* probe blur (Gaussian, wider along the fast axis for the dwell) and shot noise at its own dose
  (Poisson counts per pixel);
* detector response: gain, offset and gamma, then 8-bit quantisation.

Specimen coordinates are pixels of the specimen image ``S`` (row, col). Scan ``k`` samples pixel
``(r, c)`` at ``X = origin_k + pitch_k * R(theta_k) @ ((r, c) + drift_k(r))``, where
``drift_k(r) = (dy_k[r], dx_k[r])`` is stored per line. :func:`true_lr_coords` inverts the LR
scan to give the exact LR coordinate of every HR pixel centre; ``truth["matrix"]`` and
``truth["offset"]`` are its least-squares affine fit (``lr = matrix @ hr + offset``), the global
mapping a registration should find; the residual is the local distortion field.

``gt`` is the ideal noise-free rendering of the whole LR field on its SR output grid
(see :mod:`pairsr.grid`), with the HR scan's probe and detector response and without drift, so a
method can be scored where no HR exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pairsr.grid import sr_shape, sr_to_lr

#: Specimen pixels per LR pixel for the built-in specimen (the HR pitch is then 2 specimen px).
SYNTHETIC_SCALE = 4.0
#: Specimen pixels per LR pixel for a real HR micrograph given as specimen.
REAL_SCALE = 2.0


@dataclass
class SimulatedPair:
    """One simulated physical pair.

    ``lr``: uint8 (H, W); ``hr``: uint8 (h, w); ``gt``: float32 (2H, 2W) in [0, 1] HR-detector
    units; ``truth``: JSON-serialisable geometry, scan and detector parameters.
    """

    lr: np.ndarray
    hr: np.ndarray
    gt: np.ndarray
    truth: dict = field(default_factory=dict)


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def nanocomposite(
    shape: tuple[int, int], rng: np.random.Generator, scale: float = 4.0
) -> np.ndarray:
    """Built-in specimen: clustered nanoparticles of varied size in a textured host matrix.

    ``shape`` in specimen pixels; ``scale`` specimen pixels per LR pixel sets the feature sizes.
    Returns float32 in [0, 1].
    """
    h, w = shape
    # Host matrix: low-contrast texture at two scales, generated coarse and zoomed up (cheap).
    coarse = (max(h // 8, 4), max(w // 8, 4))
    tex = ndi.gaussian_filter(rng.standard_normal(coarse), 3) * 4.0
    tex += ndi.gaussian_filter(rng.standard_normal(coarse), 0.8) * 1.0
    tex = ndi.zoom(tex, (h / coarse[0], w / coarse[1]), order=1)[:h, :w]
    spec = (0.22 + 0.08 * tex / (np.abs(tex).max() + 1e-6)).astype(np.float32)

    # Particles: Poisson clusters of soft spheres with log-normal radii (1-12 LR px).
    n_clusters = max(1, int(h * w / (scale**2 * 6000)))
    centres = rng.uniform((0, 0), (h, w), size=(n_clusters, 2))
    per_cluster = rng.poisson(14, n_clusters) + 1
    spread = rng.uniform(3, 25, n_clusters) * scale
    pos = np.concatenate(
        [c + rng.standard_normal((m, 2)) * s for c, m, s in zip(centres, per_cluster, spread)]
    )
    loners = rng.uniform((0, 0), (h, w), size=(n_clusters * 4, 2))
    pos = np.concatenate([pos, loners])
    radii = np.clip(rng.lognormal(np.log(2.5 * scale), 0.55, len(pos)), 0.8 * scale, 12 * scale)
    levels = rng.uniform(0.55, 0.95, len(pos))
    for (y, x), r, lev in zip(pos, radii, levels):
        y0, y1 = max(int(y - r - 2), 0), min(int(y + r + 3), h)
        x0, x1 = max(int(x - r - 2), 0), min(int(x + r + 3), w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        d2 = ((yy - y) ** 2 + (xx - x) ** 2) / r**2
        # Sphere thickness profile, 1-px soft edge, brighter rim (secondary-electron contrast).
        inside = np.clip(1.0 - d2, 0.0, 1.0)
        edge = np.clip((1.0 - np.sqrt(d2)) * r, 0.0, 1.0)
        val = lev * (0.75 + 0.25 * np.sqrt(inside) + 0.15 * (1 - inside) * edge)
        spec[y0:y1, x0:x1] = np.maximum(spec[y0:y1, x0:x1], (val * edge).astype(np.float32))
    grain = ndi.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 0.7 * scale / 4)
    spec += 0.015 * grain
    return np.clip(spec, 0.0, 1.0)


def _drift(n_lines: int, rng: np.random.Generator, amplitude: float, jitter: float) -> np.ndarray:
    """Per-line scan distortion (2, n_lines) in scan px: smooth random drift + fast-axis jitter."""
    t = np.linspace(0.0, 1.0, n_lines)
    out = np.zeros((2, n_lines))
    for axis, amp in ((0, amplitude), (1, 0.6 * amplitude)):
        # A random smooth curve: a few low-frequency sinusoids plus a linear creep.
        k = np.arange(1, 5)
        coef = rng.standard_normal(4) / k**1.5
        phase = rng.uniform(0, 2 * np.pi, 4)
        curve = (coef[:, None] * np.sin(2 * np.pi * k[:, None] * t / 2 + phase[:, None])).sum(0)
        curve += rng.standard_normal() * t
        curve -= curve.mean()
        out[axis] = amp * curve / (np.abs(curve).max() + 1e-12)
    out[1] += jitter * rng.standard_normal(n_lines)
    return out


def _to_specimen(scan: dict, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Specimen coordinates (2, ...) of scan pixel coordinates ``rows``, ``cols``."""
    a = scan["pitch"] * _rotation(scan["rotation_deg"])
    x = np.tensordot(a, np.stack([rows, cols]), axes=1)
    return x + np.asarray(scan["origin"], dtype=float).reshape(2, *([1] * rows.ndim))


def _scan_positions(scan: dict, shape: tuple[int, int]) -> np.ndarray:
    """Specimen coordinates (2, H, W) sampled by a scan's pixel centres, drift included."""
    dy, dx = np.asarray(scan["drift"])
    rows = np.arange(shape[0], dtype=float)[:, None] + dy[:, None] + np.zeros((1, shape[1]))
    cols = np.arange(shape[1], dtype=float)[None, :] + dx[:, None]
    return _to_specimen(scan, rows, cols)


def _render(blurred: np.ndarray, coords: np.ndarray) -> np.ndarray:
    return ndi.map_coordinates(blurred, coords, order=1, mode="nearest").astype(np.float32)


def _blur(spec: np.ndarray, scan: dict) -> np.ndarray:
    sy, sx = scan["blur_sigma"]
    return ndi.gaussian_filter(spec, (sy * scan["pitch"], sx * scan["pitch"]), truncate=3.0)


def _detect(signal: np.ndarray, scan: dict, rng: np.random.Generator | None) -> np.ndarray:
    """Detector: Poisson counts at ``dose`` per unit signal, read noise, gamma, gain and offset."""
    if rng is not None:
        signal = rng.poisson(np.clip(signal, 0, None) * scan["dose"]) / scan["dose"]
        signal = signal + scan["read_noise"] * rng.standard_normal(signal.shape)
    signal = np.clip(signal, 0.0, None) ** scan["gamma"]
    return (scan["gain"] * signal + scan["offset"]).astype(np.float32)


def _random_scan(rng: np.random.Generator, pitch: float, rotation_deg: float, n_lines: int) -> dict:
    blur = rng.uniform(0.45, 0.8)
    return {
        "pitch": pitch,
        "rotation_deg": rotation_deg,
        "blur_sigma": [blur, blur * rng.uniform(1.0, 1.25)],  # scan pixels; wider along fast axis
        "dose": float(rng.uniform(15.0, 60.0)),  # counts per pixel at signal 1
        "read_noise": float(rng.uniform(0.005, 0.02)),
        "gain": float(rng.uniform(0.65, 0.95)),
        "offset": float(rng.uniform(0.02, 0.12)),
        "gamma": float(rng.uniform(0.8, 1.25)),
        "drift": _drift(n_lines, rng, rng.uniform(0.3, 1.2), rng.uniform(0.03, 0.12)).tolist(),
    }


def simulate_pair(
    specimen: np.ndarray | None = None,
    *,
    lr_shape: tuple[int, int] | None = None,
    seed: int = 0,
    zoom: float = 2.0,
    hr_fraction: float = 0.25,
    max_rotation_deg: float = 2.0,
    zoom_error: float = 0.005,
    scale: float | None = None,
    specimen_pixel_nm: float = 1.0,
) -> SimulatedPair:
    """Simulate an LR scan of a whole field and an independent HR scan of a sub-area.

    Parameters
    ----------
    specimen
        2-D float image in [0, 1] (e.g. a real HR micrograph), or None for the built-in
        nanocomposite.
    lr_shape
        LR field (rows, cols); default (944, 1280) for the built-in specimen, else the largest
        field the specimen covers at ``scale``.
    zoom
        Nominal HR/LR pixel-density ratio; the true one differs by up to ``zoom_error`` (relative).
    hr_fraction
        HR field area as a fraction of the LR field.
    scale
        Specimen pixels per LR pixel (default 4 for the built-in specimen, 2 for a real one).
    specimen_pixel_nm
        Specimen pixel size; sets the LR and HR pixel sizes written with the images.
    """
    rng = np.random.default_rng(seed)
    margin = 16.0  # specimen px kept around the field for drift and blur
    if specimen is None:
        scale = SYNTHETIC_SCALE if scale is None else scale
        lr_shape = lr_shape or (944, 1280)
        spec_shape = tuple(int(np.ceil(n * scale + 2 * margin)) for n in lr_shape)
        spec = nanocomposite(spec_shape, rng, scale)
        source = "built-in nanocomposite"
    else:
        spec = np.asarray(specimen, dtype=np.float32)
        if spec.ndim != 2:
            raise ValueError(f"specimen must be a 2-D image, got shape {spec.shape}")
        scale = REAL_SCALE if scale is None else scale
        fit = tuple(int((n - 2 * margin) // scale) for n in spec.shape)
        lr_shape = lr_shape or fit
        if lr_shape[0] > fit[0] or lr_shape[1] > fit[1] or min(lr_shape) < 32:
            raise ValueError(
                f"specimen of shape {spec.shape} covers at most an LR field of {fit} at "
                f"scale {scale}; asked for {lr_shape}"
            )
        source = "user specimen"
    lr_shape = (int(lr_shape[0]), int(lr_shape[1]))

    true_zoom = zoom * (1.0 + rng.uniform(-zoom_error, zoom_error))
    theta = float(rng.uniform(-max_rotation_deg, max_rotation_deg))
    side = np.sqrt(hr_fraction)
    hr_shape = (int(round(lr_shape[0] * side * zoom)), int(round(lr_shape[1] * side * zoom)))

    lr_scan = _random_scan(rng, scale, 0.0, lr_shape[0])
    lr_scan["origin"] = [margin, margin]
    hr_scan = _random_scan(rng, scale / true_zoom, theta, hr_shape[0])
    # Place the HR field anywhere its rotated footprint (plus drift room) fits inside the LR field.
    a_hr = hr_scan["pitch"] * _rotation(theta)
    corners = np.array([[0, 0], [0, hr_shape[1] - 1], [hr_shape[0] - 1, 0],
                        [hr_shape[0] - 1, hr_shape[1] - 1]], dtype=float)
    extent = corners @ a_hr.T  # specimen offsets of the corners from the HR origin
    room = 4 * scale
    lo = margin + room - extent.min(0)
    hi = margin + (np.array(lr_shape) - 1) * scale - room - extent.max(0)
    if np.any(hi < lo):
        raise ValueError(f"hr_fraction={hr_fraction} is too large for the HR to fit inside the LR")
    hr_scan["origin"] = rng.uniform(lo, hi).tolist()

    lr_blur = _blur(spec, lr_scan)
    lr = _detect(_render(lr_blur, _scan_positions(lr_scan, lr_shape)), lr_scan, rng)
    hr_blur = _blur(spec, hr_scan)
    hr = _detect(_render(hr_blur, _scan_positions(hr_scan, hr_shape)), hr_scan, rng)

    # Ground truth on the SR grid of the LR field: HR probe and detector, no drift, no noise.
    z = int(round(zoom))
    gshape = sr_shape(lr_shape, z)
    g_rows, g_cols = np.meshgrid(
        sr_to_lr(np.arange(gshape[0]), z), sr_to_lr(np.arange(gshape[1]), z), indexing="ij"
    )
    gcoords = _to_specimen(lr_scan, g_rows, g_cols)
    gt = _detect(_render(hr_blur, gcoords), hr_scan, None)

    truth = {
        "seed": seed,
        "specimen": source,
        "scale": scale,
        "lr_shape": list(lr_shape),
        "hr_shape": list(hr_shape),
        "nominal_zoom": zoom,
        "lr_pixel_size_nm": scale * specimen_pixel_nm,
        "hr_pixel_size_nm": scale * specimen_pixel_nm / true_zoom,
        "lr_scan": lr_scan,
        "hr_scan": hr_scan,
    }
    truth.update(_affine_truth(truth))
    to_u8 = lambda x: np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)  # noqa: E731
    return SimulatedPair(lr=to_u8(lr), hr=to_u8(hr), gt=np.clip(gt, 0, 1), truth=truth)


def true_lr_coords(truth: dict, hr_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Exact LR (row, col) coordinate of every HR pixel centre, both scans' drift included.

    Returns float64 of shape (2, h, w).
    """
    hr_shape = tuple(hr_shape or truth["hr_shape"])
    lr_scan = truth["lr_scan"]
    x = _scan_positions(truth["hr_scan"], hr_shape)
    a_inv = np.linalg.inv(lr_scan["pitch"] * _rotation(lr_scan["rotation_deg"]))
    nominal = np.tensordot(a_inv, x - np.asarray(lr_scan["origin"])[:, None, None], axes=1)
    dy, dx = np.asarray(lr_scan["drift"])
    lines = np.arange(len(dy), dtype=float)
    p = nominal.copy()
    for _ in range(6):  # fixed point: p = nominal - drift(p_row); the drift is smooth and small
        p[0] = nominal[0] - np.interp(p[0], lines, dy)
        p[1] = nominal[1] - np.interp(p[0], lines, dx)
    return p


def _affine_truth(truth: dict) -> dict:
    """Least-squares affine fit ``lr = matrix @ hr + offset`` of the exact correspondence."""
    h, w = truth["hr_shape"]
    step = max(1, min(h, w) // 64)
    sub = true_lr_coords(truth)[:, ::step, ::step]
    rows, cols = np.meshgrid(np.arange(0, h, step, dtype=float), np.arange(0, w, step, dtype=float),
                             indexing="ij")
    design = np.stack([rows.ravel(), cols.ravel(), np.ones(rows.size)], axis=1)
    coef, *_ = np.linalg.lstsq(design, sub.reshape(2, -1).T, rcond=None)
    matrix, offset = coef[:2].T, coef[2]
    scale = np.sqrt(abs(np.linalg.det(matrix)))
    rotation = np.rad2deg(np.arctan2(matrix[1, 0] - matrix[0, 1], matrix[0, 0] + matrix[1, 1]))
    return {
        "matrix": matrix.tolist(),
        "offset": offset.tolist(),
        "zoom": float(1.0 / scale),
        "rotation_deg": float(rotation),
    }


def save_pair(pair: SimulatedPair, outdir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``lr.tif``, ``hr.tif``, ``gt.tif`` (float32) and ``truth.json`` into ``outdir``."""
    from pairsr.io import OutputExistsError, write_image

    outdir = Path(outdir)
    names = ("lr.tif", "hr.tif", "gt.tif", "truth.json")
    existing = [n for n in names if (outdir / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{outdir}: {', '.join(existing)} exist; pass overwrite=True")
    outdir.mkdir(parents=True, exist_ok=True)
    t = pair.truth
    write_image(outdir / "lr.tif", pair.lr, pixel_size_nm=t["lr_pixel_size_nm"], overwrite=True)
    write_image(outdir / "hr.tif", pair.hr, pixel_size_nm=t["hr_pixel_size_nm"], overwrite=True)
    write_image(outdir / "gt.tif", pair.gt, pixel_size_nm=t["lr_pixel_size_nm"] / 2,
                overwrite=True)
    (outdir / "truth.json").write_text(json.dumps(t, indent=1))
    return outdir
