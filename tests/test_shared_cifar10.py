"""The offline CIFAR-10 JPEG copy from ../shared, as a user's image folder (skipped without it)."""

import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.extract.datasets import load_dataset
from pipeline.evaluate import evaluate_one_vs_all
from pipeline.extract.extraction import extract
from pipeline.heads.knn.head import KNNHead
from pipeline.extract.preprocess import Preprocessing

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpg.tar.gz"
pytestmark = pytest.mark.skipif(not ARCHIVE.exists(), reason="../shared/datasets/cifar10-jpg.tar.gz is absent")


def cifar_subset(target: Path, per_class: dict[str, int]) -> Path:
    """The first few images of each class and split, unpacked as an image folder."""
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(ARCHIVE) as archive:
        for member in archive:
            parts = Path(member.name).parts[-3:]
            if not member.isfile() or len(parts) != 3 or parts[0] not in per_class:
                continue
            key = (parts[0], parts[1])
            if counts.get(key, 0) < per_class[parts[0]]:
                counts[key] = counts.get(key, 0) + 1
                member.name = "/".join(parts)
                archive.extract(member, target, filter="data")
    return target


def test_cifar10_jpeg_subset_through_imagefolder_extract_and_knn(tmp_path):
    root = cifar_subset(tmp_path / "cifar", {"train": 20, "test": 10})
    data = load_dataset("imagefolder", root)
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(data.train.labels) == 200 and len(data.test.labels) == 100
    assert data.train.images[0].shape == (3, 32, 32)
    cache = extract(data, "efficientnet_lite0", Preprocessing(image_size=64), tmp_path / "c.zarr",
                    batch_size=50, workers=0)
    results = evaluate_one_vs_all(cache, KNNHead(k=2), list(range(10)))
    aurocs = np.array([r["metrics"]["auroc"] for r in results.values()])
    # ImageNet features separate CIFAR classes above chance (0.5) even from 20 images per class at 64 px.
    assert aurocs.mean() > 0.6, aurocs  # 0.64 measured at 64 px
