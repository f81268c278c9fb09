import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.backbones import load_backbone
from pipeline.store.cache import FeatureCache
from pipeline.extract.datasets import load_dataset
from pipeline.errors import PipelineError
from pipeline.extract.extraction import extract
from pipeline.extract.preprocess import Preprocessing

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_cache_holds_the_backbone_features_of_every_image(synthetic_cache):
    data = load_dataset("synthetic")
    cache = FeatureCache.open(synthetic_cache.path)
    meta = cache.metadata
    assert meta["backbone"]["name"] == "efficientnet_lite0"
    assert meta["preprocessing"] == Preprocessing(image_size=32).to_dict()
    assert meta["dataset"]["n_train"] == len(data.train.labels) and meta["dataset"]["sha256"]
    assert "torch" in meta["versions"]
    np.testing.assert_array_equal(cache.labels("train"), data.train.labels)
    np.testing.assert_array_equal(cache.labels("test"), data.test.labels)
    # Recompute a few test features directly, outside the extraction loop.
    model, _ = load_backbone("efficientnet_lite0", 32)
    rows = [0, 17, len(data.test.labels) - 1]
    with torch.inference_mode():
        direct = model(Preprocessing(image_size=32)([data.test.images[i] for i in rows]))["pooled"].numpy()
    np.testing.assert_allclose(cache.features("test", np.array(rows)), direct, rtol=1e-4, atol=1e-4)
    maps = cache.array("train", "maps/stride16")
    assert maps.shape == (len(data.train.labels), 112, 2, 2) and maps.dtype == np.float16


def test_interrupted_extraction_resumes_and_only_redoes_missing_chunks(synthetic_cache, tmp_path):
    path = tmp_path / "resume.zarr"
    shutil.copytree(synthetic_cache.path, path)
    original = FeatureCache.open(path).features("train")
    cache = FeatureCache.open(path)
    # Pretend the run died while chunk 1 was being written: not recorded, rows half garbage.
    cache.set_aside("train", {1})
    rows = cache.chunk_slices("train")[1]
    cache.array("train", "features")[rows] = np.full((rows.stop - rows.start, 1280), 7, np.float32)
    chunk0 = path / "train" / "features" / "c" / "0" / "0"
    written = chunk0.stat().st_mtime_ns
    with pytest.raises(PipelineError, match="incomplete"):
        FeatureCache.open(path)
    extract(load_dataset("synthetic"), "efficientnet_lite0", Preprocessing(image_size=32), path,
            maps=("intermediate",), map_grid=2, trunk_maps="panda", chunk_rows=16, batch_size=8, workers=0)
    resumed = FeatureCache.open(path)
    np.testing.assert_array_equal(resumed.features("train"), original)  # bit-identical
    np.testing.assert_array_equal(resumed.read("train", "trunk/stride8"), synthetic_cache.read("train", "trunk/stride8"))
    assert chunk0.stat().st_mtime_ns == written  # chunk 0 was finished, so it was not rewritten
    assert resumed.verify() == []


def test_existing_cache_made_differently_needs_overwrite(synthetic_cache, tmp_path):
    path = tmp_path / "other.zarr"
    shutil.copytree(synthetic_cache.path, path)
    data = load_dataset("synthetic")
    with pytest.raises(PipelineError, match="preprocessing.normalisation.*--overwrite"):
        extract(data, "efficientnet_lite0", Preprocessing(image_size=32, normalisation="inception"), path,
                maps=("intermediate",), map_grid=2, chunk_rows=16, workers=0)
    cache = extract(data, "efficientnet_lite0", Preprocessing(image_size=32, normalisation="inception"), path,
                    chunk_rows=16, workers=0, overwrite=True)
    assert cache.metadata["preprocessing"]["normalisation"] == "inception"
    assert FeatureCache.open(path).map_names() == []


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_offline_paper_configuration_stops_with_one_paragraph(tmp_path):
    # A proxy on a closed local port makes every download fail at once, network or not.
    env = {"TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = run_cli("pipeline.extract", "--backbone", "resnet50", "--dataset", "cifar10",
                     "--data-dir", str(tmp_path / "data"), env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1
    for hint in ("TORCH_HOME", "--weights", "efficientnet_lite0", "--data-dir", "CIFAR-10", "imagefolder"):
        assert hint in error[0]


def test_unknown_names_list_the_valid_ones():
    result = run_cli("pipeline.extract", "--dataset", "imagenet22k")
    assert result.returncode == 2 and "digits" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("pipeline.extract", "--backbone", "resnet49")
    assert result.returncode == 2 and "efficientnet_lite0" in result.stderr


def test_knn_stage_writes_metrics_and_plots_and_refuses_a_mismatched_cache(synthetic_cache, tmp_path):
    from pipeline import metrics_file
    from pipeline.commands.knn import main

    runner = CliRunner()
    metrics = tmp_path / "m.json"
    result = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--k", "2", "--metrics", str(metrics),
                                  "--plots", str(tmp_path / "plots"), "--expect", "backbone.name=efficientnet_lite0",
                                  "--expect", "preprocessing.image_size=32"])
    assert result.exit_code == 0, result.output
    payload = metrics_file.read(metrics)
    assert set(payload["per_class"]) == {"class0", "class1", "class2"}
    assert payload["about"]["backbone"] == "efficientnet_lite0" and payload["about"]["image_size"] == 32
    # The synthetic classes differ in colour and stripes: pretrained features separate them.
    assert payload["mean"]["auroc"] > 0.9
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [f"roc_class{c}.json" for c in range(3)]
    result = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--metrics", str(metrics),
                                  "--expect", "preprocessing.image_size=224"])
    assert result.exit_code == 1 and "image_size is 32 in the cache but 224" in result.output
    result = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--classes", "class9"])
    assert result.exit_code == 1 and "class0, class1, class2" in result.output
    result = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--k", "100", "--metrics", str(metrics)])
    assert result.exit_code == 1 and "fewer than k = 100" in result.output


def test_mixed_precision_is_recorded_and_barely_moves_auroc(tmp_path):
    from pipeline.extract.datasets import load_synthetic
    from pipeline.evaluate import evaluate_one_vs_all
    from pipeline.heads.knn.head import KNNHead

    # bfloat16 is slow on CPUs without native support: keep the dataset tiny.
    data = load_synthetic(tmp_path, False, n_train=8, n_test=6)
    caches = [extract(data, "efficientnet_lite0", Preprocessing(image_size=32), tmp_path / f"{p}.zarr",
                      chunk_rows=16, batch_size=8, workers=0, precision=p) for p in ("float32", "bfloat16")]
    assert caches[1].metadata["features"]["compute_precision"] == "bfloat16"
    full, half = caches[0].features("test"), caches[1].features("test")
    assert not np.array_equal(full, half)  # it really ran in bfloat16
    assert np.linalg.norm(half - full) / np.linalg.norm(full) < 0.05
    aurocs = [np.mean([r["metrics"]["auroc"] for r in evaluate_one_vs_all(c, KNNHead(k=2), [0, 1, 2]).values()])
              for c in caches]
    assert abs(aurocs[0] - aurocs[1]) < 0.02, aurocs


# --- stale features: an image folder edited in place -------------------------------------------

def write_image_folder(root, per_class=3):
    from PIL import Image

    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def edit_in_place(path):
    """Change the pixels of an image without changing its size in bytes or its modification time."""
    from PIL import Image

    stat = path.stat()
    pixels = np.asarray(Image.open(path)).copy()
    pixels[4:12, 4:12] = 255 - pixels[4:12, 4:12]
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()[:stat.st_size]
    path.write_bytes(data + b"\0" * (stat.st_size - len(data)))  # PNG readers ignore bytes after IEND
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


def test_an_image_edited_in_place_is_detected_and_overwrite_re_extracts_it(tmp_path):
    from pipeline.extract.command import main

    root = write_image_folder(tmp_path / "images")
    out = tmp_path / "images.zarr"
    command = ["--dataset", "imagefolder", "--data-dir", str(root), "--image-size", "32", "--map-grid", "2",
               "--chunk-rows", "4", "--batch-size", "4", "--workers", "0", "--out", str(out)]
    assert CliRunner().invoke(main, command).exit_code == 0
    before = FeatureCache.open(out)
    old_features, old_digest = before.features("train"), before.metadata["dataset"]["content_sha256"]
    edited = root / "train" / "b" / "1.png"
    row = load_dataset("imagefolder", root).train.images.paths.index(str(edited))
    edit_in_place(edited)

    # The same command no longer takes the cache for this folder's.
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1 and "already complete" not in result.output
    assert "dataset.content_sha256" in result.output and "made differently" in result.output
    result = CliRunner().invoke(main, [*command, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "already complete" not in result.output and "(12 images extracted" in result.output
    after = FeatureCache.open(out)
    assert after.metadata["dataset"]["content_sha256"] != old_digest
    new_features = after.features("train")
    others = np.arange(len(new_features)) != row
    np.testing.assert_array_equal(new_features[others], old_features[others])
    assert not np.allclose(new_features[row], old_features[row])
    # The edited image's features are the backbone's on the edited pixels.
    model, _ = load_backbone("efficientnet_lite0", 32)
    with torch.inference_mode():
        direct = model(Preprocessing(**after.metadata["preprocessing"])([load_dataset("imagefolder", root).train.images[row]]))["pooled"]
    np.testing.assert_allclose(new_features[row], direct[0].numpy(), rtol=1e-4, atol=1e-4)


def test_overwrite_extracts_a_complete_cache_again_and_resumes_an_unfinished_one(synthetic_cache, tmp_path):
    from pipeline.extract.command import main

    path = tmp_path / "again.zarr"
    shutil.copytree(synthetic_cache.path, path)
    # The fixture's settings (extract's defaults: imagenet normalisation, float32, PyTorch).
    command = ["--dataset", "synthetic", "--image-size", "32", "--maps", "intermediate", "--map-grid", "2",
               "--trunk-maps", "--chunk-rows", "16", "--batch-size", "8", "--workers", "0", "--normalisation",
               "imagenet", "--precision", "float32", "--engine", "torch", "--out", str(path)]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0 and "already complete; nothing to do" in result.output
    chunk0 = path / "train" / "features" / "c" / "0" / "0"
    os.utime(chunk0, ns=(0, 0))
    result = CliRunner().invoke(main, [*command, "--overwrite"])
    assert result.exit_code == 0 and "already complete" not in result.output, result.output
    total = synthetic_cache.size("train") + synthetic_cache.size("test")
    assert f"({total} images extracted" in result.output and chunk0.stat().st_mtime_ns != 0
    again = FeatureCache.open(path)
    for split in ("train", "test"):
        for name in synthetic_cache.array_names(split):
            np.testing.assert_array_equal(again.read(split, name), synthetic_cache.read(split, name))
    # An unfinished cache made the same way (say, an interrupted dvc repro) is resumed, not restarted.
    again.set_aside("train", {1})
    os.utime(chunk0, ns=(0, 0))
    result = CliRunner().invoke(main, [*command, "--overwrite"])
    assert result.exit_code == 0 and "(16 images extracted" in result.output, result.output
    assert chunk0.stat().st_mtime_ns == 0 and FeatureCache.open(path).verify() == []
