"""Deep super-resolution networks for grey-scale EM images: VDSR, EDSR and RCAN (paper III-B).

Every model maps an LR batch ``(N, 1, H, W)`` to its ×``zoom`` SR batch ``(N, 1, zoom·H,
zoom·W)`` on pairsr's SR grid (SR pixel ``p`` ↔ LR coordinate ``(p + 0.5)/zoom − 0.5``, see
:mod:`pairsr.grid`) and states ``receptive_field``: the radius, in LR pixels, of the input context
that influences one output pixel, measured from the output pixel's parent LR pixel
``p // zoom``. It is computed from the layers (their spatial radii along the longest path, each
at its own scale); a tile with that many LR pixels of halo gives exactly the whole-image result
in its interior, which is what the tiled engine relies on.

* **VDSR** (Kim et al. 2016): ``n_layers`` 3×3 convolutions with ReLU on the bicubic upsampling
  of the LR, plus the bicubic (global residual). The upsampling is :class:`Bicubic`, pairsr's
  bicubic (:func:`pairsr.grid.bicubic`) as a local torch layer, identical in training and
  inference; any integer zoom.
* **EDSR** (Lim et al. 2017): residual blocks without batch norm, ``res_scale`` residual scaling,
  a pixel-shuffle upsampler as in the EDSR paper: one conv + ``PixelShuffle(3)`` for ×3, one
  conv + ``PixelShuffle(2)`` stage per factor 2 for ×2, ×4, ×8. Pixel shuffle puts SR pixels
  ``z·i … z·i + z − 1`` on LR pixel ``i``: the SR grid by construction.
* **RCAN** (Zhang et al. 2018): residual groups of residual channel-attention blocks. The paper's
  channel attention pools each channel over the *whole* image, which makes the output depend on
  the image size (a training patch, a tile and the whole field would differ) and the model
  non-local. Here the pooling is a local ``ca_window``² average (as in the "test-time local
  converter" of Chu et al. 2022), so the model is local and tileable and behaves the same on
  patches and fields.

``bicubic_skip`` (EDSR, RCAN) adds the bicubic of the input to the output, so the network learns
only the residual to bicubic and starts from bicubic quality; without it the input is centred
(``x − 0.5``) and the output re-offset, the grey-scale analogue of EDSR's mean shift. It helps on
a single small pair: on a synthetic 96² LR pair (24² patches, batch 8, 6 epochs of 20 steps, Adam
1e-4; bicubic 25.4 dB) the validation PSNR reached 29.8 dB with it and 28.1 dB without for
edsr-tiny, 29.3 and 28.0 dB for rcan-tiny. So the ``*-tiny`` presets use it; the published
presets are as published.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
from torch import nn

from pairsr.grid import BICUBIC_HALO, bicubic
from pairsr.region import Region

#: Architectures by preset name; ``method`` names the class in :data:`MODELS`. The preset named
#: like its method is the network as published; ``*-tiny`` ones train in minutes on a laptop CPU.
PRESETS: dict[str, dict] = {
    "vdsr": {"method": "vdsr", "n_layers": 20, "n_feats": 64},
    "vdsr-tiny": {"method": "vdsr", "n_layers": 8, "n_feats": 32},
    "edsr": {"method": "edsr", "n_blocks": 32, "n_feats": 256, "res_scale": 0.1,
             "bicubic_skip": False},
    "edsr-baseline": {"method": "edsr", "n_blocks": 16, "n_feats": 64, "res_scale": 1.0,
                      "bicubic_skip": False},
    "edsr-tiny": {"method": "edsr", "n_blocks": 8, "n_feats": 32, "res_scale": 1.0,
                  "bicubic_skip": True},
    "rcan": {"method": "rcan", "n_groups": 10, "n_blocks": 20, "n_feats": 64, "reduction": 16,
             "ca_window": 7, "bicubic_skip": False},
    "rcan-tiny": {"method": "rcan", "n_groups": 2, "n_blocks": 4, "n_feats": 32, "reduction": 16,
                  "ca_window": 7, "bicubic_skip": True},
}


def _conv(c_in: int, c_out: int, kernel: int = 3) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)


def _radius(module: nn.Module) -> int:
    """Sum of the spatial radii of all convolutions and poolings in ``module`` (its pixels).

    In these networks every spatial layer lies on one path (skips only shorten it), so the sum is
    the radius of the module's receptive field.
    """
    return sum(
        (m.kernel_size[0] // 2) * m.dilation[0] if isinstance(m, nn.Conv2d) else m.kernel_size // 2
        for m in module.modules()
        if isinstance(m, nn.Conv2d | nn.AvgPool2d)
    )


def _sr_radius_in_lr(radius: int, zoom: int) -> int:
    """LR radius, from the parent LR pixel, of a radius at the ×``zoom`` scale:
    ``ceil(radius / zoom)``."""
    return -(-radius // zoom)


def _upsampler_factors(zoom: int) -> tuple[int, ...]:
    """Pixel-shuffle stages of a ×``zoom`` upsampler, as in EDSR: ``(3,)`` or twos."""
    if zoom == 3:
        return (3,)
    if zoom >= 2 and zoom & (zoom - 1) == 0:
        return (2,) * (zoom.bit_length() - 1)
    raise ValueError(f"the pixel-shuffle networks (EDSR, RCAN) need zoom 2, 3, 4 or 8, got {zoom}; "
                     "VDSR and the patch methods take any integer zoom")


@functools.cache
def _bicubic_taps(radius: int, zoom: int = 2) -> np.ndarray:
    """Taps ``(zoom, 2*radius + 1)`` of :func:`pairsr.grid.bicubic` ×``zoom`` along one axis.

    ``sr[zoom·i + s] = Σ_d taps[s, d + radius] · lr[i + d]``: the impulse response of the spline
    (prefilter and evaluation), truncated where it has decayed below 1e-7 for ``BICUBIC_HALO``.
    """
    n = 4 * radius + 1
    impulse = np.zeros((1, n), np.float32)
    impulse[0, 2 * radius] = 1.0
    response = bicubic(impulse, zoom)[0]
    d = np.arange(-radius, radius + 1)
    return np.stack([response[zoom * (2 * radius - d) + s] for s in range(zoom)])


def _symmetric_index(n: int, pad: int) -> torch.Tensor:
    """Indices of a length-``n`` axis padded by ``pad`` half-sample symmetric (scipy 'reflect')."""
    i = np.arange(-pad, n + pad) % (2 * n)
    return torch.from_numpy(np.where(i < n, i, 2 * n - 1 - i))


class Bicubic(nn.Module):
    """:func:`pairsr.grid.bicubic` ×``zoom`` as a torch layer: ``(N, 1, H, W) → (N, 1, zoom·H,
    zoom·W)``.

    Separable polyphase FIR filtering of the mirror-padded input with the spline's impulse
    response, truncated at ``radius`` = ``BICUBIC_HALO`` LR pixels (agrees with scipy to ~1e-6
    on images of 5 pixels or more).
    It is exactly local, so tiles with ``radius`` pixels of halo reproduce the whole image. It
    runs in the input's precision, never in reduced (autocast) precision.
    """

    radius = BICUBIC_HALO

    def __init__(self, zoom: int = 2) -> None:
        super().__init__()
        self.zoom = zoom
        taps = torch.from_numpy(_bicubic_taps(self.radius, zoom))
        self.register_buffer("taps", taps[:, None, None, :], persistent=False)  # (zoom, 1, 1, K)

    def _upsample_columns(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        padded = x[..., _symmetric_index(w, self.radius).to(x.device)]
        phases = nn.functional.conv2d(padded, self.taps.to(x.dtype))  # (N, zoom, H, W)
        return phases.permute(0, 2, 3, 1).reshape(n, 1, h, self.zoom * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = self._upsample_columns(x)
            return self._upsample_columns(x.transpose(2, 3)).transpose(2, 3)


class VDSR(nn.Module):
    """VDSR: ``n_layers`` 3×3 convs of ``n_feats`` channels on the bicubic, plus the bicubic."""

    def __init__(self, n_layers: int = 20, n_feats: int = 64, zoom: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(1, n_feats), nn.ReLU(inplace=True)]
        for _ in range(n_layers - 2):
            layers += [_conv(n_feats, n_feats), nn.ReLU(inplace=True)]
        layers.append(_conv(n_feats, 1))
        self.zoom = zoom
        self.upsample = Bicubic(zoom)
        self.body = nn.Sequential(*layers)
        self.receptive_field = Bicubic.radius + _sr_radius_in_lr(_radius(self.body), zoom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.upsample(x)
        return up + self.body(up)


class _PixelShuffleSR(nn.Module):
    """Head conv, residual ``body`` on LR features, pixel-shuffle ×``zoom`` upsampler (a conv and
    a ``PixelShuffle(f)`` per stage, see :func:`_upsampler_factors`), tail conv."""

    def __init__(self, body: nn.Module, n_feats: int, bicubic_skip: bool, zoom: int) -> None:
        super().__init__()
        factors = _upsampler_factors(zoom)
        self.zoom = zoom
        self.head = _conv(1, n_feats)
        self.body = body
        self.upsample = nn.Sequential(*itertools.chain.from_iterable(
            (_conv(n_feats, f * f * n_feats), nn.PixelShuffle(f)) for f in factors))
        self.tail = _conv(n_feats, 1)
        self.bicubic = Bicubic(zoom) if bicubic_skip else None
        # Walk back from the SR pixels of LR pixel 0, [0, zoom), through the tail and each
        # upsampler stage (conv at its scale, then the shuffle's parent pixels) to the LR scale.
        lo, hi = -_radius(self.tail), zoom - 1 + _radius(self.tail)
        for f, conv in zip(reversed(factors), reversed(self.upsample[::2]), strict=True):
            lo, hi = lo // f - _radius(conv), hi // f + _radius(conv)
        radius = max(-lo, hi) + _radius(self.head) + _radius(self.body)
        self.receptive_field = max(radius, Bicubic.radius) if bicubic_skip else radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(x - 0.5)
        out = self.tail(self.upsample(features + self.body(features)))
        return out + (self.bicubic(x) if self.bicubic is not None else 0.5)


class _Residual(nn.Module):
    """``x + scale · body(x)``."""

    def __init__(self, *layers: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.body(x)


class EDSR(_PixelShuffleSR):
    """EDSR: ``n_blocks`` residual blocks (conv-ReLU-conv, times ``res_scale``) of ``n_feats``."""

    def __init__(
        self, n_blocks: int = 16, n_feats: int = 64, res_scale: float = 1.0,
        bicubic_skip: bool = False, zoom: int = 2,
    ) -> None:
        blocks = [
            _Residual(_conv(n_feats, n_feats), nn.ReLU(inplace=True), _conv(n_feats, n_feats),
                      scale=res_scale)
            for _ in range(n_blocks)
        ]
        super().__init__(nn.Sequential(*blocks, _conv(n_feats, n_feats)), n_feats, bicubic_skip,
                         zoom)


class ChannelAttention(nn.Module):
    """Scale each channel by a gate computed from its local ``window``² mean (squeeze-excitation).

    ``reduction`` sets the bottleneck width ``n_feats // reduction`` of the gate's 1×1 convs.
    """

    def __init__(self, n_feats: int, reduction: int, window: int) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"ca_window must be a positive odd number of pixels, got {window}")
        self.pool = nn.AvgPool2d(window, stride=1, padding=window // 2, count_include_pad=False)
        hidden = max(1, n_feats // reduction)
        self.gate = nn.Sequential(
            _conv(n_feats, hidden, 1), nn.ReLU(inplace=True),
            _conv(hidden, n_feats, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.pool(x))


class RCAN(_PixelShuffleSR):
    """RCAN: ``n_groups`` residual groups of ``n_blocks`` residual channel-attention blocks."""

    def __init__(
        self, n_groups: int = 10, n_blocks: int = 20, n_feats: int = 64, reduction: int = 16,
        ca_window: int = 7, bicubic_skip: bool = False, zoom: int = 2,
    ) -> None:
        def rcab() -> nn.Module:
            return _Residual(
                _conv(n_feats, n_feats), nn.ReLU(inplace=True), _conv(n_feats, n_feats),
                ChannelAttention(n_feats, reduction, ca_window),
            )

        groups = [
            _Residual(*(rcab() for _ in range(n_blocks)), _conv(n_feats, n_feats))
            for _ in range(n_groups)
        ]
        super().__init__(nn.Sequential(*groups, _conv(n_feats, n_feats)), n_feats, bicubic_skip,
                         zoom)


#: Model classes by method name.
MODELS: dict[str, type[nn.Module]] = {"vdsr": VDSR, "edsr": EDSR, "rcan": RCAN}


def preset_params(method: str, preset: str | None = None) -> dict:
    """Architecture parameters of ``preset`` (default: ``method`` as published), less "method"."""
    if method not in MODELS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(MODELS)}")
    preset = method if preset is None else preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    params = dict(PRESETS[preset])
    if params.pop("method") != method:
        raise ValueError(f"preset {preset!r} is a {PRESETS[preset]['method']} model, not {method}")
    return params


def build_model(method: str, preset: str | None = None, *, zoom: int = 2,
                **params) -> nn.Module:
    """A freshly initialised ×``zoom`` ``method`` network with the architecture of ``preset``.

    ``preset=None`` is the network as published; ``params`` override single architecture
    parameters (e.g. ``bicubic_skip=False``).
    """
    params = preset_params(method, preset) | params
    return MODELS[method](zoom=zoom, **params)


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch device; ``None``: CUDA if available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def predict(
    model: nn.Module,
    lr: np.ndarray,
    *,
    device: str | torch.device | None = None,
    tile: int | None = None,
    batch: int = 4,
    amp: bool = False,
) -> np.ndarray:
    """Super-resolve a float32 LR image ``(H, W)`` to float32 ``(zoom·H, zoom·W)`` on the SR grid
    (``model.zoom``).

    The model is moved to ``device`` (default: CUDA if available, else CPU) and set to eval mode.
    With ``tile`` (LR pixels), the image is processed in tiles of ``tile``² plus
    ``model.receptive_field`` pixels of halo, ``batch`` same-shaped tiles at a time; the result
    equals the whole-image one. ``amp`` runs in float16 mixed precision (CUDA only).
    """
    lr = np.asarray(lr, dtype=np.float32)
    if lr.ndim != 2:
        raise ValueError(f"predict expects a 2-D LR image, got shape {lr.shape}")
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be a positive number of LR pixels, got {tile}")
    device = default_device(device)
    if amp and device.type != "cuda":
        raise ValueError(f"amp=True needs a CUDA device, got {device}")
    model.to(device).eval()
    halo, zoom = model.receptive_field, model.zoom
    by_shape: dict[tuple[int, int], list] = {}  # tiles of one shape run as one batch
    for part in Region.of(lr.shape).tiles(tile or max(lr.shape)):
        window = part.pad(halo, lr.shape)
        by_shape.setdefault(window.shape, []).append((part, window))
    sr = np.empty((zoom * lr.shape[0], zoom * lr.shape[1]), np.float32)
    with torch.inference_mode(), torch.autocast(device.type, enabled=amp):
        for group in by_shape.values():
            for first in range(0, len(group), batch):
                chunk = group[first : first + batch]
                x = torch.from_numpy(np.stack([window.crop(lr) for _, window in chunk])[:, None])
                y = model(x.to(device)).float().cpu().numpy()[:, 0]
                for (part, window), out in zip(chunk, y, strict=True):
                    part.sr(zoom).crop(sr)[...] = part.relative_to(window).sr(zoom).crop(out)
    return sr
