import numpy as np
import pytest

from pairsr.grid import BICUBIC_HALO, bicubic, interpolate, lr_to_sr, sr_shape, sr_to_lr


def test_sr_pixel_centres_follow_the_area_convention():
    # x2: SR pixels 0 and 1 share LR pixel 0 and sit at -1/4 and +1/4 of its centre.
    assert np.allclose(sr_to_lr(np.arange(4)), [-0.25, 0.25, 0.75, 1.25])
    assert np.allclose(sr_to_lr(np.arange(3), zoom=3), [-1 / 3, 0, 1 / 3])
    x = np.linspace(-3, 40, 17)
    assert np.allclose(sr_to_lr(lr_to_sr(x)), x)
    assert sr_shape((5, 7)) == (10, 14)


def test_bicubic_reproduces_a_linear_ramp_at_the_sr_pixel_centres():
    rows, cols = np.indices((24, 31), dtype=float)
    lr = (0.5 + 0.01 * rows - 0.007 * cols).astype(np.float32)
    up = bicubic(lr)
    assert up.shape == (48, 62) and up.dtype == np.float32
    r, c = np.meshgrid(sr_to_lr(np.arange(48)), sr_to_lr(np.arange(62)), indexing="ij")
    expected = 0.5 + 0.01 * r - 0.007 * c
    # Exact away from the mirrored borders (a ramp is not mirror-symmetric there).
    assert np.abs(up - expected)[16:-16, 16:-16].max() < 1e-5


def test_bicubic_equals_interpolation_at_the_sr_grid_coordinates():
    rng = np.random.default_rng(0)
    lr = rng.random((20, 26)).astype(np.float32)
    r, c = np.meshgrid(sr_to_lr(np.arange(40)), sr_to_lr(np.arange(52)), indexing="ij")
    assert np.allclose(bicubic(lr), interpolate(lr, np.stack([r, c])), atol=1e-6)


def test_bicubic_is_local_within_its_halo():
    """A tile with BICUBIC_HALO LR pixels of context gives the whole-image result inside it."""
    rng = np.random.default_rng(1)
    lr = rng.random((80, 90)).astype(np.float32)
    whole = bicubic(lr)
    y0, y1, x0, x1 = 30, 50, 35, 60
    h = BICUBIC_HALO
    tile = bicubic(lr[y0 - h : y1 + h, x0 - h : x1 + h])[2 * h : -2 * h, 2 * h : -2 * h]
    assert np.abs(tile - whole[2 * y0 : 2 * y1, 2 * x0 : 2 * x1]).max() < 1e-5


def test_bicubic_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        bicubic(np.zeros((2, 3, 4)))
