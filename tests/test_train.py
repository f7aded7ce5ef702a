import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from pairsr import __version__
from pairsr.grid import bicubic, interpolate, sr_to_lr
from pairsr.models import predict
from pairsr.train import _downsize, _PatchSampler, _split, _val_psnr, load, train

#: Small, fast training settings for the tests of the mechanics (resumption, folders, ...).
#: On the CPU, where training is deterministic.
FAST = {"patch": 12, "batch": 4, "steps": 2, "progress": False, "device": "cpu"}


def synthetic_pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random texture as HR ``(2h, 2w)``; LR = blurred, 2×2-averaged onto the SR grid's
    parent pixels, contrast-changed and noisy; HR missing (NaN) on its right quarter."""
    rng = np.random.default_rng(seed)
    tex = ndi.gaussian_filter(rng.standard_normal((2 * h, 2 * w)), 2.0)
    tex += 0.5 * ndi.gaussian_filter(rng.standard_normal((2 * h, 2 * w)), 1.0)
    hr = ((tex - tex.min()) / np.ptp(tex)).astype(np.float32)
    lr = ndi.gaussian_filter(hr, 0.8).reshape(h, 2, w, 2).mean(axis=(1, 3))
    lr = (0.8 * lr + 0.1 + 0.01 * rng.standard_normal(lr.shape)).astype(np.float32)
    hr[:, 3 * w // 2 :] = np.nan
    return lr, hr


@pytest.fixture(scope="module")
def pair():
    return synthetic_pair(48, 56)


def _psnr_on_valid(sr, hr):
    valid = np.isfinite(hr)
    return 10 * np.log10(1 / np.mean((sr[valid] - hr[valid]) ** 2))


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_preset_learns_a_small_pair_beyond_bicubic(pair, tmp_path):
    lr, hr = pair
    result = train([pair], "edsr", "edsr-tiny", out=tmp_path, epochs=5, lr_rate=1e-3,
                   val_fraction=0, **(FAST | {"patch": 16, "batch": 8, "steps": 4}))
    losses = [e["loss"] for e in result.log]
    assert len(losses) == 5 and losses[-1] < 0.6 * losses[0]
    sr = predict(result.model, lr, device="cpu")
    assert _psnr_on_valid(sr, hr) > _psnr_on_valid(bicubic(lr), hr) + 2


def test_resume_after_interruption_equals_uninterrupted_training(pair, tmp_path):
    kw = {"seed": 3, "val_fraction": 0.2, "patience": 5, **FAST}
    whole = train([pair], "vdsr", "vdsr-tiny", out=tmp_path / "whole", epochs=3, **kw)
    train([pair], "vdsr", "vdsr-tiny", out=tmp_path / "split", epochs=1, **kw)
    resumed = train([pair], "vdsr", "vdsr-tiny", out=tmp_path / "split", epochs=3, resume=True,
                    **kw)
    assert _same_weights(whole.model, resumed.model)
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in whole.log]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in resumed.log]
    assert whole.config["result"] == resumed.config["result"]
    # The same seed trains the same model again; another seed does not.
    again = train([pair], "vdsr", "vdsr-tiny", out=tmp_path / "again", epochs=1, **kw)
    other = train([pair], "vdsr", "vdsr-tiny", out=tmp_path / "other", epochs=1,
                  **(kw | {"seed": 4}))
    assert [e["loss"] for e in again.log] == [e["loss"] for e in whole.log[:1]]
    assert not _same_weights(again.model, other.model)


def test_resume_refuses_changed_settings_and_overwriting(pair, tmp_path):
    train([pair], "vdsr", "vdsr-tiny", out=tmp_path, epochs=1, val_fraction=0, **FAST)
    with pytest.raises(FileExistsError, match="resume=True"):
        train([pair], "vdsr", "vdsr-tiny", out=tmp_path, epochs=2, val_fraction=0, **FAST)
    with pytest.raises(ValueError, match=r"settings differ: \['lr_rate'\]"):
        train([pair], "vdsr", "vdsr-tiny", out=tmp_path, epochs=2, val_fraction=0, lr_rate=1e-3,
              resume=True, **FAST)
    other_data = (pair[0] + 0.01, pair[1])
    with pytest.raises(ValueError, match=r"settings differ: \['data'\]"):
        train([other_data], "vdsr", "vdsr-tiny", out=tmp_path, epochs=2, val_fraction=0,
              resume=True, **FAST)


def test_early_stopping_keeps_the_best_epoch(pair, tmp_path):
    # Validation PSNR first passes bicubic's, then drops: patience 1 stops the epoch after.
    result = train([pair], "edsr", "edsr-tiny", out=tmp_path, epochs=12, lr_rate=3e-3,
                   patience=1, **FAST)
    val = [e["val_psnr"] for e in result.log]
    res = result.config["result"]
    assert res["stopped_early"] and len(val) == res["best_epoch"] + 1 < 12
    assert res["best_val_psnr"] == max(val) == val[res["best_epoch"] - 1]
    assert res["best_val_psnr"] > res["bicubic_val_psnr"] > max(val[:-2])
    # The returned weights are those of the best epoch: they score its validation PSNR.
    _, blocks = _split([pair], 2 * FAST["patch"], 0.2, np.random.default_rng(0))
    score = _val_psnr(lambda x: predict(result.model, x, device="cpu"),
                      result.model.receptive_field, [pair], blocks)
    assert score == pytest.approx(res["best_val_psnr"], abs=1e-6)


def test_patience_cannot_stop_below_bicubic_and_the_budget_stops(pair, tmp_path):
    # Too high a learning rate: never as good as bicubic, so patience never stops it.
    result = train([pair], "edsr", "edsr-tiny", out=tmp_path / "a", epochs=6, lr_rate=0.02,
                   patience=1, **FAST)
    res = result.config["result"]
    assert not res["stopped_early"] and res["epochs_run"] == 6
    assert res["best_val_psnr"] < res["bicubic_val_psnr"]
    result = train([pair], "vdsr", "vdsr-tiny", out=tmp_path / "b", epochs=6, budget_s=1e-6,
                   **FAST)
    assert result.config["result"]["out_of_budget"] and len(result.log) == 1
    assert result.config["training"]["lr_rate"] == 5e-4  # the tiny presets' default


def test_model_folder_round_trip_and_corrupt_folders(pair, tmp_path):
    result = train([pair], "rcan", "rcan-tiny", out=tmp_path, epochs=1,
                   **(FAST | {"progress": True}))
    assert {p.name for p in tmp_path.iterdir()} == {
        "weights.pt", "config.json", "train_log.json", "checkpoint.pt"}
    model, config = load(tmp_path)
    assert config == json.loads((tmp_path / "config.json").read_text()) == result.config
    assert config["method"] == "rcan" and config["preset"] == "rcan-tiny"
    assert config["architecture"]["n_groups"] == 2 and config["zoom"] == 2
    assert config["receptive_field"] == model.receptive_field == 46
    assert config["seed"] == 0 and config["pairsr_version"] == __version__
    assert config["training"]["loss"] == "L1Loss" and config["training"]["patch"] == 12
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert [set(e) for e in log] == [{"epoch", "loss", "val_psnr", "seconds"}]
    lr = pair[0][:20, :24]
    assert np.array_equal(predict(model, lr, device="cpu"), predict(result.model, lr, device="cpu"))

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "weights.pt").write_bytes((tmp_path / "weights.pt").read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"weights\.pt: corrupt"):
        load(tmp_path)
    (tmp_path / "config.json").write_text('{"method": "rcan", "preset"')
    with pytest.raises(ValueError, match=r"config\.json: corrupt"):
        load(tmp_path)
    (tmp_path / "weights.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights\.pt"):
        load(tmp_path)


def test_validation_blocks_are_held_out_of_training(pair):
    hr = pair[1]
    train_pairs, blocks = _split([pair], 32, 0.3, np.random.default_rng(0))
    # 2 x 2 blocks of 32 LR px are at least half covered by HR (LR 48 x 56, HR on 3/4 of it).
    assert len(blocks) == 1
    _, rows, cols = blocks[0]
    hr_train = train_pairs[0][1]
    held = (slice(2 * rows.start, 2 * rows.stop), slice(2 * cols.start, 2 * cols.stop))
    assert np.isnan(hr_train[held]).all() and np.isfinite(hr[held]).any()
    assert np.array_equal(np.isnan(hr_train), np.isnan(hr) | _mask(hr.shape, held))
    # No two 48-px blocks: half-size ones (24 px) are held out instead.
    _, blocks = _split([pair], 48, 0.2, np.random.default_rng(0))
    assert blocks and all(b[1].stop - b[1].start == 24 for b in blocks)
    # Not even two 56-px blocks: nothing is held out, with a warning that says what to do.
    with pytest.warns(UserWarning, match="no validation.*-p patch="):
        train_pairs, blocks = _split([pair], 112, 0.2, np.random.default_rng(0))
    assert blocks == [] and train_pairs[0][1] is hr


def _mask(shape, index):
    m = np.zeros(shape, bool)
    m[index] = True
    return m


def test_downsizing_keeps_the_pair_on_the_sr_grid():
    rows, cols = np.indices((40, 50), float)
    lr = (0.2 + 0.01 * rows + 0.004 * cols).astype(np.float32)
    r, c = np.meshgrid(sr_to_lr(np.arange(80)), sr_to_lr(np.arange(100)), indexing="ij")
    hr = (0.2 + 0.01 * r + 0.004 * c).astype(np.float32)
    for scale, shape in [(0.7, (28, 35)), (0.5, (20, 25))]:
        lr_s, hr_s = _downsize(lr, hr, scale)
        assert lr_s.shape == shape and hr_s.shape == (2 * shape[0], 2 * shape[1])
        r, c = np.meshgrid(sr_to_lr(np.arange(hr_s.shape[0])), sr_to_lr(np.arange(hr_s.shape[1])),
                           indexing="ij")
        expected = interpolate(lr_s, np.stack([r, c]), order=1)
        assert np.abs(expected - hr_s)[4:-4, 4:-4].max() < 1e-5


def test_augmented_patches_stay_paired():
    """HR = bicubic(LR) holds for every sampled patch, whatever its flip and rotation."""
    rng = np.random.default_rng(0)
    lr = ndi.gaussian_filter(rng.random((80, 90)), 2).astype(np.float32)
    assert len(_PatchSampler([(lr, bicubic(lr))], 32).images) == 3  # scales 1, 0.7, 0.5
    sampler = _PatchSampler([(lr, bicubic(lr))], 32, scales=(1.0,))
    lr_patches, hr_patches = sampler.sample(rng, 24)
    assert lr_patches.shape == (24, 1, 32, 32) and hr_patches.shape == (24, 1, 64, 64)
    for x, y in zip(lr_patches[:, 0], hr_patches[:, 0], strict=True):
        assert np.abs(bicubic(x) - y)[24:-24, 24:-24].max() < 1e-6
        assert np.abs(bicubic(x)[:-1] - y[1:])[24:-24, 24:-24].max() > 1e-3  # off the grid
    # Patches are only taken where the HR is valid.
    hr = bicubic(lr)
    hr[:, 100:] = np.nan
    sampler = _PatchSampler([(lr, hr)], 32)
    assert np.isfinite(sampler.sample(rng, 64)[1]).all()
    with pytest.raises(ValueError, match="no 32×32 LR patch"):
        _PatchSampler([(lr[:31], hr[:62])], 32)


def test_train_rejects_bad_pairs(pair, tmp_path):
    lr, hr = pair
    with pytest.raises(ValueError, match="pair 0: hr must be"):
        train([(lr, hr[:-1])], "vdsr", "vdsr-tiny", out=tmp_path, **FAST)
    with pytest.raises(ValueError, match="val_fraction"):
        train([pair], "vdsr", "vdsr-tiny", out=tmp_path, val_fraction=1, **FAST)
    with pytest.raises(ValueError, match="unknown preset"):
        train([pair], "vdsr", "vdsr-huge", out=tmp_path, **FAST)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_uses_cuda_when_available(pair, tmp_path):
    result = train([pair], "edsr", "edsr-tiny", out=tmp_path, epochs=2, **(FAST | {"device": None}))
    assert result.config["result"]["device"] == "cuda"
    model, _ = load(tmp_path)  # on the CPU
    lr = pair[0][:24, :30]
    cpu, gpu = predict(model, lr, device="cpu"), predict(result.model, lr, device="cuda")
    assert np.abs(cpu - gpu).max() < 2e-3  # TF32 convolutions on the GPU


@pytest.mark.parametrize("zoom", [3, 4])
def test_patches_and_downsizing_at_x3_and_x4(zoom):
    """The sampler and the downsized copies keep HR = bicubic×zoom(LR) on the ×zoom grid."""
    rng = np.random.default_rng(0)
    lr = ndi.gaussian_filter(rng.random((60, 70)), 2).astype(np.float32)
    lr_s, hr_s = _downsize(lr, bicubic(lr, zoom), 0.5, zoom)
    assert lr_s.shape == (30, 35) and hr_s.shape == (30 * zoom, 35 * zoom)
    sampler = _PatchSampler([(lr, bicubic(lr, zoom))], 32, scales=(1.0,), zoom=zoom)
    lr_patches, hr_patches = sampler.sample(rng, 8)
    assert hr_patches.shape == (8, 1, 32 * zoom, 32 * zoom)
    inner = slice(12 * zoom, -12 * zoom)  # beyond the spline's reach from the patch border
    for x, y in zip(lr_patches[:, 0], hr_patches[:, 0], strict=True):
        assert np.abs(bicubic(x, zoom) - y)[inner, inner].max() < 1e-6


def test_training_at_x3_stores_and_reloads_the_zoom(tmp_path):
    rng = np.random.default_rng(1)
    hr = ndi.gaussian_filter(rng.random((96, 120)), 1.5).astype(np.float32)
    lr = ndi.gaussian_filter(hr, 1.0).reshape(32, 3, 40, 3).mean(axis=(1, 3))
    result = train([(lr, hr)], "edsr", "edsr-tiny", out=tmp_path, zoom=3, epochs=1, **FAST)
    model, config = load(tmp_path)
    assert config["zoom"] == model.zoom == 3
    assert predict(model, lr[:10, :12], device="cpu").shape == (30, 36)
    assert result.config["result"]["bicubic_val_psnr"] > 20  # scored on the ×3 grid
    with pytest.raises(ValueError, match="3× the 2-D lr"):
        train([(lr, hr[:, :-3])], "vdsr", "vdsr-tiny", out=tmp_path / "b", zoom=3, **FAST)
