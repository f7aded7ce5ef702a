"""Tests of the paired patch library (pairsr.library)."""

from __future__ import annotations

import numpy as np
import pytest

from pairsr.library import (
    LIBRARY_FILE,
    Library,
    build_library,
    extract_patches,
    sample_patches,
)


def _windows(up, hr, n, stride=1, mask=None):
    """Brute-force reference: every fully valid window pair, row-major, as flat lists."""
    ups, hrs = [], []
    for r in range(0, up.shape[0] - n + 1, stride):
        for c in range(0, up.shape[1] - n + 1, stride):
            a, b = up[r : r + n, c : c + n], hr[r : r + n, c : c + n]
            ok = np.isfinite(a).all() and np.isfinite(b).all()
            if mask is not None:
                ok = ok and mask[r : r + n, c : c + n].all()
            if ok:
                ups.append(a.ravel())
                hrs.append(b.ravel())
    return np.array(ups), np.array(hrs)


@pytest.fixture
def nan_pair():
    rng = np.random.default_rng(3)
    up = rng.random((17, 15), dtype=np.float32)
    hr = rng.random((17, 15), dtype=np.float32)
    hr[4, 6] = np.nan  # an isolated hole
    hr[12:, :5] = np.nan  # a missing corner
    up[0, 14] = np.nan
    return up, hr


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_extract_patches_matches_brute_force(nan_pair, stride):
    up, hr = nan_pair
    mask = np.ones(up.shape, bool)
    mask[8, 8] = False
    for m in (None, mask):
        p_up, p_hr = extract_patches(up, hr, n=4, stride=stride, mask=m)
        ref_up, ref_hr = _windows(up, hr, 4, stride, m)
        assert p_up.dtype == p_hr.dtype == np.float32
        assert p_up.shape == p_hr.shape == (len(ref_up), 16)
        np.testing.assert_array_equal(p_up, ref_up)
        np.testing.assert_array_equal(p_hr, ref_hr)
        assert np.isfinite(p_hr).all()


def test_extract_patches_errors(nan_pair):
    up, hr = nan_pair
    with pytest.raises(ValueError, match="one shape"):
        extract_patches(up, hr[:-1])
    with pytest.raises(ValueError, match="patch size"):
        extract_patches(up, hr, n=16)
    with pytest.raises(ValueError, match="mask"):
        extract_patches(up, hr, mask=np.ones((3, 3), bool))


def _level_pairs(rng):
    """Three constant-level pairs (+ noise) of 16, 64 and 324 3×3 windows: three clear clusters."""
    pairs = []
    for level, side in ((0.1, 6), (0.5, 10), (0.9, 20)):
        hr = (level + 0.01 * rng.standard_normal((side, side))).astype(np.float32)
        pairs.append((hr * 0.5 + 0.2, hr))  # up is a different function of hr in every pair
    return pairs


def test_build_library_respects_k_K_L():
    pairs = _level_pairs(np.random.default_rng(0))
    # K·L = 1200 > 404 windows: all are sampled; L/k = 20 per category, the small one keeps 16.
    lib = build_library(pairs, n=3, k=3, K=20, L=60, seed=1)
    assert lib.params["available"] == lib.params["sampled"] == 16 + 64 + 324
    assert lib.k == 3 and lib.n == 3
    assert sorted(np.bincount(lib.labels)) == [16, 20, 20]
    assert lib.up.shape == lib.hr.shape == (56, 9) and lib.centroids.shape == (3, 9)
    for c in range(3):  # one level per category, and the centroid is its mean upsampled patch
        members = lib.labels == c
        assert np.ptp(lib.hr[members]) < 0.1
        np.testing.assert_allclose(lib.centroids[c], lib.up[members].mean(axis=0), rtol=1e-6)
    # K·L = 60 < 404: exactly K·L patches are sampled.
    small = build_library(pairs, n=3, k=3, K=1, L=60, seed=1)
    assert small.params["sampled"] == 60
    assert len(small) <= 60 and np.bincount(small.labels).max() <= 20


def test_library_pairs_are_matched():
    rng = np.random.default_rng(5)
    pairs = []
    for shape in ((30, 24), (21, 33)):
        up = rng.random(shape, dtype=np.float32)
        hr = rng.random(shape, dtype=np.float32)  # independent of up: any mismatch shows
        hr[:5, :5] = np.nan
        pairs.append((up, hr))
    lib = build_library(pairs, n=5, k=4, K=3, L=80, seed=2)
    assert len(lib) == 80 and sorted(np.bincount(lib.labels)) == [20] * 4
    truth = {
        np.concatenate([u, h]).tobytes()
        for up, hr in pairs
        for u, h in zip(*extract_patches(up, hr, n=5), strict=True)
    }
    assert all(
        np.concatenate([u, h]).tobytes() in truth for u, h in zip(lib.up, lib.hr, strict=True)
    )
    assert len({row.tobytes() for row in lib.hr}) == len(lib)  # sampled without replacement
    again = build_library(pairs, n=5, k=4, K=3, L=80, seed=2)
    np.testing.assert_array_equal(again.hr, lib.hr)
    assert not np.array_equal(build_library(pairs, n=5, k=4, K=3, L=80, seed=3).hr, lib.hr)


def test_build_library_errors():
    with pytest.raises(ValueError, match="at least one"):
        build_library([])
    nan = np.full((12, 12), np.nan, np.float32)
    with pytest.raises(ValueError, match="no fully valid"):
        build_library([(nan, nan)], n=3, k=2, L=10)
    with pytest.raises(ValueError, match="pair 0"):
        build_library([(nan, nan[:5])], n=3)
    with pytest.raises(ValueError, match="L >= k"):
        build_library([(nan, nan)], k=10, L=5)


def test_k_scales_down_to_the_patches_available():
    """A 30 × 30 HR offers 26² = 676 patches of 5 × 5: k = 50 would leave 13 per category, so
    it builds 676 // 25 = 27 categories of about 25 instead; L = 20000 keeps every patch."""
    rng = np.random.default_rng(6)
    hr = rng.random((30, 30), dtype=np.float32)
    lib = build_library([(0.5 * hr + 0.1, hr)], n=5, k=50, K=10, L=20000)
    assert lib.params["available"] == lib.params["sampled"] == 676
    assert lib.params["k_used"] == 27 and lib.k <= 27
    assert len(lib) == 676
    one = build_library([(hr[:6, :6], hr[:6, :6])], n=5, k=50, L=20000)  # 4 patches: 1 category
    assert one.k == 1 and len(one) == 4


def test_members_come_only_from_eligible_patches():
    pairs = _level_pairs(np.random.default_rng(1))
    sample = sample_patches(pairs, n=3, k=3, K=20, L=60, seed=0)
    eligible = sample.where[:, 0] != 2  # leave out the third pair (its 324 windows)
    members = sample.members(eligible, seed=1)
    assert eligible[members].all() and len(set(members)) == len(members)
    assert np.bincount(sample.labels[members]).max() <= sample.per_category == 20
    np.testing.assert_array_equal(members, sample.members(eligible, seed=1))
    lib = sample.library(members)
    assert len(lib) == len(members) and lib.k == len(np.unique(sample.labels[members]))
    for m in members:  # ``where`` locates each patch
        i, r, c = sample.where[m]
        up, hr = pairs[i]
        np.testing.assert_array_equal(sample.up[m], up[r : r + 3, c : c + 3].ravel())
        np.testing.assert_array_equal(sample.hr[m], hr[r : r + 3, c : c + 3].ravel())
    with pytest.raises(ValueError, match="no patch is eligible"):
        sample.library(members[:0])


def test_save_load_round_trip(tmp_path):
    pairs = _level_pairs(np.random.default_rng(1))
    lib = build_library(pairs, n=3, k=3, K=5, L=30, seed=4)
    path = lib.save(tmp_path / "model")
    assert path == tmp_path / "model" / LIBRARY_FILE
    assert sorted(p.name for p in path.parent.iterdir()) == [LIBRARY_FILE]
    back = Library.load(tmp_path / "model")
    for name in ("up", "hr", "labels", "centroids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(lib, name))
        assert getattr(back, name).dtype == getattr(lib, name).dtype
    assert back.n == lib.n and back.params == lib.params


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no patch library"):
        Library.load(tmp_path)
    (tmp_path / LIBRARY_FILE).write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(ValueError, match=f"corrupt or mismatched .*{LIBRARY_FILE}"):
        Library.load(tmp_path)
    lib = build_library(_level_pairs(np.random.default_rng(2)), n=3, k=3, K=5, L=30)
    lib.save(tmp_path)
    with np.load(tmp_path / LIBRARY_FILE) as data:
        arrays = dict(data)
    np.savez(tmp_path / LIBRARY_FILE, **{**arrays, "n": np.int64(4)})  # patches are 3×3
    with pytest.raises(ValueError, match=r"must both be \(\d+, 16\)"):
        Library.load(tmp_path)
    del arrays["centroids"]
    np.savez(tmp_path / LIBRARY_FILE, **arrays)
    with pytest.raises(ValueError, match="missing arrays"):
        Library.load(tmp_path)


def test_library_validates_labels():
    up = np.zeros((4, 9), np.float32)
    with pytest.raises(ValueError, match="at least one member"):
        Library(up, up, [0, 0, 2, 2], np.zeros((3, 9)), 3)
    with pytest.raises(ValueError, match=r"lie in 0\.\.1"):
        Library(up, up, [0, 1, 2, 1], np.zeros((2, 9)), 3)
