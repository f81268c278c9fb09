"""The PANDA head: its losses against plain computations, training on cached trunk maps, the
trunk maps in the cache, and the command end to end on the synthetic cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli_results import error_line
from pipeline import metrics_file
from pipeline.errors import PipelineError
from pipeline.evaluate import read_features
from pipeline.heads.panda.head import PandaHead
from pipeline.heads.panda.model import classifier_fisher, compactness_loss, embed, ewc_penalty

SMALL = dict(image_size=32, batch_size=8)  # the synthetic cache: EfficientNet-Lite0 at 32 px


def class_features(cache, split: str = "train", normal: int = 0):
    rows = np.flatnonzero(cache.labels(split) == normal) if split == "train" else None
    return read_features(cache, split, rows, trunk=True)


# --- the maths -------------------------------------------------------------------------------

def test_compactness_loss_is_the_mean_squared_distance_to_the_centre_over_d():
    rng = np.random.default_rng(0)
    features, centre = rng.normal(size=(7, 5)), rng.normal(size=5)
    # The authors' CompactnessLoss: ||f - c||^2 / D per sample, averaged over the batch.
    expected = np.mean([np.sum((f - centre) ** 2) / 5 for f in features])
    loss = compactness_loss(torch.tensor(features, dtype=torch.float32), torch.tensor(centre, dtype=torch.float32))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_ewc_penalty_is_half_the_fisher_weighted_squared_change_times_lambda():
    rng = np.random.default_rng(1)
    shapes = [(3, 4), (4,)]
    now, before, fisher = ([rng.normal(size=s) for s in shapes] for _ in range(3))
    expected = 1e4 * sum(np.sum(f * (p - a) ** 2) for p, a, f in zip(now, before, fisher)) / 2
    as_tensors = [[torch.tensor(x) for x in xs] for xs in (now, before, fisher)]
    assert float(ewc_penalty(*as_tensors, weight=1e4)) == pytest.approx(expected, rel=1e-9)


def test_classifier_fisher_is_the_mean_squared_minibatch_gradient_worked_out_by_hand():
    """A 1x1 convolution tail and a linear classifier, whose cross-entropy gradient (against
    the classifier's own top-1 labels) is written out with NumPy: W_c^T (p - e_y) / B times the
    mean of each input map, per minibatch, squared and averaged over the minibatches."""
    from pipeline.backbones import Tail

    torch.manual_seed(0)
    conv, classifier = torch.nn.Conv2d(3, 4, 1), torch.nn.Linear(4, 5)
    tail = Tail(conv)
    maps = torch.randn(10, 3, 2, 2)
    batches = [torch.arange(0, 4), torch.arange(4, 10)]
    fisher = classifier_fisher(tail, classifier.requires_grad_(False), maps, batches)

    w, b = conv.weight.detach().numpy()[:, :, 0, 0], conv.bias.detach().numpy()
    wc, bc = classifier.weight.numpy(), classifier.bias.numpy()
    expected_w, expected_b = np.zeros_like(w), np.zeros_like(b)
    for index in batches:
        x = maps[index].numpy().astype(np.float64).mean(axis=(2, 3))  # a 1x1 conv commutes with the mean
        logits = (x @ w.T + b) @ wc.T + bc
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        delta = (p - np.eye(5)[logits.argmax(1)]) / len(x) @ wc  # d loss / d feature, per sample
        expected_w += (delta.T @ x) ** 2
        expected_b += delta.sum(0) ** 2
    np.testing.assert_allclose(fisher[0][:, :, 0, 0].numpy(), expected_w / 2, rtol=1e-4, atol=1e-10)
    np.testing.assert_allclose(fisher[1].numpy(), expected_b / 2, rtol=1e-4, atol=1e-10)
    assert conv.weight.grad is None  # the tail is left without gradients


# --- training on cached trunk maps -----------------------------------------------------------

def test_before_adaptation_the_tail_reproduces_the_cached_pooled_features(synthetic_cache):
    """Epoch 0 is DN2: the pretrained tail on the cached (float16) trunk maps gives the cached
    pooled features, to float16 rounding, so the gallery is the kNN head's."""
    train = class_features(synthetic_cache)
    head = PandaHead(**SMALL, epochs=0).fit(train)
    np.testing.assert_allclose(head.adapted_features(train), train.pooled, rtol=0.02, atol=0.02)
    assert head.trunk_stage_ == "stride8" and train.trunk["stride8"].dtype == np.float16


def test_one_epoch_lowers_the_compactness_loss_and_keeps_batch_norm_statistics(synthetic_cache):
    train = class_features(synthetic_cache)
    head = PandaHead(**SMALL, epochs=1).fit(train)
    before = head.history_[0]["loss"]  # epoch 0: the pretrained features
    after = compactness_loss(torch.as_tensor(head.adapted_features(train)), head.centre_)
    assert float(after) < before
    # Batch norm in eval mode throughout, as the authors' code: running statistics unchanged,
    # its affine weights trained with the rest.
    from pipeline.backbones import load_backbone

    _, pretrained = load_backbone("efficientnet_lite0", 32)[0].split("stride8")
    for (name, old), new in zip(pretrained.state_dict().items(), head.tail_.state_dict().values()):
        if "running" in name:
            assert torch.equal(old, new), name
    changed = [name for (name, old), new in zip(pretrained.named_parameters(), head.tail_.parameters())
               if not torch.equal(old, new)]
    assert any("_bn" in name for name in changed) and any("conv" in name for name in changed)
    # The centre is the mean of the pretrained features, fixed.
    torch.testing.assert_close(head.centre_, embed(pretrained, torch.as_tensor(train.trunk["stride8"])).mean(0))


def test_same_seed_gives_identical_scores_on_the_cpu_and_another_seed_differs(synthetic_cache):
    train, test = class_features(synthetic_cache), class_features(synthetic_cache, "test")
    scores = [PandaHead(**SMALL, epochs=2, seed=seed).fit(train).score_samples(test) for seed in (0, 0, 1)]
    np.testing.assert_array_equal(scores[0], scores[1])
    assert not np.array_equal(scores[0], scores[2])  # the minibatch order


def test_bfloat16_autocast_trains_and_embeds_close_to_float32(synthetic_cache):
    train = class_features(synthetic_cache)
    full, half = (PandaHead(**SMALL, epochs=1, precision=p).fit(train) for p in ("float32", "bfloat16"))
    np.testing.assert_allclose(half.adapted_features(train), full.adapted_features(train), rtol=0.1, atol=0.1)
    assert not np.array_equal(half.adapted_features(train), full.adapted_features(train))  # bfloat16 did run
    assert np.isfinite(half.history_[1]["loss"]) and half.adapted_features(train).dtype == np.float32


def test_ewc_holds_the_weights_near_the_pretrained_ones(synthetic_cache):
    train = class_features(synthetic_cache)

    def moved(**settings) -> float:
        head = PandaHead(**SMALL, epochs=2, **settings).fit(train)
        _, pretrained = head._pretrained().split("stride8")
        return sum(float((p - q).square().sum()) for p, q in zip(head.tail_.parameters(), pretrained.parameters()))

    free = moved()
    assert moved(fisher="uniform", ewc_lambda=1e4) < free
    head = PandaHead(**SMALL, epochs=1, fisher="normal_class").fit(train)
    assert {"loss", "compactness", "ewc"} <= set(head.history_[1]) and np.isfinite(head.history_[1]["ewc"])


def test_wrong_weights_missing_trunk_maps_and_bad_settings_are_clear_errors(synthetic_cache):
    train = class_features(synthetic_cache)
    with pytest.raises(PipelineError, match="SHA-256"):
        PandaHead(**SMALL, weights_sha256="0" * 64).fit(train)
    with pytest.raises(PipelineError, match="--trunk-maps"):
        PandaHead(**SMALL).fit(read_features(synthetic_cache, "train"))
    with pytest.raises(PipelineError, match="fisher must be one of"):
        PandaHead(**SMALL, fisher="imagenet").fit(train)
    with pytest.raises(PipelineError, match="classifier"):
        PandaHead(backbone="vgg16", fisher="normal_class")._fisher(None, type("E", (), {"classifier": None})(),
                                                                     None, [], None)


# --- the trunk maps in the cache -------------------------------------------------------------

def test_the_cache_stores_the_trunk_map_at_full_resolution_checksummed(synthetic_cache):
    from pipeline.backbones import load_backbone
    from pipeline.extract.datasets import load_dataset
    from pipeline.extract.preprocess import Preprocessing

    cache = synthetic_cache
    trunk = cache.metadata["features"]["trunk"]
    assert trunk == {"stage": "stride8", "dtype": "float16", "shape": [40, 4, 4]}
    assert "trunk/stride8" in cache.array_names("test") and cache.trunk_names("train") == ["stride8"]
    stored = cache.read("test", "trunk/stride8", np.arange(4))
    assert stored.dtype == np.float16 and stored.shape == (4, 40, 4, 4)
    # The trunk's output on the first test images, rounded to float16 (channels-last, as extracted).
    model, _ = load_backbone("efficientnet_lite0", 32)
    trunk_net, _ = model.split()
    images = Preprocessing(image_size=32)([load_dataset("synthetic").test.images[i] for i in range(4)])
    with torch.inference_mode():
        expected = trunk_net.to(memory_format=torch.channels_last)(images.contiguous(
            memory_format=torch.channels_last)).to(torch.float16).numpy()
    np.testing.assert_allclose(stored.astype(np.float32), expected.astype(np.float32), rtol=1e-3, atol=1e-3)
    assert not cache.verify()


def test_a_damaged_trunk_chunk_is_refused_and_a_cache_without_trunk_maps_has_no_trunk_metadata(synthetic_cache,
                                                                                                tmp_path):
    import shutil

    from pipeline.extract.datasets import load_synthetic
    from pipeline.extract.extraction import extract
    from pipeline.extract.preprocess import Preprocessing
    from pipeline.store.cache import FeatureCache

    copy = tmp_path / "copy.zarr"
    shutil.copytree(synthetic_cache.path, copy)
    cache = FeatureCache.open(copy)
    array = cache.array("test", "trunk/stride8")
    array[0] = np.zeros(array.shape[1:], np.float16) + 7
    with pytest.raises(PipelineError, match="checksum"):
        cache.read("test", "trunk/stride8", np.arange(2))
    assert [problem.split(" rows")[0] for problem in cache.verify()] == ["test chunk 0: test/trunk/stride8"]
    plain = extract(load_synthetic(Path(), False, n_train=4, n_test=4), "efficientnet_lite0", Preprocessing(image_size=32),
                    tmp_path / "plain.zarr", chunk_rows=8, batch_size=8, workers=0)
    assert "trunk" not in plain.metadata["features"] and plain.trunk_names("train") == []
    # A cache with trunk maps is not resumed (nor reused) by a run that would not write them.
    cache.set_aside("test", {0})
    with pytest.raises(PipelineError, match="trunk/stride8 that were not asked for.*--overwrite"):
        extract(load_synthetic(Path(), False), "efficientnet_lite0", Preprocessing(image_size=32), copy,
                maps=("intermediate",), map_grid=2, chunk_rows=16, batch_size=8, workers=0)


# --- the command -----------------------------------------------------------------------------

def test_panda_command_writes_final_and_best_epoch_metrics_and_curves_from_epoch_0(synthetic_cache, tmp_path):
    from pipeline.commands.panda import main
    from pipeline.report.command import main as report_main

    metrics, curves = tmp_path / "metrics" / "panda.json", tmp_path / "plots" / "panda_training"
    result = CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "2", "--batch-size", "8",
                                       "--classes", "0,1", "--device", "cpu", "--metrics", str(metrics),
                                       "--curves", str(curves)])
    assert result.exit_code == 0, result.output
    payload = metrics_file.read(metrics)
    names = synthetic_cache.classes[:2]
    assert list(payload["per_class"]) == names
    for m in [payload["mean"], *payload["per_class"].values()]:
        assert {"auroc", "best_epoch_auroc", "best_epoch", "aupr", "fpr_at_95_tpr"} <= set(m)
    about = payload["about"]
    assert about["head"] == "panda" and about["epochs"] == 2 and about["trunk_end"] == "stride8"
    assert about["lr"] == 0.01 and about["weight_decay"] == 5e-5 and about["grad_clip"] == 1e-3
    assert "peeks" in about["auroc_is"] and "PANDA-Early" in about["fisher_is"] and "weights_sha256" not in about
    training = json.loads((curves / f"train_{names[0]}.json").read_text())
    assert [c["epoch"] for c in training] == [0, 1, 2] and all("test_auroc" in c for c in training)
    assert "compactness" in training[1] and "best-epoch AUROC" in result.output
    # The final epoch's AUROC is the headline; it is the last point of the curve.
    assert payload["per_class"][names[0]]["auroc"] == pytest.approx(training[-1]["test_auroc"], abs=1e-6)

    built = CliRunner().invoke(report_main, ["build", str(metrics), "--out-md", str(tmp_path / "r.md"),
                                             "--out-html", str(tmp_path / "r.html")])
    assert built.exit_code == 0, built.output
    rows = [line for line in (tmp_path / "r.md").read_text().splitlines() if line.startswith("| PANDA |")]
    assert any("early stopping; final epoch" in r for r in rows)
    assert any("best epoch (picked on the test set)" in r for r in rows)


def test_panda_command_refuses_a_cache_without_trunk_maps(tmp_path):
    from pipeline.extract.datasets import load_synthetic
    from pipeline.extract.extraction import extract
    from pipeline.extract.preprocess import Preprocessing
    from pipeline.commands.panda import main

    plain = extract(load_synthetic(Path(), False, n_train=4, n_test=4), "efficientnet_lite0", Preprocessing(image_size=32),
                    tmp_path / "plain.zarr", chunk_rows=8, batch_size=8, workers=0)
    result = CliRunner().invoke(main, ["--cache", str(plain.path), "--metrics", str(tmp_path / "m.json")])
    assert "--trunk-maps" in error_line(result)
    help_text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    for words in ("--fisher", "normal_class", "Paper: 0.001", "reads the test set", "epoch 0"):
        assert words in help_text


def test_published_figures_are_the_papers_cifar10_means():
    from pipeline.report.heads.panda import panda_paper
    from pipeline.report.published import paper_section

    assert panda_paper("none") == paper_section("panda")["panda_early_stopping"]["cifar10"] == 96.2
    assert panda_paper("uniform") == paper_section("panda")["panda_ewc"]["cifar10"]


def test_epoch_benchmark_runs_with_the_default_preprocessing(tmp_path):
    """benchmarks/panda_epoch.py reads params.yaml's preprocessing (normalisation auto) as the
    extraction does, and prints both ways' epochs and their ratio, for both paddings."""
    import subprocess
    import sys

    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "panda_epoch.py"), "--images-dir", str(images),
                           "--images", "4", "--image-size", "32", "--batch-size", "2", "--rounds", "1",
                           "--no-scoring", "--threads", "1", "--padding", "both"],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "4 images from" in done.stdout and "PANDA's way" in done.stdout and "ratio" in done.stdout
    assert "padding package training epoch" in done.stdout and "package padding" in done.stdout


def test_the_panda_cifar_table_sets_each_mean_beside_dn2_on_the_same_classes(tmp_path):
    """benchmarks/panda_cifar.py's README table: a method run on fewer classes than DN2 is
    compared with DN2's mean over those classes only (a plain mean, by hand)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("panda_cifar", Path(__file__).parents[1] / "benchmarks" / "panda_cifar.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    figures = {"knn": {"a": 0.80, "b": 0.90, "c": 0.70}, "panda_early": {"a": 0.70, "b": 0.95}}
    for method, per_class in figures.items():
        for name, auroc in per_class.items():
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / f"{method}.json").write_text(json.dumps({"per_class": {name: {"auroc": auroc}}}))
    rows = {line.split(" | ")[0].lstrip("| ").split(" (")[0]: line.split(" | ")
            for line in runner.table(tmp_path, ["a", "b", "c"], "about", {}).splitlines() if line.startswith("| ")}
    assert rows["DN2"][1:4] == ["80.0", "90.0", "70.0"] and rows["DN2"][4:7] == ["80.0", "3", "80.0 |"]
    assert rows["PANDA-Early"][1:4] == ["70.0", "95.0", "-"]
    assert rows["PANDA-Early"][4:7] == ["82.5", "2", "85.0 |"]  # DN2 on a and b: (80 + 90) / 2
    assert rows["PANDA-EWC"][4:7] == ["-", "0", "- |"]
