"""The heat-map gallery through the real commands (issue #32, "Seeing it"): a patch head stage
with --plots on a cache with masks writes, beside its ROC files, per defect type and for the
normal images the 3 highest- and 3 lowest-scoring test images with their anomaly maps
(``pipeline.evaluate.write_gallery``), records where in its metrics file, and the HTML report
shows them. The cache is test_localisation's (64 px digits, ``--patch-maps patch``)."""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from test_anomaly_folder import DEFECTS, digits_folder, extract, run  # noqa: E402
import test_localisation as localisation  # noqa: E402
from test_localisation import SIZE, opened  # noqa: E402

from pipeline import metrics_file  # noqa: E402

# test_localisation's fixtures, reused: the digits folder with masks and its cache (--patch-maps patch).
folder, cache = localisation.folder, localisation.cache

GROUPS = [*sorted(DEFECTS), "good"]  # the defect types in label order, then the normal images
PER_GROUP = 6  # 3 highest, 3 lowest


@pytest.fixture(scope="module")
def padim(cache, tmp_path_factory) -> dict:
    """One PaDiM stage run with --plots: its metrics file, plots and gallery folders."""
    root = tmp_path_factory.mktemp("padim")
    metrics, plots = root / "metrics" / "padim.json", root / "plots" / "padim"
    result = run("stages.padim", "--cache", str(cache), "--metrics", str(metrics), "--plots", str(plots))
    assert result.exit_code == 0, result.output
    maps = root / "plots" / "padim_maps"
    return {"root": root, "metrics": metrics, "plots": plots, "maps": maps,
            "gallery": json.loads((maps / "gallery.json").read_text())}


def png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_the_gallery_holds_each_types_highest_and_lowest_scoring_images(cache, padim):
    from pipeline.evaluate import read_features
    from pipeline.heads.registry import head_class

    gallery, maps_dir = padim["gallery"], padim["maps"]
    # Beside the ROC files, not under them (dvc plots would read gallery.json as a ROC file).
    assert sorted(p.name for p in padim["plots"].iterdir()) == [f"roc_{name}.json" for name in sorted(DEFECTS)]
    assert list(gallery["groups"]) == GROUPS and gallery["normal"] == "good"
    assert len(list(maps_dir.glob("*.png"))) == PER_GROUP * len(GROUPS)
    payload = metrics_file.read(padim["metrics"])
    assert payload["about"]["gallery"] == "../plots/padim_maps/gallery.json"  # relative to the metrics file

    # The scores, by the head fitted directly as the stage fits it: the same AUROC per type as the
    # metrics, so the same scores; the gallery's are these, and its ends are their extremes.
    store = opened(cache)
    head = head_class("padim")().set_params(seed=gallery["seed"])
    head.fit(read_features(store, "train", trunk=True))
    test = read_features(store, "test", trunk=True)
    scores = head.score_samples(test)
    labels, classes, masks = store.labels("test"), store.classes, store.read("test", "masks")
    normal = labels == classes.index("good")
    for group, entries in gallery["groups"].items():
        own = np.flatnonzero(labels == classes.index(group))
        if group != "good":
            both = normal | (labels == classes.index(group))
            assert roc_auc_score(~normal[both], scores[both]) == pytest.approx(payload["per_class"][group]["auroc"],
                                                                               abs=1e-6)
        assert [(e["end"], e["rank"]) for e in entries] == [(end, r) for end in ("high", "low") for r in (1, 2, 3)]
        for e in entries:
            assert e["file"] == f"{group}_{e['end']}_{e['rank']}.png" and (maps_dir / e["file"]).is_file()
            assert labels[e["row"]] == classes.index(group)
            assert e["score"] == pytest.approx(scores[e["row"]], rel=1e-5)
        ordered = np.sort(scores[own])
        high = [e["score"] for e in entries if e["end"] == "high"]
        low = [e["score"] for e in entries if e["end"] == "low"]
        np.testing.assert_allclose(high, ordered[::-1][:3], rtol=1e-5)
        np.testing.assert_allclose(low, ordered[:3], rtol=1e-5)
        # Masks: five has them, eight its first four images, nine none; the normal ones are empty.
        for e in entries:
            masked = group in ("five", "good") or (group == "eight" and own.tolist().index(e["row"]) < 4)
            assert e["mask_known"] == masked
            assert e["mask_pixels"] == (None if not masked else 0 if group == "good" else (masks[e["row"]] == 1).sum())
            assert group == "good" or not masked or e["mask_pixels"] > 0

    # Each PNG is overlay() of the cache's input, the map (kept float16) and the mask, in the
    # gallery's one colour range: the 1st and 99.9th percentiles of its maps.
    from pipeline.heatmaps import overlay

    rows = sorted({e["row"] for entries in gallery["groups"].values() for e in entries})
    maps = head.anomaly_maps(test, SIZE)[rows].astype(np.float16).astype(np.float32)
    low, high = np.percentile(maps, [1, 99.9])
    assert gallery["colour_range"]["low"] == pytest.approx(low, rel=1e-6)
    assert gallery["colour_range"]["high"] == pytest.approx(high, rel=1e-6)
    inputs = store.read("test", "inputs")
    checked = {"five": 0, "nine": 0, "good": 0}
    for group in checked:
        for e in gallery["groups"][group]:
            mask = masks[e["row"]] if e["mask_known"] else None
            expected = overlay(inputs[e["row"]], maps[rows.index(e["row"])], gallery["colour_range"]["low"],
                               gallery["colour_range"]["high"], mask)
            np.testing.assert_array_equal(png(maps_dir / e["file"]), expected)
            checked[group] += 1
    assert checked == {"five": 6, "nine": 6, "good": 6}


def test_an_image_level_head_leaves_no_gallery_and_clears_an_old_one(cache, padim, tmp_path):
    plots = tmp_path / "plots" / "knn"
    old = tmp_path / "plots" / "knn_maps"
    shutil.copytree(padim["maps"], old)  # what an earlier run of a patch head left there
    metrics = tmp_path / "knn.json"
    result = run("stages.knn", "--cache", str(cache), "--metrics", str(metrics), "--plots", str(plots),
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "gallery" not in metrics_file.read(metrics)["about"]
    assert list(old.iterdir()) == []
    assert sorted(p.name for p in plots.iterdir()) == [f"roc_{name}.json" for name in sorted(DEFECTS)]


def test_no_gallery_without_plots_or_without_the_test_images_in_the_cache(cache, tmp_path):
    # Without --plots: nothing written but the metrics file, and no gallery in it.
    metrics = tmp_path / "out" / "padim.json"
    result = run("stages.padim", "--cache", str(cache), "--metrics", str(metrics))
    assert result.exit_code == 0, result.output
    assert "gallery" not in metrics_file.read(metrics)["about"]
    assert sorted(p.name for p in metrics.parent.iterdir()) == ["padim.about.json", "padim.json"]

    # A cache without masks holds no test inputs: ROC files, no gallery.
    root = digits_folder(tmp_path / "plain", masks=False)
    plain = tmp_path / "plain.zarr"
    made = extract(root, plain, "--image-size", str(SIZE), "--map-grid", "2", "--views", "0", "--patch-maps", "patch")
    assert made.exit_code == 0, made.output
    assert "inputs" not in opened(plain).array_names("test")
    plots, metrics = tmp_path / "plots" / "padim", tmp_path / "plain.json"
    result = run("stages.padim", "--cache", str(plain), "--metrics", str(metrics), "--plots", str(plots))
    assert result.exit_code == 0, result.output
    assert "gallery" not in metrics_file.read(metrics)["about"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["padim"]


def test_the_html_report_shows_the_gallery_with_captions(padim, tmp_path):
    from pipeline.report.command import main

    out_md, out_html = tmp_path / "results.md", tmp_path / "results.html"
    result = CliRunner().invoke(main, ["build", str(padim["metrics"].parent), "--out-md", str(out_md),
                                       "--out-html", str(out_html)])
    assert result.exit_code == 0, result.output
    page = out_html.read_text()
    assert page.count('<img src="data:image/png;base64,') == PER_GROUP * len(GROUPS)
    five = padim["gallery"]["groups"]["five"][0]
    assert f"five: highest #1, score {five['score']:.4g}, mask outlined in cyan" in page
    assert "nine: lowest #3, score " in page and "no mask" in page
    assert "good (normal test images)" in page
    # The embedded image is the PNG file, byte for byte.
    figure = next(f for f in page.split("<figure")[1:] if 'alt="five: highest #1,' in f)
    data = figure.split('<img src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    assert base64.b64decode(data) == (padim["maps"] / five["file"]).read_bytes()

    # A gallery recorded but gone: the page says so, and is still written.
    moved = tmp_path / "moved"
    shutil.copytree(padim["root"] / "metrics", moved / "metrics")
    result = CliRunner().invoke(main, ["build", str(moved / "metrics"), "--out-md", str(tmp_path / "m.md"),
                                       "--out-html", str(tmp_path / "m.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "m.html").read_text()
    assert "<img" not in page and "No heat-map gallery for" in page
