"""SR methods behind one interface, and the model folder that stores a fitted one.

Every method maps a float32 LR array ``(h, w)`` (globally scaled intensities, see
:mod:`pairsr.grid`) to its ×``zoom`` SR array ``(zoom*h, zoom*w)`` on the SR grid, and states
``halo``: the LR pixels of context on each side a tile needs for its interior to equal the
whole-image result. The tiled engine relies on nothing else.

A model folder holds ``model.json`` (format, method, parameters, registration records, the
SHA-256 of every data file and a content hash over all of it) beside the method's data files.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from pairsr import __version__
from pairsr.grid import BICUBIC_HALO, bicubic

MODEL_FORMAT = "pairsr-model"
MODEL_FORMAT_VERSION = 1


class ModelError(ValueError):
    """A model folder is missing, corrupt, or does not match what is asked of it."""


@dataclass
class SRMethod:
    """Base class: a fitted ×``zoom`` super-resolution method."""

    name: ClassVar[str] = "base"
    zoom: int = 2
    params: dict = field(default_factory=dict)
    #: Dask resources a task running this method must hold (e.g. ``{"GPU": 1}``).
    resources: ClassVar[dict | None] = None
    #: Uncertainty calibration (:class:`pairsr.uncertainty.Calibration`), None when not fitted.
    calibration: object = field(default=None, kw_only=True)

    @property
    def halo(self) -> int:
        """LR pixels of context a tile needs on each side."""
        raise NotImplementedError

    def predict(self, lr: np.ndarray) -> np.ndarray:
        """SR of a float32 LR array (h, w) → float32 (zoom*h, zoom*w)."""
        raise NotImplementedError

    def save_data(self, folder: Path) -> list[str]:
        """Write the method's data files into ``folder``; return their names."""
        return []

    @classmethod
    def load_data(cls, folder: Path, config: dict) -> SRMethod:
        return cls(zoom=config["zoom"], params=config["params"])

    @classmethod
    def fit(cls, pairs: list[tuple[np.ndarray, np.ndarray]], *, zoom: int = 2) -> SRMethod:
        """Learn from training pairs ``(lr, hr_sr)`` (see :data:`TrainingPairs`)."""
        return cls(zoom=zoom)


@dataclass
class Bicubic(SRMethod):
    """The bicubic ×zoom baseline (:func:`pairsr.grid.bicubic`); needs no fitting."""

    name: ClassVar[str] = "bicubic"

    @property
    def halo(self) -> int:
        return BICUBIC_HALO

    def predict(self, lr: np.ndarray) -> np.ndarray:
        return bicubic(lr, self.zoom)


#: Registry of method classes by name; modules add theirs with :func:`register_method`.
METHODS: dict[str, type[SRMethod]] = {"bicubic": Bicubic}


#: Modules that register further methods when imported (kept lazy: torch is slow to import).
_PROVIDERS = {"scsr": "pairsr.sparse", "srsw": "pairsr.sparse"}


def register_method(cls: type[SRMethod]) -> type[SRMethod]:
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[SRMethod]:
    """The class of method ``name``, importing the module that provides it if needed."""
    if name not in METHODS and name in _PROVIDERS:
        importlib.import_module(_PROVIDERS[name])
    if name not in METHODS:
        known = sorted(set(METHODS) | set(_PROVIDERS))
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(known)}")
    return METHODS[name]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _content_hash(config: dict) -> str:
    body = {k: v for k, v in config.items() if k not in ("hash", "pairsr_version")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save_model(method: SRMethod, folder: str | Path, *, extra: dict | None = None,
               overwrite: bool = False) -> Path:
    """Write ``method`` as a model folder; ``extra`` (e.g. registrations) goes in its JSON."""
    folder = Path(folder)
    if (folder / "model.json").exists() and not overwrite:
        raise FileExistsError(f"{folder}: a model exists there; pass overwrite=True to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    files = method.save_data(folder)
    calibration = {}
    if method.calibration is not None:
        files += method.calibration.save(folder)
        calibration = {"uncertainty": method.calibration.to_dict()}
    config = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "method": method.name,
        "zoom": method.zoom,
        "halo": method.halo,
        "params": method.params,
        "files": {name: _sha256(folder / name) for name in files},
        **calibration,
        **(extra or {}),
        "pairsr_version": __version__,
    }
    config["hash"] = _content_hash(config)
    (folder / "model.json").write_text(json.dumps(config, indent=1))
    return folder


def read_config(folder: str | Path) -> dict:
    """Read and verify ``model.json`` and the checksums of the files it lists."""
    folder = Path(folder)
    path = folder / "model.json"
    if not path.is_file():
        raise ModelError(f"{folder}: not a pairsr model folder (no model.json)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: corrupt model.json ({err})") from None
    if config.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: not a pairsr model (format {config.get('format')!r})")
    try:
        method_class(config.get("method"))
    except ValueError as err:
        raise ModelError(f"{path}: {err}") from None
    if config.get("hash") != _content_hash(config):
        raise ModelError(f"{path}: content hash mismatch; the model was edited or is corrupt")
    for name, digest in config.get("files", {}).items():
        if not (folder / name).is_file():
            raise ModelError(f"{folder}: missing data file {name}")
        if _sha256(folder / name) != digest:
            raise ModelError(f"{folder / name}: checksum mismatch; the file is corrupt or replaced")
    return config


def load_model(folder: str | Path) -> SRMethod:
    """Load a model folder (verified), or a method that needs no fitting by name ('bicubic')."""
    if str(folder) in METHODS and not Path(folder).exists():
        return METHODS[str(folder)]()
    folder = Path(folder)
    config = read_config(folder)
    method = method_class(config["method"]).load_data(folder, config)
    if "uncertainty" in config:
        from pairsr.uncertainty import Calibration

        try:
            method.calibration = Calibration.from_dict(config["uncertainty"], folder)
        except (ValueError, OSError, KeyError) as err:
            raise ModelError(f"{folder}: uncertainty calibration: {err}") from None
    return method


@functools.lru_cache(maxsize=4)
def _cached(folder: str, token: str) -> SRMethod:
    return load_model(folder)


def cached_model(folder: str | Path) -> SRMethod:
    """:func:`load_model`, once per process for an unchanged model (used by workers)."""
    path = Path(folder) / "model.json"
    token = path.read_text() if path.is_file() else str(folder)
    return _cached(str(folder), hashlib.sha256(token.encode()).hexdigest())


def model_hash(folder: str | Path) -> str:
    """Content hash of a model folder, or of a fit-free method's name."""
    if str(folder) in METHODS and not Path(folder).exists():
        return hashlib.sha256(str(folder).encode()).hexdigest()
    return read_config(folder)["hash"]


# --- Fitting: every method learns from training pairs ``(lr, hr_sr)``: the LR field (float32,
# (H, W)) and the registered HR on its SR grid (float32, (zoom*H, zoom*W), NaN where no HR).

TrainingPairs = list[tuple[np.ndarray, np.ndarray]]

@register_method
@dataclass
class LBNLM(SRMethod):
    """The paired LB-NLM (paper Algorithm 1): a k-means stratified library of (upsampled LR, HR)
    patch pairs and a library-based non-local-means filter of the bicubic-upsampled LR."""

    name: ClassVar[str] = "lbnlm"
    library: object = None  # pairsr.library.Library

    @property
    def halo(self) -> int:
        from pairsr.lbnlm import halo

        return halo(self.library.n, self.zoom)

    def _filter(self, up: np.ndarray) -> np.ndarray:
        from pairsr.lbnlm import lbnlm_filter

        p, n = self.params, self.library.n
        # Tiles start on multiples of ``zoom`` SR px: the always-estimated lattice must divide it
        # (and be at most n, so that its patches cover every pixel).
        lattice = max(d for d in range(1, min(n, self.zoom) + 1) if self.zoom % d == 0)
        return lbnlm_filter(up, self.library, sigma=p["sigma"], categories=p["categories"],
                            stride=p["stride"], residual=p["residual"], device=p.get("device"),
                            exact=p.get("exact", False), lattice=lattice)

    def predict(self, lr: np.ndarray) -> np.ndarray:
        return self._filter(bicubic(lr, self.zoom))

    def save_data(self, folder: Path) -> list[str]:
        self.library.save(folder)
        return ["library.npz"]

    @classmethod
    def load_data(cls, folder: Path, config: dict) -> SRMethod:
        from pairsr.library import Library

        try:
            library = Library.load(folder)
        except (ValueError, OSError) as err:
            raise ModelError(str(err)) from None
        return cls(zoom=config["zoom"], params=config["params"], library=library)

    @classmethod
    def fit(cls, pairs: TrainingPairs, *, zoom: int = 2, n: int = 9, k: int = 50, K: int = 10,
            L: int = 20000, sigma: float | str = "auto", categories: int = 1, stride: int = 1,
            residual: bool = False, seed: int = 0, device: str | None = None,
            exact: bool = False) -> SRMethod:
        """Build the library from ``pairs`` (:func:`pairsr.library.sample_patches`: ``k``
        categories, fewer for an HR of under ``k·n²`` patches, and ``categories`` at most that;
        ``L // k`` members each); with
        ``sigma="auto"``, choose σ by k-fold validation on held-out bands of the HR footprint
        (:func:`pairsr.sigma.select_sigma`; a documented default and a warning when the HR is
        too small to validate), recorded in ``params["sigma_search"]``. ``exact`` runs the
        paper's full attention instead of the reduced-rank default
        (:func:`pairsr.lbnlm.lbnlm_filter`)."""
        from pairsr.library import sample_patches
        from pairsr.patches import check_grid
        from pairsr.sigma import select_sigma

        check_grid(n, stride, zoom)
        train = [(bicubic(lr, zoom), hr) for lr, hr in pairs]
        sample = sample_patches(train, n=n, k=k, K=K, L=L, seed=seed)
        library = sample.library()
        categories = min(categories, library.k)
        params = {"n": n, "k": k, "K": K, "L": L, "categories": categories, "stride": stride,
                  "residual": residual, "seed": seed, "device": device, "exact": exact}
        if sigma == "auto":
            choice = select_sigma(sample, train, categories=categories, residual=residual,
                                  seed=seed, device=device)
            sigma = choice.sigma
            params["sigma_search"] = choice.record()
        params["sigma"] = float(sigma)
        return cls(zoom=zoom, params=params, library=library)


@register_method
@dataclass
class LBNLMOriginal(LBNLM):
    """Sreehari et al.'s LB-NLM (comparison method): HR library patches only, weights from the
    upsampled query against the HR patches, over the whole library."""

    name: ClassVar[str] = "lbnlm-original"

    def _filter(self, up: np.ndarray) -> np.ndarray:
        from pairsr.lbnlm import lbnlm_original

        p = self.params
        return lbnlm_original(up, self.library, sigma=p["sigma"], stride=p["stride"],
                              device=p.get("device"))


@dataclass
class Network(SRMethod):
    """A PyTorch SR network (:mod:`pairsr.models`) trained on the pair(s) (:mod:`pairsr.train`).

    Tiled inference asks Dask for a ``GPU`` resource; the halo is the network's receptive field.
    """

    name: ClassVar[str] = "network"
    resources: ClassVar[dict | None] = {"GPU": 1}
    #: ``fit`` trains in the model folder itself, so an interrupted training can resume there.
    trains_in_folder: ClassVar[bool] = True
    net: object = None  # torch.nn.Module
    files: tuple[str, ...] = ("weights.pt", "config.json", "train_log.json")

    @property
    def halo(self) -> int:
        return int(self.net.receptive_field)

    def predict(self, lr: np.ndarray) -> np.ndarray:
        from pairsr.models import predict

        return predict(self.net, lr, device=self.params.get("device"),
                       amp=bool(self.params.get("amp", False)))

    def save_data(self, folder: Path) -> list[str]:
        source = Path(self.params["folder"])
        if source.resolve() != folder.resolve():
            for name in self.files:
                shutil.copyfile(source / name, folder / name)
        return list(self.files)

    @classmethod
    def load_data(cls, folder: Path, config: dict) -> SRMethod:
        from pairsr.train import load

        try:
            net, _ = load(folder)
        except (ValueError, OSError) as err:
            raise ModelError(str(err)) from None
        if net.zoom != config["zoom"]:
            raise ModelError(f"{folder}: model.json says ×{config['zoom']}, the network in "
                             f"config.json is ×{net.zoom}")
        return cls(zoom=config["zoom"], params={**config["params"], "folder": str(folder)},
                   net=net)

    @classmethod
    def fit(cls, pairs: TrainingPairs, *, zoom: int = 2, folder: str | Path | None = None,
            preset: str | None = None, device: str | None = None, amp: bool = False,
            **train_options) -> SRMethod:
        """Train on ``pairs`` in ``folder`` (default: a temporary folder); ``train_options`` go to
        :func:`pairsr.train.train` (epochs, patch, batch, lr_rate, patience, seed, resume, …)."""
        from pairsr.train import train

        folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="pairsr-"))
        result = train(list(pairs), cls.name, preset, out=folder, zoom=zoom, device=device,
                       **train_options)
        params = {"preset": preset, "amp": amp, "folder": str(folder),
                  **{k: v for k, v in train_options.items() if k not in ("resume", "progress")}}
        return cls(zoom=zoom, params=params, net=result.model)


for _name in ("vdsr", "edsr", "rcan"):
    register_method(type(_name.upper(), (Network,), {"name": _name, "__doc__": Network.__doc__}))
