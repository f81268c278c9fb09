from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("PIPELINE_PROGRESS", "0")


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
    """A small real extraction: synthetic images through EfficientNet-Lite0 at 32x32, with the
    intermediate map (pooled to 2x2: the stride-16 map is 2x2 at 32 px, and a larger grid is
    refused) and the full-resolution trunk map (the PANDA head's input)."""
    from pipeline.extract.extraction import extract
    from pipeline.extract.datasets import load_dataset
    from pipeline.extract.preprocess import Preprocessing

    out = tmp_path_factory.mktemp("caches") / "synthetic.zarr"
    return extract(load_dataset("synthetic"), "efficientnet_lite0", Preprocessing(image_size=32), out,
                   maps=("intermediate",), map_grid=2, trunk_maps="panda", chunk_rows=16, batch_size=8, workers=0)
