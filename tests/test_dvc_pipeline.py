"""End to end: the real dvc.yaml and params.yaml, on the synthetic dataset at 32 px."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]


def sh(cwd, *args):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd)}
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def set_params(path, **changes):
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        params[section][key] = value
    path.write_text(yaml.safe_dump(params))


@pytest.fixture
def project(tmp_path):
    for item in ("pipeline", "stages", "dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".gitignore"):
        source, target = REPO / item, tmp_path / item
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    # extract.map_grid 2: the stride-16 map is 2x2 at 32 px (3x3 at 48), and a grid larger than the map is refused.
    set_params(tmp_path / "params.yaml", **{"dataset.name": "synthetic", "preprocess.image_size": 32,
                                             "extract.map_grid": 2, "extract.workers": 0, "plume.epochs": 2,
                                             "plume.min_steps": 0, "plume.lr": 0.001,
                                             "anomem.epochs": 2, "anomem.sup_epochs": 2, "anomem.draws": 1,
                                             "anomem.gammas": "0.1", "anomem.slots_intermediate": 16,
                                             "anomem.slots_last": 8, "igd.epochs": 2})
    sh(tmp_path, "git", "init", "-q")
    sh(tmp_path, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "init")
    return tmp_path


def dvc(cwd, *args):
    return sh(cwd, sys.executable, "-m", "dvc", *args)


def test_repro_is_incremental_and_metrics_diff_shows_changes(project):
    out = dvc(project, "repro")
    assert "Running stage 'extract@efficientnet_lite0'" in out and "Running stage 'knn@efficientnet_lite0'" in out
    assert "Running stage 'plume@efficientnet_lite0'" in out
    assert (project / "cache" / "synthetic_efficientnet_lite0_32.zarr" / "zarr.json").exists()
    shown = dvc(project, "metrics", "show")
    assert "mean.auroc" in shown and "metrics/knn_efficientnet_lite0.json" in shown
    assert "metrics/plume_efficientnet_lite0.json" in shown and "mean.best_epoch_auroc" in shown
    assert "Running stage 'anomem@efficientnet_lite0'" in out
    assert (project / "cache" / "synthetic_efficientnet_lite0_32.views.zarr" / "zarr.json").exists()
    assert "metrics/anomem_efficientnet_lite0.json" in shown and "semi_supervised.0.1.mean.auroc" in shown
    assert "Running stage 'igd@efficientnet_lite0'" in out and "metrics/igd_efficientnet_lite0.json" in shown
    # The Gaussian head, and one stage per detector of classical.detectors (a DVC matrix).
    assert "Running stage 'gaussian@efficientnet_lite0'" in out and "metrics/gaussian_efficientnet_lite0.json" in shown
    for detector in yaml.safe_load((project / "params.yaml").read_text())["classical"]["detectors"]:
        assert f"Running stage 'classical@efficientnet_lite0-{detector}'" in out
        assert f"metrics/classical_{detector}_efficientnet_lite0.json" in shown

    assert "Running stage" not in dvc(project, "repro")
    stale_after_edits(project)

    sh(project, "git", "add", "-A")
    sh(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "k=2")
    set_params(project / "params.yaml", **{"knn.k": 5})
    out = dvc(project, "repro")
    assert "Running stage 'knn@efficientnet_lite0'" in out
    assert "Running stage 'extract" not in out and "Running stage 'plume" not in out
    assert "knn.k" in dvc(project, "params", "diff")
    diff = dvc(project, "metrics", "diff", "--all")
    assert "mean.auroc" in diff and "about" not in diff  # metrics files hold numbers only
    assert json.loads((project / "metrics" / "knn_efficientnet_lite0.about.json").read_text())["about"]["k"] == 5

    # A head stage that fails on a bad setting keeps the last good run's metrics and plots.
    kept = [project / "metrics" / "knn_efficientnet_lite0.json", project / "metrics" / "knn_efficientnet_lite0.about.json",
            *sorted((project / "plots" / "knn_efficientnet_lite0").glob("*.json"))]
    before = {path: path.read_bytes() for path in kept}
    set_params(project / "params.yaml", **{"knn.k": 10_000})  # more than a class's training images
    failed = subprocess.run([sys.executable, "-m", "dvc", "repro", "knn"], cwd=project, capture_output=True, text=True,
                            env={**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(project)})
    assert failed.returncode != 0 and "fewer than k = 10000" in failed.stdout + failed.stderr
    assert {path: path.read_bytes() for path in kept} == before
    set_params(project / "params.yaml", **{"knn.k": 5})

    set_params(project / "params.yaml", **{"plume.guidance": "none"})
    out = dvc(project, "repro")
    assert "Running stage 'plume@efficientnet_lite0'" in out and "Running stage 'knn" not in out
    assert "plume.guidance" in dvc(project, "params", "diff")

    set_params(project / "params.yaml", **{"anomem.memory": "kmeans"})
    out = dvc(project, "repro")
    assert "Running stage 'anomem@efficientnet_lite0'" in out and "Running stage 'plume" not in out
    assert "anomem.memory" in dvc(project, "params", "diff")

    # A detector added to the list runs alone; the other detectors' stages are up to date.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["classical"]["detectors"].append("pyod-HBOS")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    out = dvc(project, "repro")
    assert "Running stage 'classical@efficientnet_lite0-pyod-HBOS'" in out
    assert "Running stage 'classical@efficientnet_lite0-ocsvm'" not in out and "Running stage 'knn" not in out

    set_params(project / "params.yaml", **{"preprocess.image_size": 48})
    out = dvc(project, "repro")
    assert "Running stage 'extract@efficientnet_lite0'" in out
    assert (project / "cache" / "synthetic_efficientnet_lite0_48.zarr").exists()

    plots = dvc(project, "plots", "show", "-o", str(project / "plots_html"))
    assert (project / "plots_html" / "index.html").exists(), plots
    assert (project / "plots" / "plume_efficientnet_lite0_training").is_dir()


def stale_after_edits(project):
    """An edit to a file a stage imports makes every stage that imports it stale (``dvc
    status``, which is what ``dvc repro`` re-runs). Every file is checked against the deps of
    every stage by tests/test_layout_deps.py; here DVC itself confirms it, with one file for
    each set of stages that import the same files (far fewer sets than files), in this process."""
    from dvc.repo import Repo

    from pipeline.commands.dvc_deps import closure, stage_commands

    stages = {name: closure(project, module) for name, (module, _) in stage_commands(project).items()}
    one_per_set = {}
    for path in sorted(set().union(*stages.values())):
        one_per_set.setdefault(frozenset(name for name, imported in stages.items() if path in imported), path)
    assert len(one_per_set) > 5  # shared modules, single-stage ones, the stages' own files
    with Repo(str(project)) as repo:  # unedited, nothing is stale: an edit below is what makes a stage so
        assert repo.status() == {}
    for expected, path in one_per_set.items():
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        try:
            with Repo(str(project)) as repo:  # a new Repo each time: nothing remembered from the last file
                status = repo.status()
        finally:
            path.write_bytes(original)
        stale = {name.split(":")[-1].split("@")[0] for name in status}
        assert expected <= stale, (path, stale)


def test_repro_runs_every_stage_on_an_anomaly_folder(project):
    """params.yaml's documented switch (dataset name, data dir, normal folder) runs the whole
    pipeline on the user's own images, normal-vs-anomalies, to the report's defect-type table."""
    from test_anomaly_folder import digits_folder

    digits_folder(project / "data" / "parts")
    set_params(project / "params.yaml", **{"dataset.name": "anomaly_folder", "dataset.data_dir": "data/parts",
                                           "dataset.normal": "good"})
    out = dvc(project, "repro")
    for stage in ("extract", "knn", "plume", "anomem", "igd", "gaussian", "classical"):
        assert f"Running stage '{stage}@efficientnet_lite0" in out, out
    assert "semi-supervised runs" in out  # AnoMem: no labelled anomalies in train/, one-class only
    shown = dvc(project, "metrics", "show")
    assert "per_class.five.auroc" in shown and "overall.auroc" in shown and "mean.auroc" in shown
    about = json.loads((project / "metrics" / "knn_efficientnet_lite0.about.json").read_text())["about"]
    assert about["protocol"] == "normal-vs-anomalies" and about["dataset"] == "anomaly_folder:parts"
    report = (project / "reports" / "results.md").read_text()
    assert "anomaly_folder:parts: efficientnet_lite0 @ 32x32, normal-vs-anomalies" in report
    assert "| Head | Setting | Mean | Overall | eight | five | nine |" in report
