import numpy as np
import pytest
from scipy import ndimage as ndi
from sklearn.decomposition import sparse_encode
from sklearn.linear_model import Lasso

from pairsr.grid import BICUBIC_HALO, bicubic
from pairsr.methods import ModelError, load_model, method_class, save_model
from pairsr.patches import valid_corners
from pairsr.sparse import (
    SRSW,
    ScSR,
    nearest,
    nonneg_lasso,
    sample_patch_pairs,
    scsr_channels,
    scsr_reconstruct,
    srsw_reconstruct,
    yang_features,
)


@pytest.fixture(scope="module")
def texture_pair():
    """A repetitive texture (HR, 128²) and its LR: blurred 2×2 area mean plus noise. The HR is
    known on the left half only (NaN on the right, the held-out half)."""
    yy, xx = np.mgrid[:128, :128]
    hr = 0.5 + 0.2 * np.sin(2 * np.pi * xx / 7.3) * np.cos(2 * np.pi * yy / 5.1)
    hr = (hr + 0.15 * np.sin(2 * np.pi * (xx + yy) / 11.7)).astype(np.float32)
    lr = ndi.gaussian_filter(hr, 1.0).reshape(64, 2, 64, 2).mean((1, 3))
    lr = lr + 0.02 * np.random.default_rng(0).standard_normal(lr.shape)
    train = hr.copy()
    train[:, 64:] = np.nan
    return np.clip(lr, 0, 1).astype(np.float32), hr, train


@pytest.fixture(scope="module")
def srsw_model(texture_pair):
    lr, _, train = texture_pair
    return SRSW.fit([(lr, train)], L=3000)


@pytest.fixture(scope="module")
def scsr_model(texture_pair):
    lr, _, train = texture_pair
    return ScSR.fit([(lr, train)], L=2000, atoms=24)


def test_yang_features_are_first_and_second_differences():
    yy, xx = np.mgrid[:12, :14].astype(np.float32)
    f = yang_features(xx**2 + 3 * yy)[:, 2:-2, 2:-2]
    # x: (x+1)² − (x−1)² = 4x and (x+2)² − 2x² + (x−2)² = 8; y: 3(y+1) − 3(y−1) = 6 and 0.
    np.testing.assert_allclose(f[0], 4 * xx[2:-2, 2:-2])
    np.testing.assert_allclose(f[1], 6)
    np.testing.assert_allclose(f[2], 8)
    np.testing.assert_allclose(f[3], 0, atol=1e-4)


def test_nonneg_lasso_matches_scikit_learn():
    rng = np.random.default_rng(3)
    problems, m, d, alpha = 30, 6, 15, 0.05
    atoms = rng.random((problems, m, d)) + 0.1 * rng.standard_normal((problems, m, d))
    q = rng.random((problems, d))
    beta = nonneg_lasso(atoms @ atoms.transpose(0, 2, 1), np.einsum("kjd,kd->kj", atoms, q), alpha)
    for k in range(problems):  # scikit-learn's objective is per sample: alpha / d
        ref = Lasso(alpha=alpha / d, fit_intercept=False, positive=True, tol=1e-14,
                    max_iter=10**6).fit(atoms[k].T, q[k]).coef_  # fmt: skip
        np.testing.assert_allclose(beta[k], ref, atol=1e-7)
    assert (beta > 0).sum(axis=1).min() >= 1 and (beta == 0).any()
    # Each problem follows its own path: solving a subset changes nothing.
    part = nonneg_lasso(atoms[5:12] @ atoms[5:12].transpose(0, 2, 1),
                        np.einsum("kjd,kd->kj", atoms[5:12], q[5:12]), alpha)  # fmt: skip
    np.testing.assert_array_equal(part, beta[5:12])


def test_shared_gram_gives_the_signed_lasso_of_sparse_encode():
    rng = np.random.default_rng(4)
    dictionary = rng.standard_normal((40, 30))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    y = rng.standard_normal((25, 30))
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    signed = np.vstack([dictionary, -dictionary])
    beta = nonneg_lasso(signed @ signed.T, y @ signed.T, 0.1)
    codes = beta[:, :40] - beta[:, 40:]
    ref = sparse_encode(y, dictionary, algorithm="lasso_lars", alpha=0.1)
    np.testing.assert_allclose(codes, ref, atol=1e-8)
    assert not np.any((beta[:, :40] > 0) & (beta[:, 40:] > 0))


def test_srsw_input_equal_to_a_library_patch_gives_its_hr_patch():
    rng = np.random.default_rng(5)
    lib_up = rng.random((50, 81)).astype(np.float32)
    lib_up *= 3 / np.linalg.norm(lib_up, axis=1, keepdims=True)  # one norm: no other patch fits
    lib_hr = rng.random((50, 81)).astype(np.float32)
    out = srsw_reconstruct(lib_up[[7, 21]], lib_up, lib_hr, neighbours=8, alpha=0.0)
    np.testing.assert_allclose(out, lib_hr[[7, 21]], atol=1e-5)
    # With λ > 0 the lasso shrinks the one coefficient to 1 − λ/‖p‖² (here ‖p‖² = 9).
    out = srsw_reconstruct(lib_up[[7]], lib_up, lib_hr, neighbours=8, alpha=0.9)
    np.testing.assert_allclose(out, 0.9 * lib_hr[[7]], atol=1e-5)


def test_srsw_two_orthogonal_patches_closed_form():
    d1 = np.r_[np.ones(40), np.zeros(41)].astype(np.float32)  # ‖d1‖² = 40
    d2 = np.r_[np.zeros(40), np.full(41, 0.5)].astype(np.float32)  # ‖d2‖² = 10.25
    lib_up, lib_hr = np.stack([d1, d2]), np.random.default_rng(6).random((2, 81), np.float32)
    q = np.stack([0.7 * d1 + 0.4 * d2, 0.7 * d1 - 0.4 * d2])
    out = srsw_reconstruct(q, lib_up, lib_hr, neighbours=2, alpha=2.05)
    b1, b2 = 0.7 - 2.05 / 40, 0.4 - 2.05 / 10.25  # soft thresholds; β ≥ 0 drops the −0.4
    np.testing.assert_allclose(out[0], b1 * lib_hr[0] + b2 * lib_hr[1], rtol=1e-5)
    np.testing.assert_allclose(out[1], b1 * lib_hr[0], rtol=1e-5)


@pytest.mark.parametrize("algorithm", ["lasso", "lasso_lars"])
def test_scsr_two_atom_closed_form(algorithm):
    n, rng = 3, np.random.default_rng(7)
    dict_lr = np.zeros((2, 4 * n * n), np.float32)
    dict_lr[0, 0], dict_lr[1, 5] = 1, 1  # orthonormal atoms
    dict_hr = rng.standard_normal((2, n * n)).astype(np.float32)
    dict_hr -= dict_hr.mean(axis=1, keepdims=True)
    # An input whose features equal atom 0 (any norm) and whose upsampled patch has the mean of an
    # HR patch ū + dict_hr[0] and 1/1.2 of its detail: the output is that HR patch.
    h0 = dict_hr[0] / np.linalg.norm(dict_hr[0])
    up = 0.4 + (0.3 / 1.2) * h0[None]
    hr_patch = 0.4 + 0.3 * h0
    out = scsr_reconstruct(up, 5 * dict_lr[[0]], dict_lr, dict_hr, alpha=0.1, algorithm=algorithm)
    np.testing.assert_allclose(out[0], hr_patch, atol=1e-5)
    # Features 0.8 e0 − 0.6 e1: codes (0.8 − λ, −(0.6 − λ)) by soft thresholding.
    feat = (0.8 * dict_lr[0] - 0.6 * dict_lr[1])[None]
    out = scsr_reconstruct(up, feat, dict_lr, dict_hr, alpha=0.1, algorithm=algorithm)
    detail = 0.7 * dict_hr[0] - 0.5 * dict_hr[1]
    want = 0.4 + 1.2 * np.linalg.norm(up - 0.4) * detail / np.linalg.norm(detail)
    np.testing.assert_allclose(out[0], want, atol=1e-5)


def test_sample_patch_pairs_are_aligned_valid_and_seeded():
    rng = np.random.default_rng(8)
    pairs = []
    for shape in [(20, 24), (16, 16)]:
        lr = rng.random(shape).astype(np.float32)
        hr = 2 * bicubic(lr) + 1  # a known relation between the two sides
        hr[5:12, 30:] = np.nan
        pairs.append((lr, hr))
    up, hr = sample_patch_pairs(pairs, n=5, size=300, seed=1)
    assert up.shape == (300, 1, 25) and hr.shape == (300, 25) and np.isfinite(hr).all()
    np.testing.assert_allclose(hr, 2 * up[:, 0] + 1, rtol=1e-6)
    again, _ = sample_patch_pairs(pairs, n=5, size=300, seed=1)
    other, _ = sample_patch_pairs(pairs, n=5, size=300, seed=2)
    assert np.array_equal(again, up) and not np.array_equal(other, up)
    available = sum(len(valid_corners(np.isnan(h), 5)[0]) for _, h in pairs)
    everything, _ = sample_patch_pairs(pairs, n=5, size=10**6)
    assert len(everything) == available < 40 * 48 + 32 * 32
    lr_side, _ = sample_patch_pairs(pairs, n=5, size=10, channels=scsr_channels)
    assert lr_side.shape == (10, 5, 25)


def test_fit_beats_bicubic_on_a_held_out_repetitive_texture(srsw_model, scsr_model, texture_pair):
    lr, hr, _ = texture_pair

    def err(x):
        return np.mean((x - hr)[16:-16, 80:-16] ** 2)  # the held-out right half

    gain = {m.name: 10 * np.log10(err(bicubic(lr)) / err(m.predict(lr)))
            for m in (srsw_model, scsr_model)}  # fmt: skip
    assert gain["srsw"] > 5 and gain["scsr"] > 2, gain


@pytest.mark.parametrize("name", ["srsw", "scsr"])
@pytest.mark.parametrize("stride", [1, 2])
def test_tiles_with_halo_context_reproduce_the_whole_image(name, stride, request, texture_pair):
    model = request.getfixturevalue(f"{name}_model")
    model = type(model)(zoom=2, params={**model.params, "stride": stride},
                        **{k: getattr(model, k) for k in model._ARRAYS})  # fmt: skip
    assert model.halo == BICUBIC_HALO + (5 if name == "scsr" else 4)
    lr = texture_pair[0][:48, :56]
    full, h = model.predict(lr), model.halo
    for r0, r1, c0, c1 in [(18, 28, 20, 34), (0, 8, 40, 56)]:
        a, c = max(r0 - h, 0), max(c0 - h, 0)
        tile = model.predict(lr[a : r1 + h, c : c1 + h])
        inner = tile[2 * (r0 - a) : 2 * (r1 - a), 2 * (c0 - c) : 2 * (c1 - c)]
        np.testing.assert_allclose(inner, full[2 * r0 : 2 * r1, 2 * c0 : 2 * c1], atol=1e-5)


@pytest.mark.parametrize("name", ["srsw", "scsr"])
def test_model_folder_round_trip_and_corrupt_data(name, request, tmp_path, texture_pair):
    model = request.getfixturevalue(f"{name}_model")
    lr = texture_pair[0][:24, :24]
    folder = save_model(model, tmp_path / "m")
    loaded = load_model(folder)
    assert type(loaded) is type(model) is method_class(name) and loaded.params == model.params
    for k in model._ARRAYS:
        assert np.array_equal(getattr(loaded, k), getattr(model, k))
    assert np.array_equal(loaded.predict(lr), model.predict(lr))
    data = folder / f"{name}.npz"
    config = {"zoom": 2, "params": model.params}
    data.write_bytes(data.read_bytes()[:200])
    with pytest.raises(ModelError, match="checksum"):
        load_model(folder)
    with pytest.raises(ModelError, match=rf"{name}\.npz: corrupt"):
        type(model).load_data(folder, config)
    np.savez(data, **{k: getattr(model, k)[:, :10] for k in model._ARRAYS})
    with pytest.raises(ModelError, match="expected"):
        type(model).load_data(folder, config)


def test_fit_is_deterministic_for_a_seed(srsw_model, scsr_model, texture_pair):
    lr, _, train = texture_pair
    again = SRSW.fit([(lr, train)], L=3000)
    assert np.array_equal(again.library_up, srsw_model.library_up)
    assert not np.array_equal(SRSW.fit([(lr, train)], L=3000, seed=1).library_up,
                              srsw_model.library_up)  # fmt: skip
    again = ScSR.fit([(lr, train)], L=2000, atoms=24)
    assert np.array_equal(again.dict_lr, scsr_model.dict_lr)
    np.testing.assert_allclose(np.linalg.norm(again.dict_lr, axis=1), 1, rtol=1e-5)


def test_bad_arguments_are_clear_errors(texture_pair):
    lr, _, train = texture_pair
    with pytest.raises(ValueError, match="stride must divide zoom=2"):
        SRSW.fit([(lr, train)], stride=3)
    with pytest.raises(ValueError, match="pair 0: hr must have shape"):
        SRSW.fit([(lr, train[:-2])])
    with pytest.raises(ValueError, match="no fully valid"):
        SRSW.fit([(lr, np.full_like(train, np.nan))])
    with pytest.raises(ValueError, match="need at least atoms=500"):
        ScSR.fit([(lr, train)], L=300, atoms=500)
    with pytest.raises(ValueError, match="invalid srsw model"):
        SRSW(params={"n": 9}, library_up=np.zeros((4, 81)), library_hr=np.zeros((5, 81)))
    with pytest.raises(ValueError, match="finite 2-D"):
        SRSW(params={"n": 3, "stride": 1, "neighbours": 2, "alpha": 0.0},
             library_up=np.ones((2, 9)), library_hr=np.ones((2, 9))).predict(lr[None])  # fmt: skip


@pytest.mark.parametrize("name", ["srsw", "scsr"])
def test_runs_through_the_tiled_apply(name, request, tmp_path, texture_pair):
    """A saved model through ``apply_tiled`` (zarr in, tiles smaller than the image, zarr out)
    equals its in-memory prediction."""
    import zarr

    from pairsr.io import write_ome_zarr
    from pairsr.tiles import apply_tiled

    model = request.getfixturevalue(f"{name}_model")
    lr = texture_pair[0][:40, :52]
    folder = save_model(model, tmp_path / "model")
    write_ome_zarr(tmp_path / "lr.zarr", lr, chunks=16)
    apply_tiled(folder, tmp_path / "lr.zarr", tmp_path / "sr.zarr", tile=16,
                out_dtype="float32", progress=False)  # fmt: skip
    tiled = zarr.open_group(tmp_path / "sr.zarr", mode="r")["0"][:]
    np.testing.assert_allclose(tiled, model.predict(lr), atol=1e-5)


def test_srsw_neighbours_match_scikit_learn_and_leave_the_process_threads_alone(srsw_model,
                                                                                texture_pair):
    """The numpy neighbour search finds scikit-learn's neighbours; SRSW on 2 threads leaves
    the process's BLAS threads as they were (scikit-learn's search, run from two threads at
    once, left them at 1)."""
    import copy

    from sklearn.neighbors import NearestNeighbors
    from threadpoolctl import threadpool_info

    rng = np.random.default_rng(0)
    keys, queries = rng.random((500, 25), np.float32), rng.random((300, 25), np.float32)
    found = nearest(queries, keys, 6)
    expected = NearestNeighbors(n_neighbors=6, algorithm="brute").fit(keys).kneighbors(
        queries, return_distance=False)
    assert all(set(a) == set(b) for a, b in zip(found, expected, strict=True))
    d = ((queries[:, None] - keys[found]) ** 2).sum(-1)
    assert (np.diff(d, axis=1) >= -1e-6).all()  # nearest first
    before = [p["num_threads"] for p in threadpool_info()]
    model = copy.copy(srsw_model)
    model.threads = 2
    model.predict(texture_pair[0])
    assert [p["num_threads"] for p in threadpool_info()] == before
