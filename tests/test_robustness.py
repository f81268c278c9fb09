"""The robustness protocol end to end: corrupted test splits in the cache (extraction, resume,
adding to a finished cache), heads scoring them with the state fitted once per class (--shift),
the metrics' shift section, and the report's robustness table and figures."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli_results import error_line
from pipeline.extract.command import main as extract_main
from pipeline.store.cache import FeatureCache

SPLITS = ["test@identity@1", "test@identity@5", "test@gaussian_noise@1", "test@gaussian_noise@5", "test@fog@1",
          "test@fog@5"]


def extract_args(out, *more: str) -> list[str]:
    return ["--dataset", "synthetic", "--image-size", "32", "--maps", "none", "--views", "0", "--chunk-rows", "16",
            "--batch-size", "8", "--out", str(out), "-q", *more]


@pytest.fixture(scope="module")
def shifted_cache(tmp_path_factory):
    """Synthetic images at 32 px with identity, gaussian_noise and fog at severities 1 and 5, the
    images corrupted in a DataLoader worker."""
    out = tmp_path_factory.mktemp("robust") / "shifted.zarr"
    result = CliRunner().invoke(extract_main, extract_args(out, "--workers", "1", "--corruptions",
                                                           "identity,gaussian_noise,fog", "--severities", "1,5"))
    assert result.exit_code == 0, result.output
    return FeatureCache.open(out)


# --- extraction ---------------------------------------------------------------------------------

def test_every_corrupted_split_is_a_checked_copy_of_the_test_split(shifted_cache):
    cache = shifted_cache
    assert cache.splits == ["train", "test", *SPLITS] and cache.verify() == []
    clean = cache.features("test")
    for split in SPLITS:
        np.testing.assert_array_equal(cache.labels(split), cache.labels("test"))
        np.testing.assert_array_equal(cache.read(split, "rows"), np.arange(cache.size("test")))
        assert cache.chunk_slices(split) == cache.chunk_slices("test")
        description = cache.split_description(split)
        assert description["constants"] == "cifar10-c" and description["of"] == "test"
        assert description["corruption"] == split.split("@")[1] and description["severity"] == int(split.split("@")[2])
    # The control: the same images in the same batches give the same features, bit for bit.
    np.testing.assert_array_equal(cache.features("test@identity@5"), clean)
    assert cache.split_description("test@identity@1")["control"] is True
    # Real corruptions move the features, more at severity 5.
    moved = {s: np.abs(cache.features(s) - clean).mean() for s in SPLITS[2:]}
    assert 0 < moved["test@gaussian_noise@1"] < moved["test@gaussian_noise@5"]
    assert 0 < moved["test@fog@1"] < moved["test@fog@5"]


def test_corrupted_splits_are_added_to_a_finished_cache_and_resume_after_an_interruption(shifted_cache, tmp_path):
    path = tmp_path / "grow.zarr"
    shutil.copytree(shifted_cache.path, path)
    first_chunk = path / "train" / "features" / "c" / "0" / "0"
    written = first_chunk.stat().st_mtime_ns
    # More corruptions on the finished cache: only the new splits are extracted.
    result = CliRunner().invoke(extract_main, extract_args(path, "--workers", "0", "--corruptions", "contrast,fog",
                                                           "--severities", "5"))
    assert result.exit_code == 0, result.output
    cache = FeatureCache.open(path)
    assert cache.splits == ["train", "test", *SPLITS, "test@contrast@5"] and cache.verify() == []
    assert first_chunk.stat().st_mtime_ns == written
    expected = cache.features("test@contrast@5")
    # An interruption: chunk 1 of the new split never recorded, its rows garbage.
    cache.set_aside("test@contrast@5", {1})
    rows = cache.chunk_slices("test@contrast@5")[1]
    cache.array("test@contrast@5", "features")[rows] = 7.0
    untouched = path / "test@contrast@5" / "features" / "c" / "0" / "0"
    stamp = untouched.stat().st_mtime_ns
    result = CliRunner().invoke(extract_main, extract_args(path, "--workers", "0", "--corruptions", "contrast",
                                                           "--severities", "5"))
    assert result.exit_code == 0, result.output
    resumed = FeatureCache.open(path)
    np.testing.assert_array_equal(resumed.features("test@contrast@5"), expected)  # the same draws, bit for bit
    assert untouched.stat().st_mtime_ns == stamp and resumed.verify() == []


def test_a_subset_per_class_holds_the_drawn_rows_and_their_labels(tmp_path):
    out = tmp_path / "subset.zarr"
    result = CliRunner().invoke(extract_main, extract_args(out, "--workers", "0", "--corruptions", "brightness",
                                                           "--severities", "3", "--corrupt-per-class", "4"))
    assert result.exit_code == 0, result.output
    cache = FeatureCache.open(out)
    rows = cache.read("test@brightness@3", "rows")
    assert len(rows) == 12 and np.all(np.diff(rows) > 0) and cache.size("test") == 36
    np.testing.assert_array_equal(np.bincount(cache.labels("test@brightness@3")), [4, 4, 4])
    np.testing.assert_array_equal(cache.labels("test@brightness@3"), cache.labels("test")[rows])
    assert cache.split_description("test@brightness@3")["per_class"] == 4
    # Asked for again with another subset: refused without --overwrite, named.
    again = CliRunner().invoke(extract_main, extract_args(out, "--workers", "0", "--corruptions", "brightness",
                                                          "--severities", "3", "--corrupt-per-class", "5"))
    assert "already has the split test@brightness@3, made differently" in error_line(again)


def test_unknown_corruptions_and_severities_are_refused_with_the_valid_ones(tmp_path):
    result = CliRunner().invoke(extract_main, extract_args(tmp_path / "x.zarr", "--corruptions", "fogg"))
    assert result.exit_code == 2 and "gaussian_noise" in result.output and "identity" in result.output
    result = CliRunner().invoke(extract_main, extract_args(tmp_path / "x.zarr", "--corruptions", "fog",
                                                           "--severities", "0,6"))
    assert result.exit_code == 2 and ">= 1 and <= 5" in result.output
    assert not (tmp_path / "x.zarr").exists()


def test_an_edited_description_of_a_corrupted_split_is_detected(shifted_cache, tmp_path):
    import json

    from pipeline.errors import PipelineError

    path = tmp_path / "edited.zarr"
    shutil.copytree(shifted_cache.path, path)
    node = json.loads((path / "zarr.json").read_text())
    node["attributes"]["split_metadata"]["test@fog@5"]["severity"] = 3
    (path / "zarr.json").write_text(json.dumps(node))
    with pytest.raises(PipelineError, match="descriptions of its derived splits"):
        FeatureCache.open(path)


# --- heads on the corrupted splits ---------------------------------------------------------------

def brute_force_knn(gallery: np.ndarray, queries: np.ndarray, k: int = 2) -> np.ndarray:
    distances = ((queries[:, None, :].astype(np.float64) - gallery[None, :, :]) ** 2).sum(-1)
    return np.sort(distances, axis=1)[:, :k].sum(1)


def test_each_class_is_fitted_once_and_every_split_scored_with_that_fit(shifted_cache, monkeypatch):
    from sklearn.metrics import roc_auc_score

    from pipeline.evaluate import evaluate_one_vs_all
    from pipeline.heads.knn.head import KNNHead
    from pipeline.shift import resolve_shift

    fits = []
    original = KNNHead.fit
    monkeypatch.setattr(KNNHead, "fit", lambda self, *a, **kw: fits.append(1) or original(self, *a, **kw))
    plan = resolve_shift(shifted_cache, "all", "both")
    assert plan.splits == tuple(SPLITS)
    results = evaluate_one_vs_all(shifted_cache, KNNHead(k=2, threshold_quantile=None), [0, 1, 2], shift=plan)
    assert len(fits) == 3  # one fit per class, whatever the number of corrupted splits
    train, labels = shifted_cache.features("train"), shifted_cache.labels("train")
    for c, name in enumerate(shifted_cache.classes):
        figures = {test.split: values for test, values in results[name]["shift"].items()}
        # The identity control: the fitted head's scores are the clean ones, so the same AUROC,
        # and its corrupted normal images cannot be told from the clean ones (all ties: 0.5).
        assert figures["test@identity@5"]["auroc"] == results[name]["metrics"]["auroc"]
        assert figures["test@identity@5"]["flagged_auroc"] == pytest.approx(0.5, abs=1e-12)
        # A real corruption, against scores computed by brute force with that class's gallery.
        split = "test@gaussian_noise@5"
        scores = brute_force_knn(train[labels == c], shifted_cache.features(split))
        is_anomaly = shifted_cache.labels(split) != c
        assert figures[split]["auroc"] == pytest.approx(roc_auc_score(is_anomaly, scores), abs=1e-9)
        clean = brute_force_knn(train[labels == c], shifted_cache.features("test"))
        normal = ~is_anomaly
        flagged = roc_auc_score(np.r_[np.zeros(normal.sum()), np.ones(normal.sum())], np.r_[clean[normal], scores[normal]])
        assert figures[split]["flagged_auroc"] == pytest.approx(flagged, abs=1e-9)


HEAD_COMMANDS = {"knn": [], "gaussian": [], "classical": ["--detector", "ocsvm"], "igd": ["--epochs", "1"],
                 "plume": ["--epochs", "1", "--lr", "0.001"]}


@pytest.mark.parametrize("head", list(HEAD_COMMANDS))
def test_every_head_stage_writes_a_consistent_shift_section(shifted_cache, tmp_path, head):
    import importlib

    from pipeline import metrics_file

    command = importlib.import_module(f"pipeline.commands.{head}").main
    metrics = tmp_path / f"{head}.json"
    result = CliRunner().invoke(command, ["--cache", str(shifted_cache.path), "--metrics", str(metrics), "--shift", "all",
                                          "-q", *HEAD_COMMANDS[head]])
    assert result.exit_code == 0, result.output
    assert "robustness: SD" in result.output and "SPD" in result.output
    payload = metrics_file.read(metrics)
    shift = payload["shift"]
    assert shift["sd"] == pytest.approx(payload["mean"]["auroc"], abs=1e-6)
    assert list(shift["corruptions"]) == ["identity", "gaussian_noise", "fog"]
    assert shift["corruptions_in_means"] == 2 and shift["labels"] == "unchanged" and "flagged" not in shift
    at5 = [shift["corruptions"][c]["5"]["auroc"] for c in ("gaussian_noise", "fog")]
    assert shift["spd"] == pytest.approx(np.mean(at5), abs=1e-6)
    assert shift["drop"] == pytest.approx(shift["sd"] - shift["spd"], abs=1e-6)
    assert shift["by_severity"]["5"] == shift["spd"] and set(shift["by_severity"]) == {"1", "5"}
    assert shift["spd_per_class"] == pytest.approx(
        {c: np.mean([shift["corruptions"][k]["5"]["per_class"][c] for k in ("gaussian_noise", "fog")])
         for c in shifted_cache.classes}, abs=1e-6)
    assert shift["corruptions"]["identity"]["5"]["per_class"] == pytest.approx(
        {c: m["auroc"] for c, m in payload["per_class"].items()}, abs=1e-6)
    # The numbers in the metrics file (dvc metrics diff compares them), the words beside it.
    numbers = __import__("json").loads(metrics.read_text())
    assert "spd" in numbers["shift"] and "spd_is" not in numbers["shift"] and "labels" not in numbers["shift"]


def test_shift_options_refuse_a_cache_without_corrupted_splits_and_unknown_ones(synthetic_cache, shifted_cache,
                                                                                tmp_path):
    from pipeline.commands.knn import main

    plain = CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--metrics", str(tmp_path / "m.json"),
                                      "--shift", "all", "-q"])
    assert "has no corrupted test splits" in error_line(plain) and "--corruptions" in error_line(plain)
    unknown = CliRunner().invoke(main, ["--cache", str(shifted_cache.path), "--metrics", str(tmp_path / "m.json"),
                                        "--test-split", "test@glass_blur@5", "-q"])
    assert "test@fog@5" in error_line(unknown)
    # --test-split names one split; corruption@severity and corruption names work too.
    one = CliRunner().invoke(main, ["--cache", str(shifted_cache.path), "--metrics", str(tmp_path / "m.json"),
                                    "--test-split", "fog@5,gaussian_noise", "--shift-labels", "anomalous", "-q"])
    assert one.exit_code == 0, one.output
    from pipeline import metrics_file

    shift = metrics_file.read(tmp_path / "m.json")["shift"]
    assert {c: set(s) for c, s in shift["flagged"]["corruptions"].items()} == {"fog": {"5"},
                                                                             "gaussian_noise": {"1", "5"}}
    assert "spd" not in shift and shift["labels"] == "anomalous" and 0.5 <= shift["flagged"]["severity_5"] <= 1


# --- report -------------------------------------------------------------------------------------

def shift_payload(head: str, sd: float, at5: dict[str, float], **about) -> dict:
    classes = ["cat", "dog"]
    spd = float(np.mean(list(at5.values())))
    corruptions = {"identity": {"5": {"auroc": sd, "per_class": {c: sd for c in classes}}}}
    corruptions.update({name: {"1": {"auroc": sd - 0.01, "per_class": {c: sd - 0.01 for c in classes}},
                               "5": {"auroc": v, "per_class": {c: v for c in classes}}} for name, v in at5.items()})
    return {"mean": {"auroc": sd}, "per_class": {c: {"auroc": sd} for c in classes},
            "about": {"dataset": "cifar10", "backbone": "efficientnet_lite0", "image_size": 224,
                      "preprocessing": "resize/bilinear/imagenet", "protocol": "one-vs-all", "head": head, **about},
            "shift": {"labels": "unchanged", "splits": 5, "corruptions_in_means": len(at5), "constants": "cifar10-c",
                      "test_images": "100 per class", "sd": sd, "spd": spd, "drop": sd - spd, "sd_same_rows": sd,
                      "by_severity": {"1": sd - 0.01, "5": spd}, "corruptions": corruptions}}


def test_the_report_draws_the_robustness_table_heat_map_and_severity_chart(tmp_path):
    from pipeline import metrics_file
    from pipeline.report.command import main as report_main

    metrics = tmp_path / "metrics"
    metrics_file.write(metrics / "knn.json", shift_payload("knn", 0.9, {"fog": 0.6, "snow": 0.8}, k=2))
    metrics_file.write(metrics / "gaussian.json", shift_payload("gaussian", 0.95, {"fog": 0.7, "snow": 0.75},
                                                                scales="last", scaling="none"))
    out_md, out_html = tmp_path / "r.md", tmp_path / "r.html"
    result = CliRunner().invoke(report_main, ["build", str(metrics), "--out-md", str(out_md), "--out-html", str(out_html)])
    assert result.exit_code == 0, result.output
    markdown = out_md.read_text()
    assert "### Robustness (SD vs SPD), cifar10: efficientnet_lite0 @ 224x224" in markdown
    assert "| kNN (DN2), k = 2 | - | 90.0 | **70.0** | 20.0 | 90.0 | – |" in markdown
    assert "| 95.0 | **72.5** | 22.5 |" in markdown
    assert "| Head | clean | fog | snow |" in markdown  # the identity control is no column
    assert "Hardest corruptions (mean AUROC over the heads above): fog 65.0, snow 77.5." in markdown
    html = out_html.read_text()
    heat = html[html.index('<svg class="chart heat"'):]
    heat = heat[:heat.index("</svg>")]
    assert heat.count('<rect class="cell"') == 2 * 4  # heads x (clean, fog, snow, mean)
    assert ">60.0<" in heat and ">72.5<" in heat
    fills = set(__import__("re").findall(r'class="cell"[^>]*fill="(#[0-9a-f]{6})"', heat))
    assert len(fills) >= 4  # coloured by value, not one colour
    assert html.count('<path class="severity"') == 2


def test_heat_colours_run_from_red_to_blue_and_missing_cells_are_grey():
    from pipeline.report.svg_chart import heat_colour, heat_map

    assert heat_colour(0) == "#d73027" and heat_colour(1) == "#4575b4" and heat_colour(0.5) == "#ffffbf"
    svg = heat_map("t", [], ["a <b>"], ["x", "y"], [[0.5, None]])
    assert svg.count('<rect class="cell"') == 2 and 'fill="#dddddd"' in svg and "a &lt;b&gt;" in svg


def test_a_split_left_unrecorded_by_a_killed_add_is_ignored_then_replaced(shifted_cache, tmp_path):
    from pipeline.errors import PipelineError
    from pipeline.store.cache import ArraySpec

    path = tmp_path / "killed.zarr"
    shutil.copytree(shifted_cache.path, path)
    # Killed after moving the arrays in, before recording them: a folder the store does not list.
    shutil.copytree(path / "test@fog@5", path / "test@fog@3")
    cache = FeatureCache.open(path)
    assert "test@fog@3" not in cache.splits and cache.verify() == []
    specs = [ArraySpec("features", (1280,), "float32"), ArraySpec("labels", (), "int64"), ArraySpec("rows", (), "int64")]
    assert cache.add_split("test@fog@3", specs, 5, {"corruption": "fog", "severity": 3})
    assert cache.size("test@fog@3") == 5 and not cache.is_complete and cache.missing_chunks()["test@fog@3"] == [0]
    # Something not ours where the arrays are staged is never deleted.
    (tmp_path / "killed.zarr.adding").mkdir()
    (tmp_path / "killed.zarr.adding" / "notes.txt").write_text("mine")
    with pytest.raises(PipelineError, match="not a feature cache made by this project"):
        cache.add_split("test@fog@2", specs, 5, {"corruption": "fog", "severity": 2})
    assert (tmp_path / "killed.zarr.adding" / "notes.txt").read_text() == "mine"
