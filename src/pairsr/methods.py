"""SR methods behind one interface, and the model folder that stores a fitted one.

Every method maps a float32 LR array ``(h, w)`` (globally scaled intensities, see
:mod:`pairsr.grid`) to its ×``zoom`` SR array ``(zoom*h, zoom*w)`` on the SR grid, and states
``halo``: the LR pixels of context on each side a tile needs for its interior to equal the
whole-image result. The tiled engine relies on nothing else, and sets ``threads`` (the threads
``predict`` may use) to a task's share on a cluster (:mod:`pairsr.cluster`).

A model folder holds ``model.json`` (format, method, parameters, registration records, the
SHA-256 of every data file and a content hash over all of it) beside the method's data files.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import importlib
import json
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


#: What every method's ``fit`` learns from: pairs ``(lr, hr_sr)`` of an LR window (float32,
#: (H, W): the HR footprint and its context, :class:`pairsr.api.TrainingPair`, or a whole field)
#: and the registered HR on its SR grid (float32, (zoom*H, zoom*W), NaN where no HR).
TrainingPairs = list[tuple[np.ndarray, np.ndarray]]


@dataclass
class SRMethod(abc.ABC):
    """The interface of a fitted ×``zoom`` super-resolution method (an abstract base class: a
    method states its ``halo`` and ``predict``; ``fit``, ``save_data`` and ``load_data`` have
    defaults for a method that learns nothing)."""

    name: ClassVar[str] = "base"
    zoom: int = 2
    params: dict = field(default_factory=dict)
    #: Threads ``predict`` may run at once (None: the CPUs this process may use,
    #: :func:`pairsr.patches.cpus`); the networks use torch's threads, set per process.
    threads: int | None = field(default=None, kw_only=True, compare=False)
    #: Dask resources a task running this method must hold (e.g. ``{"GPU": 1}``).
    resources: ClassVar[dict | None] = None
    #: Uncertainty calibration (:class:`pairsr.uncertainty.Calibration`), None when not fitted.
    calibration: object = field(default=None, kw_only=True)

    @property
    @abc.abstractmethod
    def halo(self) -> int:
        """LR pixels of context a tile needs on each side."""

    @property
    def align(self) -> int:
        """LR pixels that a tile's window must start on multiples of (counted from the image's
        first pixel) for its prediction to agree with the whole image's: 1 unless the method's
        output depends on where a window starts (the reduced LB-NLM's lattice)."""
        return 1

    @abc.abstractmethod
    def predict(self, lr: np.ndarray) -> np.ndarray:
        """SR of a float32 LR array (h, w) → float32 (zoom*h, zoom*w)."""

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


#: Every built-in method: name → ``"module:Class"``, imported when first asked for (the networks
#: need torch, slow to import); no module registers itself on import.
BUILTIN: dict[str, str] = {
    "bicubic": "pairsr.methods:Bicubic",
    "lbnlm": "pairsr.lbnlm:LBNLM",
    "lbnlm-original": "pairsr.lbnlm:LBNLMOriginal",
    "vdsr": "pairsr.networks:VDSR",
    "edsr": "pairsr.networks:EDSR",
    "rcan": "pairsr.networks:RCAN",
    "scsr": "pairsr.sparse:ScSR",
    "srsw": "pairsr.sparse:SRSW",
}

#: Methods added at run time by :func:`register_method` (a plug-in's or a test's own class).
_ADDED: dict[str, type[SRMethod]] = {}


def register_method(cls: type[SRMethod]) -> type[SRMethod]:
    """Make ``cls`` available by its ``name`` (class decorator for methods outside pairsr)."""
    _ADDED[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Names of every available method, built-in and added."""
    return sorted(set(BUILTIN) | set(_ADDED))


def method_class(name: str) -> type[SRMethod]:
    """The class of method ``name``, importing the module that provides it if needed."""
    if name in _ADDED:
        return _ADDED[name]
    if name not in BUILTIN:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(method_names())}")
    module, cls = BUILTIN[name].split(":")
    return getattr(importlib.import_module(module), cls)


def needs_fit(cls: type[SRMethod]) -> bool:
    """Whether method ``cls`` must be fitted on a pair before it can predict."""
    return cls.fit.__func__ is not SRMethod.fit.__func__


def _fit_free(name: str) -> type[SRMethod] | None:
    """The class of ``name`` when it is a method that needs no fitting (e.g. 'bicubic')."""
    try:
        cls = method_class(name)
    except ValueError:
        return None
    return None if needs_fit(cls) else cls


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
    if not Path(folder).exists() and (cls := _fit_free(str(folder))) is not None:
        return cls()
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
    if not Path(folder).exists() and _fit_free(str(folder)) is not None:
        return hashlib.sha256(str(folder).encode()).hexdigest()
    return read_config(folder)["hash"]
