"""The paper's SR networks (VDSR, EDSR, RCAN) as pairsr methods, trained on the pair.

The architectures are in :mod:`pairsr.models`, their training in :mod:`pairsr.train`.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from pairsr.methods import ModelError, SRMethod, TrainingPairs


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


class VDSR(Network):
    """VDSR (Kim et al. 2016) trained on the pair; see :class:`Network`."""

    name: ClassVar[str] = "vdsr"


class EDSR(Network):
    """EDSR (Lim et al. 2017) trained on the pair; see :class:`Network`."""

    name: ClassVar[str] = "edsr"


class RCAN(Network):
    """RCAN (Zhang et al. 2018) trained on the pair; see :class:`Network`."""

    name: ClassVar[str] = "rcan"
