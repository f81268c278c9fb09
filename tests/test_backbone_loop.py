"""The one backbone loop (pipeline/extract/loop.py) behind extraction, augmented views and
scoring new images: each path gives the numbers a plain computation gives, bit for bit where
the batches are the same."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from pipeline.backbones import load_backbone
from pipeline.extract.extraction import extract
from pipeline.extract.command import main as extract_cli
from pipeline.extract.datasets import load_dataset
from pipeline.extract.loop import chunk_batches
from pipeline.extract.preprocess import Preprocessing
from pipeline.extract.views import Augmentation
from pipeline.store.views import views_path
from pipeline.store.cache import FeatureCache

SMALL = dict(image_size=32, chunk_rows=8, batch_size=4)


def plain_forward(model, batch: torch.Tensor, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and the intermediate map pooled to ``grid``: one forward pass, no loader.
    Weights and inputs channels-last, as the loop runs them (other layouts round differently)."""
    model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = model(batch.contiguous(memory_format=torch.channels_last), (model.spec.intermediate,))
    pooled_map = F.adaptive_avg_pool2d(out[model.spec.intermediate].float(), grid)
    return out["pooled"].float().numpy(), pooled_map.numpy()


def image_folder(root, per_class: dict[str, int]):
    """PNG images of mixed sizes in train/<class>/ and test/<class>/."""
    rng = np.random.default_rng(1)
    for split, count in per_class.items():
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (18 + i, 22, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_chunk_batches_never_straddle_a_chunk_and_mark_each_chunks_last_batch():
    slices = [slice(0, 8), slice(8, 16), slice(16, 19)]
    assert chunk_batches(slices, [0, 2], 3) == [(0, [0, 1, 2], False), (0, [3, 4, 5], False), (0, [6, 7], True),
                                                (2, [16, 17, 18], True)]
    rows = np.array([5, 9, 11, 20, 31, 40, 41, 44, 50, 60])
    assert chunk_batches([slice(0, 4), slice(4, 8), slice(8, 10)], [1], 3, rows) == [(1, [31, 40, 41], False),
                                                                                    (1, [44], True)]


def test_extraction_with_worker_processes_and_shards_equals_one_plain_run(tmp_path):
    data = load_dataset("synthetic")
    common = dict(maps=("intermediate",), map_grid=2, chunk_rows=16, batch_size=8)  # the map is 2x2 at 32 px
    single = extract(data, "efficientnet_lite0", Preprocessing(image_size=32), tmp_path / "one.zarr", workers=0,
                     **common)
    for shard in ((0, 2), (1, 2)):
        extract(data, "efficientnet_lite0", Preprocessing(image_size=32), tmp_path / "two.zarr", workers=2,
                shard=shard, **common)
    sharded = FeatureCache.open(tmp_path / "two.zarr")
    for split in ("train", "test"):
        for name in single.array_names(split):
            np.testing.assert_array_equal(sharded.read(split, name), single.read(split, name))
    # Against a plain forward pass of the same batch of eight test images.
    model, _ = load_backbone("efficientnet_lite0", 32)
    batch = Preprocessing(image_size=32)([data.test.images[i] for i in range(8)])
    pooled, pooled_map = plain_forward(model, batch, grid=2)
    np.testing.assert_array_equal(single.features("test", np.arange(8)), pooled)
    np.testing.assert_array_equal(single.read("test", "maps/stride16", np.arange(8)), pooled_map.astype(np.float16))


def test_views_command_equals_plain_augmented_forward_passes(tmp_path):
    out = tmp_path / "synthetic.zarr"
    result = CliRunner().invoke(extract_cli, ["--dataset", "synthetic", "--image-size", "32", "--maps", "intermediate",
                                              "--map-grid", "2", "--chunk-rows", "8", "--batch-size", "4",
                                              "--workers", "1", "--views", "2", "--views-seed", "3", "--engine",
                                              "torch", "--out", str(out)])
    assert result.exit_code == 0, result.output
    views = FeatureCache.open(views_path(out))
    data = load_dataset("synthetic")
    model, _ = load_backbone("efficientnet_lite0", 32)
    augment = Augmentation().transform(32)
    preprocessing = Preprocessing(**FeatureCache.open(out).metadata["preprocessing"])
    for rows in ([0, 1, 2, 3], [12, 13, 14, 15]):  # the first batch of the first and of the second chunk
        # The documented recipe: each batch's views are drawn from a seed made of --views-seed and its first row.
        torch.manual_seed(3 * 1_000_003 + rows[0])
        images = [augment(Preprocessing.rgb(data.train.images[i])).float() / 255.0 for _ in range(2) for i in rows]
        pooled, pooled_map = plain_forward(model, preprocessing.normalise(torch.stack(images)), grid=2)
        np.testing.assert_array_equal(views.read("train", "features", np.array(rows)),
                                      pooled.reshape(2, 4, -1).swapaxes(0, 1))
        np.testing.assert_array_equal(views.read("train", "maps/stride16", np.array(rows)),
                                      pooled_map.reshape(2, 4, 112, 2, 2).swapaxes(0, 1).astype(np.float16))
    np.testing.assert_array_equal(views.read("train", "rows"), np.arange(len(data.train.labels)))
    np.testing.assert_array_equal(views.labels("train"), data.train.labels)


@pytest.fixture(scope="module")
def folder_and_cache(tmp_path_factory):
    root = image_folder(tmp_path_factory.mktemp("loop") / "images", {"train": 5, "test": 6})
    cache = extract(load_dataset("imagefolder", root), "efficientnet_lite0", Preprocessing(image_size=32),
                    root.parent / "images.zarr", maps=("intermediate",), map_grid=2, chunk_rows=12, batch_size=4,
                    workers=0, device="cpu")
    return root, cache


def test_scoring_images_computes_the_training_cache_features_bit_for_bit(folder_and_cache, tmp_path):
    from pipeline.heads.knn.head import KNNHead
    from pipeline.heads.loading import load_head
    from pipeline.heads.saving import save_trained_head
    from pipeline.scoring import image_features
    from pipeline.scoring import main as score_cli

    root, cache = folder_and_cache
    train = cache.features("train")[cache.labels("train") == 0]
    path = save_trained_head(tmp_path / "a.head", KNNHead(k=2).fit(train), class_name="a",
                             cache=cache, train_features=train)
    saved = load_head(path)
    # The score command sorts the paths, the image folder lists class by class, file by file:
    # the same order here, so with the extraction's batch size the batches are the same.
    paths = sorted((root / "test").rglob("*.png"))
    assert [str(p) for p in paths] == load_dataset("imagefolder", root).test.images.paths
    features, maps = image_features(saved, paths, torch.device("cpu"), batch_size=4, workers=1)
    np.testing.assert_array_equal(features, cache.features("test"))
    np.testing.assert_array_equal(maps["stride16"], cache.read("test", "maps/stride16"))

    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(score_cli, ["--head", str(path), "--images", str(root / "test"), "--out", str(out),
                                            "--device", "cpu", "--batch-size", "4", "--workers", "0"])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        scores = [float(row["score"]) for row in csv.DictReader(handle)]
    np.testing.assert_array_equal(scores, saved.score(cache.features("test")))
