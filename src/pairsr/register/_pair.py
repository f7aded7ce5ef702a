"""`register_pair`: the registration pipeline (see the package docstring)."""

from __future__ import annotations

import warnings

import numpy as np

from pairsr.grid import BICUBIC_HALO
from pairsr.patches import cpus
from pairsr.register._field import (
    IMAGE_SMOOTHING,
    _absorb_affine,
    _field_gain,
    _image_field,
    _local_field,
    _ScanLineField,
)
from pairsr.register._global import PRECISION_BLOCK, _global
from pairsr.register._images import (
    _as_image,
    _central,
    _is_dask,
    _level_window,
    _noise_sigma,
    _reduce,
    _Window,
)
from pairsr.register._local import _PatchSearch
from pairsr.register._mapping import Registration, RegistrationError

#: LR pixels by which scan drift may stretch the HR's extent: widens the accepted zoom range.
DRIFT_ALLOWANCE = 1.0
#: Least significance (σ of the noise) by which the patches' local field must improve the fine
#: fit (a paired test on the LR pixels, :func:`pairsr.register._field._field_gain`) to start
#: the image's field: a field fitted to a few patches can follow their noise, and its affine
#: part then moves the registration off where the image fit put it.
MIN_FIELD_SIGNIFICANCE = 2.0
#: Relative curvature penalties (to the patches' total weight) of the local field's P-splines
#: among which the LR image chooses (:func:`register_pair`): how much of the patches' shifts
#: is drift, not their noise, depends on the pair (the dose, the texture, the drift).
SMOOTHINGS = (1.0, 0.1, 0.01, 0.001)
#: HR pixels a side of the blocks an in-memory HR's patch search runs in (as dask tasks, on
#: the current scheduler): its memory follows the block, not the HR (results do not depend on
#: the blocks, :func:`pairsr.register._local._patch_results`).
LOCAL_BLOCK = 1024
#: Most HR pixels that the fine fits (:func:`pairsr.register._field._image_field`,
#: :func:`pairsr.register._field._field_gain`) hold in memory (float64, a few copies): a larger
#: HR is reduced by the least integer factor that brings it under.
FINE_HR_PIXELS = 2**26


def _patch_search(hr_shape: tuple[int, int], zoom: float, blur: float, size: int | None,
                  step: int | None, radius: int | None) -> _PatchSearch:
    """Local-search parameters scaled to the pair (HR px): patches of 24 LR px (at most a third
    of the HR's side, at least 16 px) spaced by half a patch, searched ±3 LR px; ``None``
    takes the scaled default."""
    if size is None:
        size = int(np.clip(round(24 * zoom), 16, max(16, min(hr_shape) // 3)))
    step = max(1, size // 2) if step is None else step
    radius = max(2, round(3 * zoom)) if radius is None else radius
    return _PatchSearch(size, step, radius, blur)


def _local_window(lr, reg: Registration, opts: _PatchSearch) -> _Window:
    """The full-resolution LR around the HR footprint that the local step reads: the global
    footprint's box, widened by the bicubic halo and four search radii (the field's reach)."""
    box = reg.lr_box(local=False)
    margin = BICUBIC_HALO + 4 * (opts.radius / reg.zoom + 1)
    return _level_window(lr, 1, box[0] - margin, box[1] + margin)


def register_pair(
    lr,
    hr,
    zoom: float = 2.0,
    *,
    max_rotation_deg: float = 10.0,
    zoom_tolerance: float = 0.03,
    affine: bool = True,
    local: bool = True,
    allow_inversion: bool = True,
    min_ncc: float | None = None,
    min_peak_ratio: float = 1.5,
    patch_size: int | None = None,
    patch_step: int | None = None,
    search_radius: int | None = None,
    scan_knots: int = 12,
    smoothing: float | None = None,
    threads: int | None = None,
) -> Registration:
    """Register an HR scan of a sub-area to the LR scan of the whole field.

    Parameters
    ----------
    lr, hr
        2-D images (integers are scaled to [0, 1] by their dtype). Either may be a chunked dask
        array (e.g. a zarr store): the LR is read reduced for the search, block by block, and at
        full resolution only around the HR's footprint; the HR is read reduced for the global
        step and chunk by chunk for the local one.
    zoom
        Nominal HR/LR pixel-density ratio; the found one must be within ``zoom_tolerance``
        (relative) of it, plus what :data:`DRIFT_ALLOWANCE` LR px of drift across the HR give.
    max_rotation_deg
        Rotation search range ±, degrees.
    affine
        Refine a full affine at the finest level (else a similarity).
    local
        Estimate the local displacement field (scan drift).
    allow_inversion
        Accept, with a warning, an HR whose contrast is inverted with respect to the LR (else
        it is an error).
    min_ncc
        Least coarse-search NCC peak, on top of the significance test (None: that test alone).
    min_peak_ratio
        Ratio of the best to the second-best coarse peak above which the coarse match is unique;
        below it, the peaks within that ratio are refined and compared at the finest level.
    patch_size, patch_step, search_radius
        Local patch search, HR pixels; None scales them with the zoom and the HR size (24, 12
        and 3 LR px).
    scan_knots, smoothing
        Local field: most knot intervals over each scan's height (fewer where fewer patch rows
        fit; the patches' field also where fewer patches are accepted), and the relative
        curvature penalty of the field fitted to the LR image (None:
        :data:`~pairsr.register._field.IMAGE_SMOOTHING`). The patches' field, its start,
        takes of :data:`SMOOTHINGS` the one that improves the fine fit most significantly.
    threads
        Threads of this process that the rotation search, the FFTs of the patch search and the
        reading of a dask ``hr`` use (default: the CPUs this process may use). Nothing runs on
        a Dask scheduler or client: a task on a worker passes its share
        (:data:`pairsr.cluster.TASK_THREADS`).

    Returns
    -------
    Registration

    Raises
    ------
    RegistrationError
        HR not found in the LR (coarse match within chance, and no candidate that explains the
        LR); ambiguous match (a periodic specimen with nothing aperiodic in the HR field);
        contrast inverted (with ``allow_inversion=False``); rotation at the edge of the search
        range; zoom out of range; less than half of the HR inside the LR. A warning is given
        when part of the HR lies outside the LR, when the contrast is inverted, when the
        local field is skipped, and when the predicted corner error ``corner_sd`` exceeds
        :data:`MAX_CORNER_SD` LR px (imprecise registration).
    """
    lr = _as_image(lr, "lr", allow_dask=True)
    hr = _as_image(hr, "hr", allow_dask=True)
    if not zoom > 0:
        raise ValueError(f"zoom must be positive, got {zoom}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    threads = threads or cpus()
    reg = _global(lr, hr, zoom, max_rotation_deg=max_rotation_deg, affine=affine,
                  allow_inversion=allow_inversion, min_ncc=min_ncc,
                  min_peak_ratio=min_peak_ratio, threads=threads)
    # Scan drift of up to DRIFT_ALLOWANCE LR px across the HR's extent scales the global fit.
    tolerance = zoom_tolerance + DRIFT_ALLOWANCE * zoom / min(hr.shape)
    if abs(reg.zoom / zoom - 1) > tolerance:
        raise RegistrationError(
            f"found zoom {reg.zoom:.4f} is outside the accepted range {zoom:g} ± "
            f"{100 * tolerance:.3g} %: if that is the pair's zoom, pass --zoom "
            f"{reg.zoom:.3g}; else the match is wrong"
        )
    if abs(reg.rotation_deg) > max_rotation_deg:
        raise RegistrationError(
            f"found rotation {reg.rotation_deg:+.2f}° is at the edge of the search range "
            f"±{max_rotation_deg:g}°; widen it with --max-rotation"
        )
    inside = reg.inside_fraction
    if inside < 0.5:
        raise RegistrationError(
            f"only {100 * inside:.0f} % of the HR image lies inside the LR image (need 50 %): "
            "the HR must image a sub-area of the LR field; use the LR scan that contains it"
        )
    if inside < 0.999:
        warnings.warn(f"{100 * (1 - inside):.1f} % of the HR image lies outside the LR image",
                      stacklevel=2)
    if local:
        hr_signed = 1.0 - hr if reg.inverted else hr
        hr_blocks = hr_signed
        if not _is_dask(hr) and max(hr.shape) > LOCAL_BLOCK:
            import dask.array as da

            hr_blocks = da.from_array(hr_signed, chunks=LOCAL_BLOCK)
        opts = _patch_search(hr.shape, reg.zoom, reg.blur_sigma, patch_size, patch_step,
                             search_radius)
        window = _local_window(lr, reg, opts)
        fits, reg.patches_tried, unmodelled, skipped = _local_field(
            window, hr_blocks, reg.matrix, reg.offset,
            _noise_sigma(_central(hr, threads=threads)), opts, scan_knots, SMOOTHINGS, threads,
        )
        reg.patches_accepted = 0
        # The fine fits compare the LR with the HR at its own resolution (decimating it to the
        # LR's density aliases its detail into what the fit compares), reduced only where it
        # would exceed FINE_HR_PIXELS.
        f1 = max(1, int(np.ceil(np.sqrt(hr.size / FINE_HR_PIXELS))))
        hr1 = _reduce(hr_signed, f1, threads)
        sigma = np.sqrt(max(reg.blur_sigma**2 - (0.5 * f1 if f1 > 1 else 0.0) ** 2, 0)) / f1
        start = None
        block = PRECISION_BLOCK * np.hypot(1.0, reg.blur_sigma / reg.zoom)  # LR px
        if fits:
            # The LR image chooses the patch field's stiffness: the one whose improvement of
            # the fit is the most significant (a rougher field that follows the patches'
            # noise explains the LR's noise a little too, and the noise of the difference grows).
            gains = [_field_gain(window, hr1, f1, sigma,
                                 Registration(reg.matrix, reg.offset, reg.lr_shape, reg.hr_shape,
                                              local_field=fit.field), block) for fit in fits]
            best = int(np.argmax([gain[2] for gain in gains]))
            fit, (without, with_, significance) = fits[best], gains[best]
            if significance >= MIN_FIELD_SIGNIFICANCE:
                start = fit.field
                reg.patches_accepted = fit.accepted
                # What the field leaves is local (line jitter, patch noise): it averages out
                # over the patches in the affine's 6 parameters.
                unmodelled = fit.left * np.sqrt(6 / max(fit.accepted, 6))
            else:
                # The image does not confirm the misalignment that the patches show: their
                # noise, as what a field leaves, averages out over them.
                unmodelled *= np.sqrt(6 / max(fit.accepted, 6))
                skipped = (f"the local field from {reg.patches_tried} patches does not improve "
                           f"the fit beyond the noise (fraction of the LR's variance left "
                           f"{with_:.4f} with it, {without:.4f} without: {significance:.1f}σ, "
                           f"need {MIN_FIELD_SIGNIFICANCE:g}σ)")
        # The LR image fits the field itself, from the patches' field where the image confirms
        # it: every LR pixel under the HR constrains it, not only a few noisy patch shifts.
        knots = int(np.clip(opts.rows(hr.shape[0]) - 1, 1, scan_knots))
        image = _image_field(window, hr1, f1, sigma, reg.matrix, reg.offset,
                             _ScanLineField(reg.matrix, reg.offset, hr.shape, lr.shape[0], knots),
                             IMAGE_SMOOTHING if smoothing is None else smoothing, block, start)
        field = start if image is None else image.field
        if field is not None:
            reg.matrix, reg.offset, reg.local_field = _absorb_affine(
                reg.matrix, reg.offset, field, hr.shape, lr.shape)
        else:
            warnings.warn(f"local registration skipped: the field fitted to the LR image folds "
                          f"(or under 64 LR pixels lie inside the HR), and {skipped}; the "
                          "registration is global only", stacklevel=2)
        if image is not None:  # its own precision, where it exceeds the global fit's
            reg.corner_sd = max(reg.corner_sd, image.corner_sd)
        if np.isfinite(unmodelled):  # HR px → LR px
            reg.corner_sd = float(np.hypot(reg.corner_sd, unmodelled / reg.zoom))
    if reg.corner_sd > MAX_CORNER_SD:
        warnings.warn(_imprecise(reg), stacklevel=2)
    return reg


#: Predicted corner error (RMS, LR px) above which a registration is reported as imprecise.
MAX_CORNER_SD = 0.25


def _imprecise(reg: Registration) -> str:
    """The warning for a registration whose predicted error exceeds :data:`MAX_CORNER_SD`."""
    return (
        f"imprecise registration: the HR's corners are placed in the LR to about "
        f"±{reg.corner_sd:.2f} LR px (predicted from the fit's residuals and the local "
        f"misalignment it leaves; above {MAX_CORNER_SD:g}), which blurs what the model learns; "
        f"a larger HR field (more LR pixels overlapped), more counts per pixel in both scans, "
        f"or less scan drift improve it"
    )
