"""PLUME's model selection without the test set: the held-out split of the normal training
images, the validation AUROC against their own pseudo-anomalies, the kept weights, the
average of weights, and the study that picks a configuration on validation figures only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from pipeline import metrics_file
from pipeline.heads.plume.head import PlumeHead, held_out_split

REPO = Path(__file__).resolve().parent.parent
STUDY = REPO / "benchmarks" / "plume_study.py"


def paper(**changes) -> PlumeHead:
    """The paper's eq. 1 with ``changes`` (no held-out images, no step floor, no limit on the
    shifts, the last epoch kept), so that the selection settings a test gives are the only ones."""
    return PlumeHead.preset("paper", **changes)


def subspace_data(seed=0, d=24, rank=3, n_train=120):
    """Normal data near a rank-3 subspace; test anomalies leave it."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]

    def normal(n):
        return (rng.normal(size=(n, rank)) * 3) @ basis[:, :rank].T + 0.05 * rng.normal(size=(n, d)) + 1

    anomalies = normal(60) + rng.normal(size=(60, d - rank)) @ basis[:, rank:].T
    test = np.concatenate([normal(60), anomalies]).astype(np.float32)
    return normal(n_train).astype(np.float32), test, np.r_[np.zeros(60), np.ones(60)]


def plain_auroc(normal, anomalies):
    """The probability that a pseudo-anomaly outscores a normal image, ties counting half: every pair."""
    wins = sum((a > n) + 0.5 * (a == n) for a in anomalies for n in normal)
    return wins / (len(normal) * len(anomalies))


def test_held_out_split_is_seeded_sorted_and_disjoint():
    train, held = held_out_split(50, 0.2, seed=3)
    assert len(held) == 10 and len(train) == 40
    assert np.array_equal(np.sort(np.r_[train, held]), np.arange(50)) and not set(train) & set(held)
    assert np.array_equal(held, np.sort(held)) and np.array_equal(held, held_out_split(50, 0.2, seed=3)[1])
    assert not np.array_equal(held, held_out_split(50, 0.2, seed=4)[1])
    assert len(held_out_split(50, 0.0, seed=3)[1]) == 0 and len(held_out_split(5, 0.01, seed=3)[1]) == 1


def test_held_out_rows_are_the_normal_class_training_rows_and_never_train(synthetic_cache, monkeypatch):
    """Through the evaluation loop: the held-out rows are training rows of the normal class (not
    test rows), and no batch the head trains on (range test included) holds one of them."""
    from pipeline.evaluate import evaluate_one_vs_all

    seen = []
    losses = PlumeHead._losses

    def recording(self, raw, perturbator):
        seen.append(raw.detach().cpu().numpy().copy())
        return losses(self, raw, perturbator)

    monkeypatch.setattr(PlumeHead, "_losses", recording)
    head = paper(epochs=2, dim=16, lr="lowest-loss", val_fraction=0.25, select="held-out", batch_size=8)
    (result,) = evaluate_one_vs_all(synthetic_cache, head, [1], track_epochs=True, keep_heads=True).values()
    fitted = result["head"]
    train_labels = synthetic_cache.labels("train")
    class_rows = np.flatnonzero(train_labels == 1)  # what the evaluation hands the head, in order
    held_rows = class_rows[fitted.held_out_rows_]
    assert len(held_rows) == round(0.25 * len(class_rows)) and (train_labels[held_rows] == 1).all()
    held = synthetic_cache.features("train", held_rows)
    test = synthetic_cache.features("test")
    assert not any(np.equal(test, row).all(axis=1).any() for row in held)  # no test image among them
    trained = np.concatenate(seen)
    assert len(seen) > 2 * (18 // 8)  # the range test's steps besides the 2 epochs of 2 steps
    assert not any(np.equal(trained, row).all(axis=1).any() for row in held)
    kept_rows = np.setdiff1d(class_rows, held_rows)
    allowed = synthetic_cache.features("train", kept_rows)
    assert all(np.equal(allowed, row).all(axis=1).any() for row in np.unique(trained, axis=0))


def test_validation_auroc_is_the_auroc_of_the_held_out_scores(monkeypatch):
    train, _, _ = subspace_data()
    checked = []

    def check(head, record):
        validation = head.validation_
        normal, anomalies = validation["normal_scores"], validation["anomaly_scores"]
        labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalies))]
        assert record["val_auroc"] == pytest.approx(roc_auc_score(labels, np.r_[normal, anomalies]), abs=1e-12)
        assert record["val_auroc"] == pytest.approx(plain_auroc(normal, anomalies), abs=1e-12)
        # The same images scored as the evaluation scores the test set: the held-out rows, and the
        # pseudo-anomalies mapped back to the cached feature space.
        np.testing.assert_array_equal(normal, head.score_samples(train[head.held_out_rows_]))
        np.testing.assert_allclose(anomalies, head.score_samples(validation["anomalies"]), rtol=1e-4, atol=1e-4)
        assert len(normal) == len(anomalies) == 30
        checked.append(record["val_auroc"])

    paper(epochs=4, dim="native", lr=1e-3, val_fraction=0.25).fit(train, callback=check)
    assert len(checked) == 4 and len(set(checked)) > 1


def plain_best_epoch(history):
    """Highest validation AUROC, then lowest validation cross-entropy, then earliest: a plain loop."""
    best = None
    for record in history:
        if best is None or record["val_auroc"] > best["val_auroc"] or (
                record["val_auroc"] == best["val_auroc"] and record["val_ce"] < best["val_ce"]):
            best = record
    return best["epoch"]


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_held_out_selection_keeps_the_best_validation_epochs_weights(ema, tmp_path):
    train, test, _ = subspace_data(seed=2)
    # Separate batches: the validation AUROC does not climb steadily, so the kept epoch is not the last.
    config = dict(epochs=8, dim="native", lr=3e-3, val_fraction=0.25, ema=ema, seed=1, batch_mode="separate")
    per_epoch = []
    held = paper(select="held-out", **config).fit(train, callback=lambda h, r: per_epoch.append(
        h.score_samples(test)))
    selected = plain_best_epoch(held.history_)
    assert held.selected_epoch_ == selected == held.history_[-1]["val_best_epoch"]
    assert selected < config["epochs"]  # the data are such that the choice matters
    np.testing.assert_array_equal(held.score_samples(test), per_epoch[selected - 1])
    assert held.validation_["epoch"] == selected
    # Selection changes which weights are kept, not the training.
    final = paper(select="final", **config).fit(train)
    assert final.history_ == held.history_ and final.selected_epoch_ == config["epochs"]
    np.testing.assert_array_equal(final.score_samples(test), per_epoch[-1])
    # A saved head scores as the kept weights do.
    path = held.save(tmp_path / "plume.head")
    loaded = PlumeHead.load(path)
    np.testing.assert_array_equal(loaded.score_samples(test), per_epoch[selected - 1])
    assert loaded.selected_epoch_ == selected


def test_ema_scores_with_the_average_of_the_weights():
    """The averaged classifier is a plain exponential moving average of the trained one's
    parameters, step by step (batch size = rows, so one step per epoch)."""
    train, test, _ = subspace_data(seed=3, n_train=16)
    decay, trained = 0.8, []
    head = paper(epochs=4, dim="native", lr=1e-3, batch_size=16, ema=decay)
    head.fit(train, callback=lambda h, r: trained.append({k: v.detach().clone()
                                                          for k, v in h.classifier_.state_dict().items()}))
    expected = {k: v.clone() for k, v in trained[0].items()}  # the first update copies the weights
    for state in trained[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * state[k] if state[k].is_floating_point() else state[k]
                    for k in state}
    for name, value in head.classifier_.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not all(torch.equal(head.classifier_.state_dict()[k], trained[-1][k]) for k in trained[-1])


def test_selection_is_deterministic():
    train, test, _ = subspace_data(seed=4)
    config = dict(epochs=3, dim="native", lr="lowest-loss", val_fraction=0.2, select="held-out", ema=0.5)
    a, b = paper(seed=5, **config).fit(train), paper(seed=5, **config).fit(train)
    np.testing.assert_array_equal(a.score_samples(test), b.score_samples(test))
    assert a.history_ == b.history_ and np.array_equal(a.held_out_rows_, b.held_out_rows_)
    assert a.selected_epoch_ == b.selected_epoch_
    c = paper(seed=6, **config).fit(train)
    assert not np.array_equal(a.held_out_rows_, c.held_out_rows_)


def test_bad_selection_settings_are_clear_errors():
    from pipeline.errors import PipelineError

    x = np.random.rand(10, 8).astype(np.float32)
    with pytest.raises(PipelineError, match="select held-out needs normal training images to hold out"):
        PlumeHead(select="held-out", val_fraction=0.0).fit(x)
    with pytest.raises(PipelineError, match="select must be one of final, held-out"):
        PlumeHead(select="best").fit(x)
    with pytest.raises(PipelineError, match=r"at least 2 training features, got 1 after holding out 9"):
        PlumeHead(val_fraction=0.9, dim="native").fit(x)
    with pytest.raises(PipelineError, match="ema must be a number >= 0 and < 1"):
        PlumeHead(ema=1.0).fit(x)


def test_command_with_held_out_selection_and_ema(synthetic_cache, tmp_path):
    from pipeline.commands.plume import main

    metrics, curves = tmp_path / "plume.json", tmp_path / "curves"
    result = CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "3", "--min-steps", "0", "--dim", "native",
                                       "--lr", "1e-3", "--classes", "0,2", "--seeds", "2", "--val-fraction", "0.25",
                                       "--select", "held-out", "--ema", "0.5", "--max-shift", "0.3",
                                       "--metrics", str(metrics), "--curves", str(curves)])
    assert result.exit_code == 0, result.output
    assert "epoch chosen on held-out normal images" in result.output
    numbers = json.loads(metrics.read_text())
    about = json.loads(metrics_file.sidecar_path(metrics).read_text())["about"]
    assert {k: about[k] for k in ("select", "val_fraction", "ema", "max_shift", "auroc_epoch")} == {
        "select": "held-out", "val_fraction": 0.25, "ema": 0.5, "max_shift": 0.3,
        "auroc_epoch": "epoch chosen on held-out normal images"}
    for name in numbers["per_class"]:
        trained = numbers["per_class"][name]
        records = json.loads((curves / f"train_{name}.json").read_text())
        assert {"val_auroc", "val_ce", "val_best_epoch", "norm_ratio", "ones_cosine", "shift_cosine"} <= set(records[0])
        assert all(r["norm_ratio"] <= 1.3 + 1e-6 for r in records)  # --max-shift reached the head
        runs = []
        for seed in (0, 1):
            mine = [r for r in records if r["seed"] == seed]
            epoch = mine[-1]["val_best_epoch"]
            assert trained["selected_epoch"][f"seed_{seed}"] == epoch
            assert trained["val_auroc"][f"seed_{seed}"] == pytest.approx(mine[epoch - 1]["val_auroc"], abs=1e-6)
            runs.append(mine[epoch - 1]["test_auroc"])
        # The metrics' AUROC is the kept epoch's (mean over seeds), not the last epoch's.
        assert trained["auroc"] == pytest.approx(np.mean(runs), abs=2e-6)
    bad = CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "1", "--min-steps", "0", "--select", "held-out",
                                    "--val-fraction", "0", "--metrics", str(tmp_path / "bad.json")])
    assert bad.exit_code == 1 and "Error:" in bad.output and "Traceback" not in bad.output
    assert "select held-out needs normal training images to hold out" in bad.output


def test_report_names_the_kept_epoch():
    from pipeline.report.heads.plume import plume_ablation_table

    per_class = {"a": {"auroc": 0.8, "best_epoch_auroc": 0.9}}
    about = {"dataset": "digits", "backbone": "b", "image_size": 64, "preprocessing": "p", "seeds": 1,
             "auroc_epoch": "epoch chosen on held-out normal images", "select": "held-out"}
    table = plume_ablation_table({"linear/contrastive": {"per_class": per_class, "mean": per_class["a"],
                                                         "about": about}}, paper_column=False)
    assert "Mean (epoch chosen on held-out normal images)" in table and "Mean (final epoch)" not in table


# --- the study ------------------------------------------------------------------------------

def load_study():
    import importlib.util

    spec = importlib.util.spec_from_file_location("plume_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FixedScores:
    """A stand-in head whose score is the first feature."""

    def score_samples(self, x):
        return np.asarray(x)[:, 0]


def test_panel_is_the_mean_auroc_against_the_other_configurations_pseudo_anomalies():
    study = load_study()
    rng = np.random.default_rng(0)
    held_out = rng.normal(size=(7, 2))
    anomalies = {(c, k): rng.normal(loc=i, size=(7, 2)) for i, (c, k) in
                 enumerate((c, k) for c in ("A", "B", "C") for k in study.KEPT)}
    runs = {c: {"kept": {k: (FixedScores(), {"anomalies": anomalies[(c, k)]}, None) for k in study.KEPT}}
            for c in ("A", "B", "C")}
    panel = study.panel_figures(runs, held_out)
    for (c, k), value in panel.items():
        others = [a for (source, _), a in anomalies.items() if source != c]
        assert value == pytest.approx(np.mean([plain_auroc(held_out[:, 0], a[:, 0]) for a in others]), abs=1e-12)


def test_the_pick_reads_validation_figures_only():
    from pipeline.errors import PipelineError

    study = load_study()
    candidates = [{"config": {"x": i}, "kept": "final", "ones_cosine": ones,
                   "mean": {"val_panel": v, "val_own": 1 - v, "test": t, "best_test": t}}
                  for i, (v, t, ones) in enumerate([(0.6, 0.9, 0.1), (0.8, 0.1, 0.99), (0.7, 0.5, float("nan"))])]
    assert study.pick(candidates, "val_panel")["config"] == {"x": 1}
    assert study.pick(candidates, "val_own")["config"] == {"x": 0}
    # Perturbations along the all-ones vector are left out on request; NaN (none measured) stays.
    assert study.pick(candidates, "val_panel", max_ones_cosine=0.5)["config"] == {"x": 2}
    assert study.pick(candidates[:2], "val_panel", max_ones_cosine=0.5)["config"] == {"x": 0}
    with pytest.raises(PipelineError, match="raise --max-ones-cosine"):
        study.pick(candidates[1:2], "val_panel", max_ones_cosine=0.5)
    with pytest.raises(ValueError):
        study.pick(candidates, "test")


def test_study_end_to_end_on_a_small_grid(synthetic_cache, tmp_path):
    out = tmp_path / "study.json"
    args = [sys.executable, str(STUDY), "--cache", str(synthetic_cache.path), "--classes", "0,1", "--epochs", "2", "--grid", "min_steps=0",
            "--val-fraction", "0.25", "--grid", "batch_mode=joint,separate", "--grid", "lr=0.001",
            "--out", str(out)]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert len(data["candidates"]) == 4 and {c["kept"] for c in data["candidates"]} == {"final", "held-out"}
    best = max(data["candidates"], key=lambda c: c["mean"]["val_panel"])
    assert data["picked"] == {"config": best["config"], "kept": best["kept"]}
    for c in data["candidates"]:
        assert set(c["per_class"]) == set(synthetic_cache.classes[:2])
        assert all(m["test"] <= m["best_test"] + 1e-12 for m in c["per_class"].values())
    rows = data["rows"]
    assert len(rows) == 4 * 2 and all(r["epoch"] <= 2 for r in rows)
    # Both candidates of a training share its best test epoch; "final" is the last epoch.
    assert all(r["epoch"] == 2 for r in rows if r["kept"] == "final")
    assert "Picked on validation figures only" in done.stdout and "Its test figures (not used to pick)" in done.stdout
    # The rows of two runs (here: the same one twice, split by class) combine into one pick.
    halves = []
    for cls in synthetic_cache.classes[:2]:
        half = {**data, "rows": [r for r in rows if r["class"] == cls]}
        halves.append(tmp_path / f"{cls}.json")
        halves[-1].write_text(json.dumps(half))
    again = subprocess.run([sys.executable, str(STUDY), "--rows-from", str(halves[0]), "--rows-from", str(halves[1]),
                            "--out", str(tmp_path / "merged.json")], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "merged.json").read_text())["candidates"] == data["candidates"]


def test_study_help_loads_no_torch():
    code = ("import runpy, sys\nsys.argv = ['plume_study.py', '--help']\n"
            f"try:\n    runpy.run_path({str(STUDY)!r}, run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_seed_summary_combines_runs_trained_apart(synthetic_cache, tmp_path):
    """benchmarks/plume_seed_summary.py: seeds 0, 1 from one run's curves and seed 2 from a
    one-seed metrics file give the per-seed figures, their means and spread over seeds."""
    from pipeline.commands.plume import main

    common = ["--cache", str(synthetic_cache.path), "--epochs", "2", "--min-steps", "0", "--dim", "native", "--lr", "1e-3",
              "--classes", "0,2", "--val-fraction", "0", "--select", "final"]
    curves, single = tmp_path / "curves", tmp_path / "seed2.json"
    assert CliRunner().invoke(main, [*common, "--seeds", "2", "--metrics", str(tmp_path / "a.json"),
                                     "--curves", str(curves)]).exit_code == 0
    assert CliRunner().invoke(main, [*common, "--seeds", "2,", "--metrics", str(single)]).exit_code == 0
    out = tmp_path / "summary.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "plume_seed_summary.py"),
                             "--run", f"both={curves},{single}", "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())["both"]
    assert summary["seeds"] == [0, 1, 2]
    third = json.loads(single.read_text())["per_class"]
    finals = {}
    for name in third:
        records = json.loads((curves / f"train_{name}.json").read_text())
        finals[name] = [r["test_auroc"] for r in records if r["epoch"] == 2] + [third[name]["auroc"]]
        assert summary["per_class"][name]["final"] == pytest.approx(np.mean(finals[name]))
    per_seed = np.mean(list(finals.values()), axis=0)
    assert summary["mean"]["final"] == pytest.approx(per_seed.mean())
    assert summary["mean"]["final_std"] == pytest.approx(np.std(per_seed))
    assert "| both | 3 |" in result.stdout
    # A source that repeats a seed is refused.
    again = subprocess.run([sys.executable, str(REPO / "benchmarks" / "plume_seed_summary.py"),
                            "--run", f"twice={curves},{curves}"], capture_output=True, text=True, cwd=REPO)
    assert again.returncode != 0 and "repeats" in again.stderr
