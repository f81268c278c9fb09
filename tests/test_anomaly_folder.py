"""Your own images: the anomaly folder (MVTec AD / anomalib layout) and the normal-vs-anomalies
protocol, through the real commands (extract -> heads -> metrics -> report -> saved head -> scores).

The folder is made of scikit-learn's digits saved as PNGs: digit 3 is ``good``; 5, 8 and 9 are
the defect types, with different numbers of test images so that the mean over defect types and
the overall figure differ."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.covariance import LedoitWolf
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from cli_results import error_line  # noqa: E402

from pipeline import metrics_file  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.protocol import NORMAL_VS_ANOMALIES, PROTOCOLS, Task, split_for, tasks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NORMAL_DIGIT = 3
DEFECTS = {"five": (5, 6), "eight": (8, 8), "nine": (9, 10)}  # folder: (digit, test images)
N_TRAIN, N_TEST_GOOD = 40, 12
EXTRACT = ["--image-size", "32", "--map-grid", "2", "--chunk-rows", "16", "--batch-size", "16", "--workers", "0",
           "--device", "cpu"]


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def digits_folder(root: Path, train: tuple[str, ...] = ("good",), test: tuple[str, ...] = ("good", *DEFECTS),
                  masks: bool = True) -> Path:
    """The digits in the anomaly-folder layout: the folders named in ``train`` and ``test``
    (``good`` or a defect type), and masks for five (MVTec's ``<name>_mask.png``) and for the
    first four images of eight (anomalib's same name); nine has none."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    good = np.flatnonzero(digits.target == NORMAL_DIGIT)
    for name in train:
        rows = good[:N_TRAIN] if name == "good" else np.flatnonzero(digits.target == DEFECTS[name][0])[:4]
        for i, row in enumerate(rows):
            write_png(root / "train" / name / f"{i:03d}.png", images[row])
    for name in test:
        rows = (good[N_TRAIN:N_TRAIN + N_TEST_GOOD] if name == "good"
                else np.flatnonzero(digits.target == DEFECTS[name][0])[:DEFECTS[name][1]])
        for i, row in enumerate(rows):
            write_png(root / "test" / name / f"{i:03d}.png", images[row])
            mask = ((images[row] > 100) * 255).astype(np.uint8)
            if masks and name == "five":
                write_png(root / "ground_truth" / name / f"{i:03d}_mask.png", mask)
            if masks and name == "eight" and i < 4:
                write_png(root / "ground_truth" / name / f"{i:03d}.png", mask)
    return root


def extract(root: Path, out: Path, *options: str):
    from pipeline.extract.command import main

    return CliRunner().invoke(main, ["--dataset", "anomaly_folder", "--data-dir", str(root), "--out", str(out),
                                     *EXTRACT, *options])


def run(module: str, *args: str):
    import importlib

    return CliRunner().invoke(importlib.import_module(module).main, list(args))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = digits_folder(tmp_path_factory.mktemp("images") / "parts")
    (root / "test" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def cache(folder, tmp_path_factory) -> Path:
    """The folder's cache with two views per training image (AnoMem's), made by the command."""
    out = tmp_path_factory.mktemp("caches") / "parts.zarr"
    result = extract(folder, out, "--views", "2")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def head_runs(cache, tmp_path_factory) -> Path:
    """kNN (its heads saved) and the Gaussian head on the folder's cache, as dvc.yaml runs them."""
    out = tmp_path_factory.mktemp("runs")
    for head, extra in (("knn", ["--save-heads", str(out / "heads"), "--save-float32"]), ("gaussian", [])):
        result = run(f"stages.{head}", "--cache", str(cache), "--metrics", str(out / "metrics" / f"{head}.json"),
                     "--plots", str(out / "plots" / head), "--expect", "dataset.name=anomaly_folder", *extra)
        assert result.exit_code == 0, result.output
    return out


def features(cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    from pipeline.store.cache import FeatureCache

    opened = FeatureCache.open(cache)
    return (opened.features("train").astype(np.float64), opened.features("test").astype(np.float64),
            opened.labels("test"), opened.classes)


def by_hand(scores: np.ndarray, test_labels: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """AUROC and AUPR of each defect type (its test images against the normal ones) and overall."""
    normal = test_labels == 0
    graded = {"overall": np.ones(len(test_labels), bool)}
    graded.update({name: normal | (test_labels == classes.index(name)) for name in DEFECTS})
    return {name: {"auroc": roc_auc_score(~normal[rows], scores[rows]),
                   "aupr": average_precision_score(~normal[rows], scores[rows])} for name, rows in graded.items()}


# --- the dataset -------------------------------------------------------------------------------

def test_the_dataset_lists_normals_then_defect_types_and_records_protocol_and_masks(folder, tmp_path):
    from pipeline.extract.datasets import files_digest, load_dataset

    ds = load_dataset("anomaly_folder", folder)
    assert ds.name == "anomaly_folder" and ds.classes == ["good", "eight", "five", "nine"]
    assert (ds.train.labels == 0).all() and len(ds.train.labels) == N_TRAIN
    counts = {ds.classes[c]: int(n) for c, n in zip(*np.unique(ds.test.labels, return_counts=True))}
    assert counts == {"good": N_TEST_GOOD, **{name: n for name, (_, n) in DEFECTS.items()}}
    assert all(f"/test/{ds.classes[label]}/" in path for path, label in zip(ds.test.images.paths, ds.test.labels))
    described = ds.describe()
    assert described["protocol"] == NORMAL_VS_ANOMALIES and NORMAL_VS_ANOMALIES in PROTOCOLS
    assert described["normal_classes"] == ["good"] and described["folder"] == "parts"
    assert described["content_sha256"] == files_digest(ds.train.images.paths + ds.test.images.paths, folder)
    # A mask per test image where ground_truth/ has one (either naming), relative to the folder.
    expected = {f"test/five/{i:03d}.png": f"ground_truth/five/{i:03d}_mask.png" for i in range(6)}
    expected.update({f"test/eight/{i:03d}.png": f"ground_truth/eight/{i:03d}.png" for i in range(4)})
    assert described["masks"] == expected
    # Masks are never required; several normal folders are normal together.
    plain = digits_folder(tmp_path / "plain", masks=False)
    assert "masks" not in load_dataset("anomaly_folder", plain).describe()
    shutil.copytree(plain / "train" / "good", plain / "train" / "ok")
    shutil.copytree(plain / "test" / "good", plain / "test" / "ok")
    two = load_dataset("anomaly_folder", plain, normal="good, ok")
    assert two.classes == ["good", "ok", "eight", "five", "nine"] and two.identity["normal_classes"] == ["good", "ok"]
    assert sorted(set(two.train.labels)) == [0, 1]


@pytest.mark.parametrize("layout, words", [
    ({"train": ("ok",)}, ["no normal training images", "--normal"]),
    ({"train": ("good", "eight")}, ["not normal: eight", "test/<defect type>/", "--normal good,eight"]),
    ({"test": ("good",)}, ["has no anomalies", "test/<defect type>/"]),
    ({"test": ("five", "eight")}, ["no normal test images", "good/"]),
])
def test_a_layout_that_cannot_be_graded_is_refused_by_the_command(tmp_path, layout, words):
    root = tmp_path / "parts"
    if layout.get("train") == ("ok",):
        digits_folder(root, train=("good",), masks=False)
        (root / "train" / "good").rename(root / "train" / "ok")
    else:
        digits_folder(root, masks=False, **layout)
    line = error_line(extract(root, tmp_path / "c.zarr"))
    assert all(word in line for word in words), line
    assert not (tmp_path / "c.zarr").exists()


def test_imagefolder_points_this_layout_to_anomaly_folder(folder, tmp_path):
    from pipeline.extract.command import main

    result = CliRunner().invoke(main, ["--dataset", "imagefolder", "--data-dir", str(folder), "--out",
                                       str(tmp_path / "c.zarr"), *EXTRACT])
    line = error_line(result)
    assert "different class folders" in line and "--dataset anomaly_folder" in line


def test_unreadable_images_are_refused_or_with_skip_bad_left_out_and_recorded(tmp_path):
    from pipeline.store.cache import FeatureCache

    root = digits_folder(tmp_path / "parts", masks=False)
    (root / "test" / "eight" / "bad.png").write_bytes(b"\x89PNG truncated")
    line = error_line(extract(root, tmp_path / "c.zarr", "--views", "0"))
    assert "test/eight/bad.png" in line and "--skip-bad" in line
    # The extraction found it and left an unfinished cache of all the files: --skip-bad makes another.
    result = extract(root, tmp_path / "c.zarr", "--views", "0", "--skip-bad", "--overwrite")
    assert result.exit_code == 0, result.output
    cache = FeatureCache.open(tmp_path / "c.zarr")
    assert cache.size("test") == N_TEST_GOOD + sum(n for _, n in DEFECTS.values())
    skipped = cache.metadata["dataset"]["skipped_files"]
    assert [entry.split(" (")[0] for entry in skipped] == ["test: test/eight/bad.png"]


# --- the protocol ------------------------------------------------------------------------------

def test_normal_vs_anomalies_grades_each_type_against_the_normal_test_rows():
    classes = ["good", "crack", "hole"]
    metadata = {"dataset": {"normal_classes": ["good"]}}
    (task,) = tasks(NORMAL_VS_ANOMALIES, "all", classes, metadata)
    assert task == Task("good", (0,), by_type=True)
    test = np.array([0, 1, 2, 0, 2, 1, 0])
    graded = split_for(task, np.array([0, 0, 0]), test, classes)
    np.testing.assert_array_equal(graded.train_index, [0, 1, 2])
    np.testing.assert_array_equal(graded.test_is_anomaly, [0, 1, 1, 0, 1, 1, 0])
    assert list(graded.types) == ["crack", "hole"]
    np.testing.assert_array_equal(graded.types["crack"], [0, 1, 3, 5, 6])
    np.testing.assert_array_equal(graded.types["hole"], [0, 2, 3, 4, 6])
    with pytest.raises(PipelineError, match="records none.*--classes"):
        tasks(NORMAL_VS_ANOMALIES, "all", classes, {"dataset": {}})
    with pytest.raises(PipelineError, match="every class as normal"):
        tasks(NORMAL_VS_ANOMALIES, "good,crack,hole", classes, metadata)
    with pytest.raises(PipelineError, match="normal and anomalous"):
        split_for(task, np.array([0]), np.array([0, 0]), classes)


# --- heads, metrics, report, saved head, scores ------------------------------------------------

def test_knn_and_gaussian_grade_each_defect_type_as_sklearn_does_by_hand(cache, head_runs):
    train, test, test_labels, classes = features(cache)
    squared = ((test[:, None, :] - train[None, :, :]) ** 2).sum(-1)
    references = {"knn": np.sort(squared, axis=1)[:, :2].sum(1),  # DN2: the 2 nearest, summed
                  "gaussian": LedoitWolf().fit(train).mahalanobis(test)}
    for head, scores in references.items():
        payload = metrics_file.read(head_runs / "metrics" / f"{head}.json")
        expected = by_hand(scores, test_labels, classes)
        assert list(payload["per_class"]) == ["eight", "five", "nine"]
        for name in DEFECTS:
            assert payload["per_class"][name]["auroc"] == pytest.approx(expected[name]["auroc"], abs=1e-6), head
            assert payload["per_class"][name]["aupr"] == pytest.approx(expected[name]["aupr"], abs=1e-6), head
        assert payload["overall"]["auroc"] == pytest.approx(expected["overall"]["auroc"], abs=1e-6)
        assert payload["overall"]["aupr"] == pytest.approx(expected["overall"]["aupr"], abs=1e-6)
        assert payload["mean"]["auroc"] == pytest.approx(np.mean([expected[n]["auroc"] for n in DEFECTS]), abs=1e-6)
        # Overall AUROC is the mean over types weighted by their numbers of anomalies, not the plain mean.
        weights = [DEFECTS[n][1] for n in DEFECTS]
        weighted = np.average([expected[n]["auroc"] for n in DEFECTS], weights=weights)
        assert payload["overall"]["auroc"] == pytest.approx(weighted, abs=1e-6)
        assert abs(payload["overall"]["auroc"] - payload["mean"]["auroc"]) > 1e-3
        assert payload["about"]["protocol"] == NORMAL_VS_ANOMALIES and payload["about"]["normal"] == "good"
        assert payload["about"]["dataset"] == "anomaly_folder:parts"
        # Numbers only in the file dvc metrics reads; one ROC file per defect type.
        numbers = json.loads((head_runs / "metrics" / f"{head}.json").read_text())
        assert set(numbers) == {"mean", "overall", "per_class"} and numbers["per_class"]["five"]["auroc"] > 0
        assert sorted(p.name for p in (head_runs / "plots" / head).iterdir()) == [
            "roc_eight.json", "roc_five.json", "roc_nine.json"]


def test_the_report_has_a_table_of_heads_by_defect_type(head_runs, tmp_path):
    from pipeline.report.command import main
    from pipeline.report.published import has_published_column

    result = CliRunner().invoke(main, ["build", str(head_runs / "metrics"), "--out-md", str(tmp_path / "r.md"),
                                       "--out-html", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "r.md").read_text()
    assert "## anomaly_folder:parts: efficientnet_lite0 @ 32x32, normal-vs-anomalies" in markdown
    assert "normal: good" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == ["Head", "Setting", "Mean", "Overall", "eight", "five", "nine"]
    knn = metrics_file.read(head_runs / "metrics" / "knn.json")
    row = next([cell.strip() for cell in line.strip("|").split("|")] for line in table if line.startswith("| kNN"))
    assert row[2:] == [f"**{100 * knn['mean']['auroc']:.1f}**", f"{100 * knn['overall']['auroc']:.1f}",
                       *(f"{100 * knn['per_class'][n]['auroc']:.1f}" for n in ("eight", "five", "nine"))]
    assert "Overall" in (tmp_path / "r.html").read_text()
    summary = CliRunner().invoke(main, ["summary", str(head_runs / "metrics")])
    assert summary.exit_code == 0 and "Overall" in summary.output and "five" in summary.output
    # The published CIFAR-10 figures are one-vs-all: never beside an anomaly folder made of CIFAR-10.
    assert has_published_column({"dataset": "imagefolder:cifar10-jpg"})
    assert not has_published_column({"dataset": "anomaly_folder:cifar10-anomaly", "protocol": NORMAL_VS_ANOMALIES})


def test_the_saved_head_scores_new_images_with_a_calibrated_threshold(folder, head_runs, tmp_path):
    head = head_runs / "heads" / "good.head"
    assert head.is_file()
    out = tmp_path / "scores.csv"
    result = run("pipeline.scoring", "--head", str(head), "--images", str(folder / "test"), "--calibrate",
                 str(folder / "test" / "good"), "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == sorted(str(p) for p in (folder / "test").rglob("*.png"))
    kind = [Path(r["path"]).parent.name for r in rows]
    scores = np.array([float(r["score"]) for r in rows])
    payload = metrics_file.read(head_runs / "metrics" / "knn.json")
    for name in DEFECTS:  # the saved head ranks the images as the evaluated one did
        rows_of = np.array([k in ("good", name) for k in kind])
        auroc = roc_auc_score(np.array([k == name for k in kind])[rows_of], scores[rows_of])
        assert auroc == pytest.approx(payload["per_class"][name]["auroc"], abs=1e-6)
    good = scores[np.array(kind) == "good"]
    threshold = np.quantile(good, 0.95)
    assert f"threshold {threshold:.6g}" in result.output and f"{len(good)} calibration images" in result.output
    assert [r["flag"] for r in rows] == ["anomalous" if s > threshold else "normal" for s in scores]


# --- the protocol, chosen by the dataset and overridden -------------------------------------------

def test_protocol_option_overrides_the_datasets(cache, synthetic_cache, tmp_path):
    metrics = str(tmp_path / "m.json")
    line = error_line(run("stages.knn", "--cache", str(cache), "--metrics", metrics, "--protocol", "one-vs-all"))
    assert "class eight has no training samples" in line and "--protocol normal-vs-anomalies" in line
    result = run("stages.knn", "--cache", str(cache), "--metrics", metrics, "--protocol", "one-vs-all",
                 "--classes", "good")
    assert result.exit_code == 0, result.output
    payload = metrics_file.read(metrics)
    assert list(payload["per_class"]) == ["good"] and "overall" not in payload
    assert payload["about"]["protocol"] == "one-vs-all"
    # A dataset that records no normal classes: name them.
    line = error_line(run("stages.knn", "--cache", str(synthetic_cache.path), "--metrics", metrics, "--protocol",
                          NORMAL_VS_ANOMALIES))
    assert "--classes" in line
    result = run("stages.knn", "--cache", str(synthetic_cache.path), "--metrics", metrics, "--protocol",
                 NORMAL_VS_ANOMALIES, "--classes", "class0")
    assert result.exit_code == 0, result.output
    payload = metrics_file.read(metrics)
    assert list(payload["per_class"]) == ["class1", "class2"] and payload["about"]["normal"] == "class0"
    train = synthetic_cache.features("train")[synthetic_cache.labels("train") == 0].astype(np.float64)
    test, labels = synthetic_cache.features("test").astype(np.float64), synthetic_cache.labels("test")
    scores = np.sort(((test[:, None] - train[None]) ** 2).sum(-1), axis=1)[:, :2].sum(1)
    for c, name in ((1, "class1"), (2, "class2")):
        rows = (labels == 0) | (labels == c)
        assert payload["per_class"][name]["auroc"] == pytest.approx(roc_auc_score(labels[rows] == c, scores[rows]),
                                                                    abs=1e-6)
    assert payload["overall"]["auroc"] == pytest.approx(roc_auc_score(labels != 0, scores), abs=1e-6)


HEADS = {  # the classical detectors run on the CPU: they take no --device
    "igd": ["--device", "cpu", "--epochs", "1", "--hidden", "0", "--latent-dim", "8"],
    "plume": ["--device", "cpu", "--epochs", "1", "--lr", "1e-3", "--dim", "native"],
    "classical": ["--detector", "iforest", "--n-estimators", "20"],
    "anomem": ["--device", "cpu", "--epochs", "1", "--min-steps", "1", "--sup-epochs", "1", "--slots-intermediate",
               "8", "--slots-last", "8"],
}


@pytest.mark.parametrize("head", list(HEADS))
def test_every_head_trains_once_on_the_normal_images_and_is_graded_per_defect_type(cache, tmp_path, head):
    metrics = tmp_path / f"{head}.json"
    result = run(f"stages.{head}", "--cache", str(cache), "--metrics", str(metrics), "--plots", str(tmp_path / "roc"),
                 "--save-heads", str(tmp_path / "heads"), *HEADS[head])
    assert result.exit_code == 0, result.output
    payload = metrics_file.read(metrics)
    assert list(payload["per_class"]) == ["eight", "five", "nine"] and "auroc" in payload["overall"]
    assert payload["about"]["protocol"] == NORMAL_VS_ANOMALIES
    assert [p.name for p in (tmp_path / "heads").iterdir()] == ["good.head"]
    assert "normal good against every anomaly" in result.output
    if head == "plume":
        assert list(payload["overall"]["lr_used"]) == ["seed_0"]
    if head == "anomem":
        # No anomalies among the training images to label: one-class only, said on stderr.
        assert "semi-supervised runs" in result.stderr and "semi_supervised" not in payload
        assert list(payload["knn_same_rows"]["per_class"]) == ["eight", "five", "nine"]
        assert "overall" in payload["knn_same_rows"]
        assert list(payload["controls"]["norm"]["per_class"]) == ["eight", "five", "nine"]
        assert "overall" in payload["controls"]["norm"]


def test_the_plume_ablation_table_refuses_normal_vs_anomalies(cache, tmp_path):
    line = error_line(run("stages.plume_ablation", "--cache", str(cache), "--metrics", str(tmp_path / "a.json")))
    assert "one-vs-all table" in line and "--protocol one-vs-all" in line


# --- the CIFAR-10 arrangement ------------------------------------------------------------------

def test_cifar_arrangement_script_makes_an_anomaly_folder(tmp_path):
    from pipeline.extract.datasets import load_dataset

    spec = importlib.util.spec_from_file_location("make_cifar", REPO / "benchmarks" / "make_cifar_anomaly_folder.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    source = tmp_path / "cifar"
    rng = np.random.default_rng(0)
    for split_name, count in (("train", 4), ("test", 3)):
        for name in ("airplane", "automobile", "bird", "cat", "dog"):
            for i in range(count):
                path = source / split_name / name / f"{i:04d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                from PIL import Image

                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "anomaly"
    result = CliRunner().invoke(script.main, ["--source", str(source), "--out", str(out), "--train-per-class", "3",
                                              "--test-per-class", "2"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "train" / "good").iterdir()) == ["0000.jpg", "0001.jpg", "0002.jpg"]
    assert (out / "test" / "bird" / "0001.jpg").resolve() == (source / "test" / "bird" / "0001.jpg").resolve()
    assert (out / "test" / "bird" / "0001.jpg").is_symlink() and not (out / "test" / "dog").exists()
    dataset = load_dataset("anomaly_folder", out)
    assert dataset.classes == ["good", "automobile", "bird", "cat"] and len(dataset.test.labels) == 8
    assert "exists already" in error_line(CliRunner().invoke(script.main, ["--source", str(source), "--out", str(out)]))
    copied = CliRunner().invoke(script.main, ["--source", str(source), "--out", str(tmp_path / "c"), "--copy"])
    assert copied.exit_code == 0 and not (tmp_path / "c" / "test" / "cat" / "0000.jpg").is_symlink()
