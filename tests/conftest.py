"""Shared test helpers: an independent OME-NGFF validator for every store the tests write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr


def check_ngff(path: str | Path) -> dict:
    """Validate an OME-Zarr image with ``ome-zarr-models`` (NGFF 0.5 and its ``omero`` block,
    whose window must lie within its limits); return the ``ome`` attributes."""
    image_model = pytest.importorskip("ome_zarr_models.v05").Image
    from ome_zarr_models.common.omero import Omero

    group = zarr.open_group(path, mode="r")
    image_model.from_zarr(group)  # raises ValidationError on any violation of the spec
    ome = group.attrs["ome"]
    omero = Omero.model_validate(ome["omero"])
    for channel in omero.channels:
        w = channel.window
        assert w.min <= w.start <= w.end <= w.max
    return ome


@pytest.fixture
def ngff():
    """:func:`check_ngff` as a fixture."""
    return check_ngff


def psnr(a, b, border: int) -> float:
    """PSNR (dB, unit peak) of ``a`` against ``b`` inside a ``border``-px frame."""
    inner = np.s_[border:-border, border:-border]
    return float(-10 * np.log10(np.mean((a[inner] - b[inner]) ** 2)))
