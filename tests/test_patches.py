import numpy as np
import pytest

from pairsr.patches import (
    cpus,
    ordered_window_sums,
    overlap_average,
    sample_windows,
    valid_corners,
)
from pairsr.sparse import FEATURE_REACH, scsr_channels


@pytest.mark.parametrize(("n", "stride"), [(9, 1), (9, 2), (4, 2), (5, 3), (5, 5)])
def test_overlap_average_of_the_patches_themselves_is_the_image(n, stride):
    up = np.random.default_rng(1).random((23, 30)).astype(np.float32)
    out = overlap_average(up, n, stride, lambda p: p[:, 0], step=50)
    np.testing.assert_allclose(out, up, atol=3e-6)  # float32 sums of up to n² estimates


@pytest.mark.parametrize(("n", "lattice"), [(9, 2), (4, 2), (5, 3), (3, 3), (5, 4)])
def test_overlap_average_of_kept_patches_is_the_image_and_tiles_agree(n, lattice):
    """With ``keep``, the lattice patches and the kept others still reproduce the image, only
    the chosen ones are estimated, and a tile starting on the lattice gets the same result."""
    up = np.random.default_rng(4).random((29, 31)).astype(np.float32)
    seen = []

    def keep(band):  # windows of mean above 1/2, by top-left corner
        return ordered_window_sums(band[0], n) > 0.5 * n * n

    def estimate(p):
        seen.append(len(p))
        return p[:, 0] * (1 + p[:, 0].std(axis=1))[:, None]

    out = overlap_average(up, n, 1, lambda p: p[:, 0], step=40, keep=keep, lattice=lattice)
    np.testing.assert_allclose(out, up, atol=3e-6)
    def none(band):
        return np.zeros((band.shape[1] - n + 1, band.shape[2] - n + 1), bool)

    nothing = overlap_average(up, n, 1, lambda p: p[:, 0], keep=none, lattice=lattice)
    np.testing.assert_allclose(nothing, up, atol=3e-6)  # the lattice alone covers every pixel
    full = overlap_average(up, n, 1, estimate, keep=keep, lattice=lattice)
    assert 29 * 31 / lattice**2 < sum(seen) < 29 * 31  # the lattice and some of the others
    c, r0, c0 = n - 1, lattice, 2 * lattice  # the tile's corner, on the lattice
    tile = overlap_average(up[r0 : r0 + 2 * c + 8, c0 : c0 + 2 * c + 9], n, 1, estimate,
                           keep=keep, lattice=lattice)  # fmt: skip
    np.testing.assert_allclose(tile[c:-c, c:-c], full[r0 + c : r0 + c + 8, c0 + c : c0 + c + 9],
                               atol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="keep needs stride 1"):
        overlap_average(up, n, 2, estimate, keep=keep)


def test_window_sums_are_the_windows_sums_and_the_same_in_a_crop():
    image = np.random.default_rng(3).random((20, 17)).astype(np.float32)
    sums = ordered_window_sums(image, 4)
    direct = [[image[i : i + 4, j : j + 4].sum() for j in range(14)] for i in range(17)]
    np.testing.assert_allclose(sums, direct, rtol=1e-6)
    # bit for bit in a crop:
    np.testing.assert_array_equal(ordered_window_sums(image[3:15, 5:], 4), sums[3:12, 5:])


@pytest.mark.parametrize(("channels", "reach"), [(None, 0), (scsr_channels, FEATURE_REACH)])
def test_overlap_average_needs_exactly_its_reach_of_context(channels, reach):
    """An output pixel depends on the pixels within n - 1 (+ the features' reach) of it."""
    n = 5
    up = np.random.default_rng(2).random((50, 50)).astype(np.float32)

    def estimate(p):  # every output pixel depends on the whole patch and all channels
        return p[:, 0] * (1 + p.std(axis=(1, 2)))[:, None]

    full = overlap_average(up, n, 1, estimate, channels=channels)
    for context, equal in [(n - 1 + reach, True), (n - 2 + reach, False)]:
        crop = up[20 - context : 30 + context, 15 - context : 35 + context]
        out = overlap_average(crop, n, 1, estimate, channels=channels)
        assert np.allclose(out[context:-context, context:-context], full[20:30, 15:35],
                           atol=1e-6) == equal  # fmt: skip


def test_overlap_average_is_the_same_on_any_number_of_threads_and_steps():
    up = np.random.default_rng(3).random((41, 37)).astype(np.float32)
    seen = []

    def estimate(p):
        seen.append(len(p))
        return np.sqrt(p[:, 0]) * p[:, 0].mean(axis=1, keepdims=True)

    one = overlap_average(up, 7, 1, estimate, step=10**6)
    assert seen == [41 * 37]
    many = overlap_average(up, 7, 1, estimate, step=3 * 37, workers=3)
    assert max(seen[1:]) == 3 * 37 and sum(seen[1:]) == 41 * 37
    np.testing.assert_allclose(many, one, rtol=1e-6)


def test_kept_windows_go_in_steps_of_about_step_chosen_and_the_result_is_the_same():
    """With ``keep``, a step holds the chosen windows of as many rows as bring about ``step`` of
    them (flat rows cost nothing), whatever the threads; the result does not depend on it."""
    up = np.random.default_rng(5).random((60, 40)).astype(np.float32)
    up[20:50] = 0.5  # flat rows: only the lattice's windows are chosen there
    seen = []

    def keep(band):
        mean = ordered_window_sums(band[0], 5) / 25
        return ordered_window_sums(band[0] ** 2, 5) / 25 - mean**2 > 1e-3

    def estimate(p):
        seen.append(len(p))
        return np.sqrt(p[:, 0]) * p[:, 0].mean(axis=1, keepdims=True)

    one = overlap_average(up, 5, 1, estimate, step=10**6, keep=keep)
    total = seen.pop()
    many = overlap_average(up, 5, 1, estimate, step=100, keep=keep, workers=2)
    assert sum(seen) == total and max(seen) <= 100 + 40  # at most one row over
    assert len(seen) < -(-60 * 40 // 100)  # fewer steps than full-grid steps of 100 windows
    np.testing.assert_allclose(many, one, rtol=1e-6)


def test_overlap_average_rejects_bad_input():
    with pytest.raises(ValueError, match="finite 2-D"):
        overlap_average(np.full((9, 9), np.nan), 3, 1, lambda p: p[:, 0])
    with pytest.raises(ValueError, match="stride"):
        overlap_average(np.zeros((9, 9)), 3, 4, lambda p: p[:, 0])


def test_sample_windows_draws_valid_windows_without_replacement():
    rng = np.random.default_rng(4)
    a = rng.random((2, 20, 30)).astype(np.float32)
    a[1, 5:8, 10:12] = np.nan
    b = rng.random((2, 12, 12)).astype(np.float32)
    available = len(valid_corners(np.isnan(a[1]), 4)[0]) + 9 * 9
    windows, total = sample_windows([a, b], 4, 10**6, np.random.default_rng(0))
    assert total == available and windows.shape == (available, 2, 16)
    assert np.isfinite(windows).all()
    assert len(np.unique(windows[:, 0], axis=0)) == available  # each window once
    some, _ = sample_windows([a, b], 4, 50, np.random.default_rng(0))
    again, _ = sample_windows([a, b], 4, 50, np.random.default_rng(0))
    np.testing.assert_array_equal(some, again)
    assert some.shape == (50, 2, 16)
    with pytest.raises(ValueError, match="no fully valid"):
        sample_windows([np.full((2, 5, 5), np.nan, np.float32)], 4, 10, rng)


def test_cpus_are_those_this_process_may_run_on():
    """The default threads follow the process's CPU affinity (a SLURM step, ``taskset``), not
    the machine's core count."""
    import os
    import subprocess
    import sys

    assert cpus() == len(os.sched_getaffinity(0)) >= 1
    one = subprocess.run([sys.executable, "-c", "from pairsr.patches import cpus; print(cpus())"],
                         capture_output=True, text=True, check=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert one.stdout.strip() == "1"


def test_scratch_reuses_one_growing_buffer_per_name_and_thread():
    from concurrent.futures import ThreadPoolExecutor

    from pairsr.patches import Scratch

    scratch = Scratch()
    a = scratch("x", (2, 3))
    assert a.shape == (2, 3) and a.dtype == np.float32
    assert np.shares_memory(a, scratch("x", (3, 2)))  # fits: the same buffer
    assert not np.shares_memory(a, scratch("y", (2, 3)))  # another name
    big = scratch("x", (4, 4))  # grows
    assert not np.shares_memory(a, big) and np.shares_memory(big, scratch("x", (1, 5)))
    with ThreadPoolExecutor(1) as pool:  # another thread has its own
        assert not np.shares_memory(big, pool.submit(scratch, "x", (4, 4)).result())
