import numpy as np
import pytest
import torch
from torch import nn

from pairsr.grid import BICUBIC_HALO, bicubic
from pairsr.models import (
    EDSR,
    PRESETS,
    RCAN,
    VDSR,
    Bicubic,
    ChannelAttention,
    build_model,
    predict,
)

TINY = ["vdsr-tiny", "edsr-tiny", "rcan-tiny"]
#: Small variants of each architecture, for exact checks that need many evaluations.
SMALL = [
    ("vdsr", {"n_layers": 6, "n_feats": 8}),
    ("edsr", {"n_blocks": 3, "n_feats": 8}),
    ("edsr", {"n_blocks": 6, "n_feats": 8, "bicubic_skip": True}),
    ("rcan", {"n_groups": 2, "n_blocks": 2, "n_feats": 8, "reduction": 4, "ca_window": 5}),
    ("rcan", {"n_groups": 1, "n_blocks": 1, "n_feats": 8, "reduction": 4, "bicubic_skip": True}),
]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("preset", TINY)
def test_tiny_presets_map_lr_batches_to_the_x2_grid(preset):
    torch.manual_seed(0)
    model = build_model(PRESETS[preset]["method"], preset)
    out = model(torch.rand(2, 1, 11, 16))
    assert out.shape == (2, 1, 22, 32) and out.dtype == torch.float32
    assert np.isfinite(out.detach().numpy()).all()


def test_published_presets_match_the_papers():
    """Parameter counts of the ×2 networks as published (grey-scale head and tail here)."""
    vdsr, edsr, base, rcan = (build_model(m, p) for m, p in
                              [("vdsr", None), ("edsr", None), ("edsr", "edsr-baseline"),
                               ("rcan", None)])
    assert _count(vdsr, nn.Conv2d) == 20 and abs(_n_params(vdsr) / 665e3 - 1) < 0.01
    assert edsr.body[0].scale == 0.1 and len(edsr.body) == 32 + 1
    assert abs(_n_params(edsr) / 40.7e6 - 1) < 0.01  # EDSR paper: 40.7 M (×2)
    assert len(base.body) == 16 + 1 and abs(_n_params(base) / 1.37e6 - 1) < 0.01
    assert len(rcan.body) == 10 + 1 and all(len(g.body) == 20 + 1 for g in rcan.body[:10])
    assert _count(rcan, ChannelAttention) == 200 and abs(_n_params(rcan) / 15.4e6 - 1) < 0.01
    # Receptive fields, counted by hand: VDSR 20 SR-scale 3x3 convs -> 10 LR px on top of the
    # bicubic's 12; EDSR head + 2 per block + body conv + upsampler conv (LR) + tail (1 SR px ->
    # 1 LR px); RCAN likewise with 2 convs + a 7x7 pooling (3 px) per block and a conv per group.
    assert vdsr.receptive_field == BICUBIC_HALO + 10
    assert edsr.receptive_field == 1 + 2 * 32 + 1 + 1 + 1
    assert base.receptive_field == 1 + 2 * 16 + 1 + 1 + 1
    assert rcan.receptive_field == 1 + 10 * (20 * (2 + 3) + 1) + 1 + 1 + 1


def test_build_model_presets_and_errors():
    assert isinstance(build_model("vdsr", "vdsr-tiny"), VDSR)
    assert build_model("edsr", "edsr-tiny", bicubic_skip=False).bicubic is None
    assert isinstance(build_model("rcan"), RCAN) and isinstance(build_model("edsr"), EDSR)
    with pytest.raises(ValueError, match="unknown method 'srcnn'"):
        build_model("srcnn")
    with pytest.raises(ValueError, match="unknown preset 'edsr-huge'"):
        build_model("edsr", "edsr-huge")
    with pytest.raises(ValueError, match="'rcan-tiny' is a rcan model, not edsr"):
        build_model("edsr", "rcan-tiny")
    with pytest.raises(ValueError, match="ca_window"):
        build_model("rcan", "rcan-tiny", ca_window=4)


@pytest.mark.parametrize(("dtype", "zoom"), [(torch.float32, 2), (torch.float64, 2),
                                           (torch.float32, 3), (torch.float32, 4)])
def test_bicubic_layer_is_pairsr_bicubic(dtype, zoom):
    lr = np.random.default_rng(0).random((29, 41)).astype(np.float32)
    out = Bicubic(zoom).to(dtype)(torch.from_numpy(lr).to(dtype)[None, None])
    assert out.dtype == dtype and out.shape == (1, 1, 29 * zoom, 41 * zoom)
    assert np.abs(out[0, 0].numpy() - bicubic(lr, zoom)).max() < 2e-6


@pytest.mark.parametrize("zoom", [3, 4])
def test_networks_at_x3_and_x4(zoom):
    """×3: one PixelShuffle(3) stage; ×4: two ×2 stages (EDSR paper); VDSR any zoom. Receptive
    fields by hand: the ×4 upsampler's second conv runs at ×2, its 1 px is < 1 LR px."""
    torch.manual_seed(0)
    for preset in TINY:
        model = build_model(PRESETS[preset]["method"], preset, zoom=zoom)
        assert model(torch.rand(1, 1, 7, 9)).shape == (1, 1, 7 * zoom, 9 * zoom)
    edsr = build_model("edsr", "edsr-baseline", zoom=zoom)
    shuffles = [m.upscale_factor for m in edsr.upsample if isinstance(m, nn.PixelShuffle)]
    assert shuffles == ([3] if zoom == 3 else [2, 2])
    assert edsr.receptive_field == 1 + 2 * 16 + 1 + 2  # head, blocks, body conv, upsampler+tail
    vdsr = build_model("vdsr", zoom=zoom)  # 20 3×3 convs at the SR scale: 20 SR px
    assert vdsr.receptive_field == BICUBIC_HALO + -(-20 // zoom)
    with pytest.raises(ValueError, match="zoom 2, 3, 4 or 8, got 5"):
        build_model("rcan", "rcan-tiny", zoom=5)


def test_skip_paths_give_exactly_bicubic_when_the_network_is_silenced():
    """The global residual adds pairsr's bicubic on the SR grid (VDSR input, EDSR/RCAN skip)."""
    lr = np.random.default_rng(1).random((20, 23)).astype(np.float32)
    for model, last in [(build_model("vdsr", "vdsr-tiny"), "body"),
                        (build_model("edsr", "edsr-tiny"), "tail"),
                        (build_model("rcan", "rcan-tiny"), "tail")]:
        conv = getattr(model, last)
        conv = conv[-1] if isinstance(conv, nn.Sequential) else conv
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        assert np.abs(predict(model, lr, device="cpu") - bicubic(lr)).max() < 2e-6


@pytest.mark.parametrize("zoom", [2, 3, 4])
@pytest.mark.parametrize(("method", "params"), SMALL)
def test_receptive_field_is_exact(method, params, zoom):
    """The SR pixels of LR pixel j depend on exactly the LR pixels within receptive_field of j.

    Gradients in float64 show every dependency, however weak. Positive biases keep all ReLUs
    active, so that no path is cut by chance at initialisation.
    """
    torch.manual_seed(0)
    model = build_model(method, None, zoom=zoom, **params).double().eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.bias, 0.5)
    rf = model.receptive_field
    n = 2 * rf + 9
    j = n // 2
    x = torch.rand(1, 1, n, n, dtype=torch.float64, requires_grad=True)
    model(x)[0, 0, zoom * j : zoom * (j + 1), zoom * j : zoom * (j + 1)].sum().backward()
    depends = x.grad[0, 0].numpy() != 0
    inside = np.zeros_like(depends)
    inside[j - rf : j + rf + 1, j - rf : j + rf + 1] = True
    np.testing.assert_array_equal(depends, inside)


@pytest.mark.parametrize("zoom", [2, 3])
@pytest.mark.parametrize(("method", "params"), SMALL)
def test_tiles_with_halo_reproduce_the_whole_image(method, params, zoom):
    torch.manual_seed(0)
    model = build_model(method, None, zoom=zoom, **params)
    lr = np.random.default_rng(2).random((56, 69)).astype(np.float32)
    whole = predict(model, lr, device="cpu")
    assert whole.shape == (56 * zoom, 69 * zoom) and whole.dtype == np.float32
    tiled = predict(model, lr, device="cpu", tile=28, batch=2)
    assert np.abs(tiled - whole).max() < 1e-5


def test_predict_rejects_bad_input():
    model = build_model("vdsr", "vdsr-tiny")
    with pytest.raises(ValueError, match="2-D LR image"):
        predict(model, np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="tile must be"):
        predict(model, np.zeros((8, 8), np.float32), tile=0)
    with pytest.raises(ValueError, match="amp=True needs a CUDA device"):
        predict(model, np.zeros((8, 8), np.float32), device="cpu", amp=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("zoom", [2, 3, 4])
@pytest.mark.parametrize("preset", TINY)
def test_cuda_prediction_with_and_without_amp_matches_the_cpu(preset, zoom):
    torch.manual_seed(0)
    model = build_model(PRESETS[preset]["method"], preset, zoom=zoom)
    lr = np.random.default_rng(3).random((40, 52)).astype(np.float32)
    cpu = predict(model, lr, device="cpu")
    assert np.abs(predict(model, lr, device="cuda") - cpu).max() < 2e-3  # TF32 convolutions
    assert np.abs(predict(model, lr, device="cuda", amp=True) - cpu).max() < 1e-2  # float16
