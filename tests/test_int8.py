"""int8 extraction (``--precision int8``, ONNX Runtime, pipeline/extract/quantise.py): the model is
quantised once per backbone, image size and calibration, kept in the model store, recorded in the
cache, and used again, unchanged, by the augmented views and by scoring new images."""

import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.extract import quantise
from pipeline.extract.datasets import load_dataset
from pipeline.extract.extraction import extract
from pipeline.extract.preprocess import Preprocessing

SMALL = dict(maps=("intermediate",), map_grid=2, chunk_rows=16, batch_size=8, workers=0)  # the map is 2x2 at 32 px


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One model store for the module (a quantisation takes seconds), as FFAD_MODEL_STORE."""
    folder = tmp_path_factory.mktemp("models")
    before = os.environ.get(quantise.STORE_VARIABLE)
    os.environ[quantise.STORE_VARIABLE] = str(folder)
    yield folder
    if before is None:
        del os.environ[quantise.STORE_VARIABLE]
    else:
        os.environ[quantise.STORE_VARIABLE] = before


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A small image folder: two classes, 6 training and 3 test images each."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 3)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def int8_cache(store, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("caches") / "int8.zarr"
    return extract(load_dataset("imagefolder", images), "efficientnet_lite0", Preprocessing(image_size=32), out,
                   precision="int8", engine="auto", trunk_maps="panda", **SMALL)


def test_the_cache_records_the_quantised_model_and_its_calibration(int8_cache, store):
    features = int8_cache.metadata["features"]
    assert features["compute_precision"] == "int8" and features["engine"] == "onnxruntime"
    record = features["int8"]
    assert record["format"] == "QDQ" and record["weights"].startswith("int8")
    calibration = record["calibration"]
    # 12 training images, fewer than the 256 drawn by default: all of them.
    assert calibration == {"split": "train", "images": 12, "seed": 0, "method": "MinMax",
                           "rows_sha256": calibration["rows_sha256"]}
    path = store / f"{record['model']}.onnx"
    assert path.is_file() and record["model"].startswith("efficientnet_lite0_32_int8_")
    assert quantise._sha256(path) == record["model_sha256"]
    assert quantise.find_int8_model(record) == path


def test_the_int8_features_are_close_to_float32_and_not_equal(int8_cache, images, tmp_path):
    exact = extract(load_dataset("imagefolder", images), "efficientnet_lite0", Preprocessing(image_size=32),
                    tmp_path / "f32.zarr", engine="onnxruntime", trunk_maps="panda", **SMALL)
    for split in ("train", "test"):
        for name in exact.array_names(split):
            a, b = exact.read(split, name), int8_cache.read(split, name)
            if name == "labels":
                np.testing.assert_array_equal(a, b)
                continue
            a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            assert cosine.min() > 0.8 and not np.array_equal(a, b), (split, name, cosine.min())


def test_the_model_is_made_once_per_calibration(int8_cache, images, store, tmp_path, monkeypatch):
    made = []
    original = quantise.quantise
    monkeypatch.setattr(quantise, "quantise", lambda *a, **k: made.append(1) or original(*a, **k))
    data = load_dataset("imagefolder", images)
    again = extract(data, "efficientnet_lite0", Preprocessing(image_size=32), tmp_path / "again.zarr",
                    precision="int8", engine="onnxruntime", trunk_maps="panda", **SMALL)
    assert not made  # found in the store
    assert again.metadata["features"]["int8"] == int8_cache.metadata["features"]["int8"]
    np.testing.assert_array_equal(again.features("test"), int8_cache.features("test"))
    # Another calibration is another model: made, and named apart (the same bytes when made again).
    from pipeline.backbones import load_backbone

    model, weights = load_backbone("efficientnet_lite0", 32)
    backbone = {"name": "efficientnet_lite0", "weights": weights.tag, "weights_sha256": weights.sha256}
    other = quantise.make_int8_model(model, backbone, Preprocessing(image_size=32), data,
                                     quantise.Calibration(images=5, seed=1))
    assert made == [1] and other["model"] != int8_cache.metadata["features"]["int8"]["model"]
    assert other["calibration"]["images"] == 5 and other["calibration"]["seed"] == 1
    os.unlink(quantise.stored_model(other))
    assert quantise.make_int8_model(model, backbone, Preprocessing(image_size=32), data,
                                    quantise.Calibration(images=5, seed=1)) == other  # deterministic


def test_calibration_rows_are_a_seeded_draw_of_the_training_split():
    rows = quantise.calibration_rows(1000, quantise.Calibration(images=256, seed=0))
    assert len(rows) == 256 == len(set(rows.tolist())) and list(rows) == sorted(rows)
    np.testing.assert_array_equal(rows, quantise.calibration_rows(1000, quantise.Calibration(images=256, seed=0)))
    assert not np.array_equal(rows, quantise.calibration_rows(1000, quantise.Calibration(images=256, seed=1)))
    np.testing.assert_array_equal(quantise.calibration_rows(7, quantise.Calibration()), np.arange(7))


def test_views_and_scoring_use_the_same_int8_model(int8_cache, images, tmp_path):
    from pipeline.backbones import load_backbone
    from pipeline.commands.knn import main as knn_main
    from pipeline.extract.views import extract_views
    from pipeline.scoring import image_features
    from pipeline.heads.loading import load_head

    # Views: made by the int8 model the cache records (the views store records the cache's metadata).
    data = load_dataset("imagefolder", images)
    store = extract_views(data, int8_cache, load_backbone("efficientnet_lite0", 32), views=1, batch_size=8,
                          workers=0, device="cpu")
    assert store.metadata["views_of"]["features"]["int8"] == int8_cache.metadata["features"]["int8"]
    # Scoring the test images with a saved head gives the cache's features (same model, same rounding).
    assert CliRunner().invoke(knn_main, ["--cache", str(int8_cache.path), "--metrics", str(tmp_path / "m.json"),
                                         "--save-heads", str(tmp_path / "heads")]).exit_code == 0
    saved = load_head(tmp_path / "heads" / "a.head")
    paths = sorted((images / "test" / "a").iterdir()) + sorted((images / "test" / "b").iterdir())
    import torch

    features, _ = image_features(saved, paths, torch.device("cpu"), batch_size=8)
    np.testing.assert_allclose(features, int8_cache.features("test"), rtol=1e-5, atol=1e-6)


def test_a_missing_or_other_model_is_refused_with_what_to_do(int8_cache, store, tmp_path):
    record = dict(int8_cache.metadata["features"]["int8"])
    with pytest.raises(PipelineError, match="SHA-256"):
        quantise.find_int8_model({**record, "model_sha256": "0" * 64})
    with pytest.raises(PipelineError, match="not in the model store.*extraction command that made the cache again"):
        quantise.find_int8_model({**record, "model": record["model"] + "_gone"})


def test_int8_runs_only_with_onnxruntime_on_the_cpu(tmp_path):
    with pytest.raises(PipelineError, match="int8 runs on the CPU with --engine onnxruntime"):
        extract(load_dataset("synthetic"), "efficientnet_lite0", Preprocessing(image_size=32), tmp_path / "c.zarr",
                engine="torch", precision="int8", **SMALL)
    assert not (tmp_path / "c.zarr").exists()
