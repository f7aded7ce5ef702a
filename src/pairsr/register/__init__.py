"""Register a physical LR/HR image pair (the paper's Sec. III-A, with sub-pixel accuracy).

Mapping convention (README, :mod:`pairsr.grid`): ``lr = matrix @ hr + offset`` for ``(row, col)``
pixel-centre coordinates. With the local field ``disp`` (:class:`LocalField`, HR pixels, stored
as spline coefficients and evaluated where asked), the LR coordinate of HR point ``x`` is
``matrix @ (x + disp(x)) + offset``. :func:`warp_hr_to_sr` resamples the HR onto the SR grid of
a region of the LR (:class:`pairsr.region.Region`), computing only the HR's footprint in it
(:func:`footprint_region`).

Pipeline of :func:`register_pair`:

1. **Coarse global search**: the HR image, reduced to a coarse LR scale, is found anywhere in the
   (equally reduced) LR image by an FFT normalised-cross-correlation template search
   (:func:`skimage.feature.match_template`) over a sweep of rotations, for both signs of the
   correlation (an inverted detector contrast). A peak well above the map's own chance level and
   well above the second-best peak is the match; otherwise the best few peaks are candidates.
2. **Fine global fit**: Gauss-Newton (ECC-style) on a pyramid of the LR image against the HR image
   blurred and reduced to the same scale (the LR scan is the blurrier one), through a similarity
   and then an affine transform, with a quadratic intensity model (gain, offset, gamma) fitted
   jointly, so that contrast, brightness and gamma differences do not bias it. The extra blur that
   brings the HR to the LR resolution is estimated on the way. The decision rests on this fit:
   it must explain most of the LR's variance that the noise of both images lets any fit explain,
   and, among several candidates (one period apart on a periodic specimen), one fit must be
   better than the others by more than the noise allows (a paired test on the LR pixels both
   cover). The fit runs on the LR pixels under the HR's footprint, with the exact gradient of
   the HR's cubic spline; its parameters' covariance (cluster-robust over the residuals'
   correlation length) propagated to the HR's corners is the registration's predicted
   precision (``corner_sd``), with the misalignment the local patches still show added.
3. **Local field**: the paper's patch search (its Eq. 1): NCC of HR patches (blurred to the LR
   resolution) against the LR resampled on the HR grid through the global mapping (``Ir``), on
   textured patches (signal variance well above the noise), then a sub-pixel Lucas-Kanade step
   with the same intensity model, quality tests (peak NCC, best/second peak, peak off the search
   border), and a smooth field fitted to the accepted shifts, each weighted by its inverse
   covariance, with robust (Tukey) outlier rejection. The field is the sum of a per-line shift
   of each scan, a P-spline in the HR row plus one in the LR row, since scan drift moves whole
   scan lines. The patches' field is a start only where it improves the fine fit beyond the
   noise (a paired test on every LR pixel under the HR, as for the candidates). The field is
   then fitted to the LR image itself: Gauss-Newton with the fine fit's intensity model on
   every LR pixel under the HR (or a regular sub-grid of them), with a curvature penalty, from
   no field and from the patches' field, the lower objective winning. A few noisy patch shifts
   constrain the field less than every pixel does, and without a field the global affine
   follows where the HR has texture, not the whole HR. The global affine is then refitted as
   the least-squares affine of the whole HR→LR correspondence, so ``disp`` holds only the
   non-affine rest. Patch sizes, search radius and knots scale with the zoom, the HR's size
   and the patches accepted. The patch search runs block by block (a dask HR's chunks, or
   blocks of an in-memory HR, with a halo); the global step and the image fit read the HR
   reduced. Both run on ``threads`` threads of the calling process, never on a Dask scheduler
   (``register_pair(threads=...)``).

A dask LR (a zarr survey) is read reduced, block by block, for the coarse search, and at full
resolution only around the candidates' and the match's footprints (fine fit, noise, local step).

Failure modes raise :class:`RegistrationError` (a ``ValueError``) with the reason and what to
do, in command-line terms, or warn (HR partly outside the LR; inverted contrast; local field
skipped: the image fit folds and the patches' field is not confirmed; a predicted precision
worse than ``MAX_CORNER_SD`` LR px: "imprecise registration").
"""

from pairsr.register._mapping import (
    LocalField,
    Registration,
    RegistrationError,
    RidgeSpline,
    footprint_region,
    warp_hr_to_sr,
)
from pairsr.register._pair import register_pair
from pairsr.register._plot import plot_registration

__all__ = ["LocalField", "Registration", "RegistrationError", "RidgeSpline", "footprint_region",
           "plot_registration", "register_pair", "warp_hr_to_sr"]
