"""Localisation through the real commands: an anomaly folder's masks and the patch maps in the
cache (``pipeline.extract --patch-maps``), the patch heads' anomaly maps graded by pixel AUROC
and AUPRO in the metrics, and the refusals around them.

The folder is test_anomaly_folder's digits: masks for ``five`` (MVTec's ``<name>_mask.png``) and
the first four images of ``eight`` (anomalib's same name); ``nine`` has none."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from cli_results import error_line  # noqa: E402
from test_anomaly_folder import DEFECTS, digits_folder, extract, run  # noqa: E402

from pipeline import metrics_file  # noqa: E402

SIZE = 64  # EfficientNet-Lite0's stride8 map is then 8x8, its stride16 map 4x4


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("images") / "digits")


@pytest.fixture(scope="module")
def cache(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("caches") / "patches.zarr"
    result = extract(folder, out, "--image-size", str(SIZE), "--map-grid", "2", "--views", "0", "--patch-maps", "patch")
    assert result.exit_code == 0, result.output
    return out


def opened(path: Path):
    from pipeline.store.cache import FeatureCache

    return FeatureCache.open(path)


def nearest_by_hand(mask: np.ndarray, side: int) -> np.ndarray:
    """A plain loop: output pixel (i, j) takes the input pixel whose cell holds its centre."""
    height, width = mask.shape
    out = np.zeros((side, side), np.uint8)
    for i in range(side):
        for j in range(side):
            out[i, j] = mask[int((i + 0.5) * height / side), int((j + 0.5) * width / side)] > 0
    return out


def test_the_cache_holds_the_patch_stages_and_the_masks_as_the_images_were_resized(folder, cache):
    from PIL import Image

    store = opened(cache)
    features = store.metadata["features"]
    assert features["patch"] == {"stages": ["stride8", "stride16"], "dtype": "float16",
                                 "shapes": {"stride8": [40, 8, 8], "stride16": [112, 4, 4]}}
    assert store.trunk_names("test") == ["stride16", "stride8"]
    assert store.read("train", "trunk/stride8").dtype == np.float16
    masks, labels, classes = store.read("test", "masks"), store.labels("test"), store.classes
    assert masks.shape == (len(labels), SIZE, SIZE) and masks.dtype == np.uint8
    paths = sorted((folder / "test").rglob("*.png"))
    for row, label in enumerate(labels):
        name = classes[label]
        index = int(sum(1 for r in range(row) if labels[r] == label))
        if name == "good":
            assert (masks[row] == 0).all()
        elif name == "five" or (name == "eight" and index < 4):
            stem = f"{index:03d}_mask.png" if name == "five" else f"{index:03d}.png"
            by_file = np.asarray(Image.open(folder / "ground_truth" / name / stem))
            np.testing.assert_array_equal(masks[row], nearest_by_hand(by_file, SIZE))
            assert masks[row].any()
        else:  # a defect image without a mask: unknown, never "no defect"
            assert (masks[row] == 255).all()
    assert paths  # the folder is the one the masks were checked against


def test_a_cache_without_masks_or_patch_maps_stores_neither(tmp_path):
    root = digits_folder(tmp_path / "plain", masks=False)
    out = tmp_path / "plain.zarr"
    assert extract(root, out, "--views", "0").exit_code == 0
    store = opened(out)
    assert "masks" not in store.array_names("test") and "patch" not in store.metadata["features"]
    assert store.trunk_names("train") == []


def test_patch_maps_shared_with_the_trunk_map_are_stored_once(folder, tmp_path):
    out = tmp_path / "both.zarr"
    result = extract(folder, out, "--views", "0", "--trunk-maps", "panda", "--patch-maps", "stride8")
    assert result.exit_code == 0, result.output
    store = opened(out)
    assert store.trunk_names("train") == ["stride8"]
    assert store.metadata["features"]["trunk"]["stage"] == "stride8"
    assert store.metadata["features"]["patch"]["stages"] == ["stride8"]


def test_an_unknown_patch_stage_is_refused_before_anything_is_written(folder, tmp_path):
    out = tmp_path / "bad.zarr"
    line = error_line(extract(folder, out, "--views", "0", "--patch-maps", "stride99"))
    assert "stride99" in line and "stride8, stride16" in line
    assert not out.exists()


@pytest.mark.parametrize("head, options", [("patchcore", ["--device", "cpu"]), ("padim", [])])
def test_patch_heads_grade_their_maps_where_there_are_masks(cache, tmp_path, head, options):
    metrics = tmp_path / f"{head}.json"
    result = run(f"stages.{head}", "--cache", str(cache), "--metrics", str(metrics), *options)
    assert result.exit_code == 0, result.output
    assert "pixel AUROC" in result.output and "AUPRO" in result.output
    payload = metrics_file.read(metrics)
    assert list(payload["per_class"]) == sorted(DEFECTS)  # image level, as every head
    pixel = payload["pixel"]
    # Only the defect types with masks are graded by pixel; nine has none.
    assert sorted(pixel["per_class"]) == ["eight", "five"]
    assert set(pixel["overall"]) == {"pixel_auroc", "aupro"}
    assert payload["about"]["pixel_metrics"].startswith("pixel AUROC")

    # The overall pixel AUROC, by scikit-learn over the known pixels of a head fitted the same way.
    from pipeline.evaluate import read_features
    from pipeline.heads.registry import head_class

    store = opened(cache)
    fitted = head_class(head)(**({"device": "cpu"} if head == "patchcore" else {}))
    fitted.fit(read_features(store, "train", trunk=True))
    maps = fitted.anomaly_maps(read_features(store, "test", trunk=True), SIZE)
    masks = store.read("test", "masks")
    known = (masks != 255).all(axis=(1, 2))
    expected = roc_auc_score(masks[known].ravel(), maps[known].ravel())
    assert pixel["overall"]["pixel_auroc"] == pytest.approx(expected, abs=1e-6)


def test_image_level_heads_have_no_pixel_metrics(cache, tmp_path):
    metrics = tmp_path / "knn.json"
    result = run("stages.knn", "--cache", str(cache), "--metrics", str(metrics), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "pixel" not in metrics_file.read(metrics)


@pytest.mark.parametrize("head", ["patchcore", "padim"])
def test_patch_heads_refuse_a_cache_without_patch_maps_before_any_work(folder, tmp_path, head):
    out = tmp_path / "pooled.zarr"
    assert extract(folder, out, "--views", "0").exit_code == 0
    metrics = tmp_path / "m.json"
    line = error_line(run(f"stages.{head}", "--cache", str(out), "--metrics", str(metrics)))
    assert "--patch-maps patch" in line
    assert not metrics.exists()
