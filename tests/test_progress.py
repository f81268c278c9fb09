"""Progress and verbosity: plain progress lines when stderr is not a terminal (batch logs),
--quiet and -v, through the real commands (CliRunner's stderr is not a terminal)."""

from __future__ import annotations

import io
import re

import click
import pytest
from click.testing import CliRunner

from pipeline import cli
from pipeline import progress as progress_module
from pipeline.errors import PipelineError

# <desc>: done/total (pct%), rate unit/s, elapsed H:MM:SS, ETA H:MM:SS [postfix]
LINE = re.compile(r"^(?P<desc>[^:]+): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\), \S+ \S+/\S+, "
                  r"elapsed \d+:\d\d:\d\d, ETA (\d+:\d\d:\d\d|\?)( \[.*\])?$")


def progress_lines(text: str, desc: str) -> list[re.Match]:
    return [m for m in map(LINE.match, text.splitlines()) if m and m["desc"] == desc]


@pytest.fixture
def plain_lines(monkeypatch):
    """Progress as in a batch log (stderr not a terminal), a line at every update."""
    monkeypatch.setenv("PIPELINE_PROGRESS", "auto")
    monkeypatch.setenv("FFAD_PROGRESS_INTERVAL", "0")


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(cli.LineProgress, "_now", staticmethod(lambda: now[0]))
    return now


# --- the progress object ----------------------------------------------------------------------


def test_line_progress_prints_at_most_once_per_interval_and_once_at_the_end(clock):
    out = io.StringIO()
    with cli.LineProgress(total=100, desc="extract x", unit="img", interval=30, file=out) as bar:
        for _ in range(100):
            clock[0] += 1
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines == ["extract x: 30/100 (30%), 1.0 img/s, elapsed 0:00:30, ETA 0:01:10",
                     "extract x: 60/100 (60%), 1.0 img/s, elapsed 0:01:00, ETA 0:00:40",
                     "extract x: 90/100 (90%), 1.0 img/s, elapsed 0:01:30, ETA 0:00:10",
                     "extract x: 100/100 (100%), 1.0 img/s, elapsed 0:01:40, ETA 0:00:00"]


def test_line_progress_postfix_slow_rates_and_inner_bars(clock):
    out = io.StringIO()
    with cli.LineProgress(total=4, desc="kNN", unit="run", interval=30, file=out) as bar:
        clock[0] += 20
        bar.set_postfix_str("class0 seed 0")  # not due yet
        clock[0] += 20
        bar.set_postfix_str("class0 seed 0 epoch 3")  # due: a slow run still shows up in the log
        bar.update(1)
    assert out.getvalue().splitlines() == [
        "kNN: 0/4 (0%), ? run/s, elapsed 0:00:40, ETA ? [class0 seed 0 epoch 3]",
        "kNN: 1/4 (25%), 40 s/run, elapsed 0:00:40, ETA 0:02:00 [class0 seed 0 epoch 3]"]
    # leave=False (a step inside another bar): silent unless it ran long enough to print.
    out = io.StringIO()
    with cli.LineProgress(total=100, desc="inner", interval=30, leave=False, file=out) as bar:
        bar.update(100)
    assert out.getvalue() == ""
    with cli.LineProgress(total=100, desc="inner", interval=30, leave=False, file=out) as bar:
        clock[0] += 31
        bar.update(50)
        bar.update(50)
    assert [m["done"] for m in progress_lines(out.getvalue(), "inner")] == ["50", "100"]


def test_progress_mode_follows_the_stream_the_variables_and_the_verbosity(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("PIPELINE_PROGRESS", raising=False)
    assert cli.progress_mode(Terminal()) == "bar" and cli.progress_mode(io.StringIO()) == "lines"
    for value, expected in (("0", "off"), ("off", "off"), ("1", "bar"), ("lines", "lines"), ("auto", "lines")):
        monkeypatch.setenv("PIPELINE_PROGRESS", value)
        assert cli.progress_mode(io.StringIO()) == expected, value
    monkeypatch.setenv("PIPELINE_PROGRESS", "auto")
    monkeypatch.setattr(progress_module, "_verbosity", cli.QUIET)
    assert cli.progress_mode(Terminal()) == "off"
    monkeypatch.setenv("FFAD_PROGRESS_INTERVAL", "soon")
    with pytest.raises(PipelineError, match="FFAD_PROGRESS_INTERVAL"):
        cli.progress_interval()
    monkeypatch.setenv("FFAD_PROGRESS_INTERVAL", "2.5")
    assert cli.progress_interval() == 2.5
    monkeypatch.delenv("FFAD_PROGRESS_INTERVAL")
    assert cli.progress_interval() == cli.DEFAULT_PROGRESS_INTERVAL


def test_verbosity_options_set_the_level_for_the_run_and_give_it_back():
    seen = []

    @click.group()
    @cli.verbosity_options
    def group() -> None:
        seen.append(("group", cli.verbosity()))

    @group.command()
    @click.option("--n", default=1)
    @cli.verbosity_options
    def sub(n: int) -> None:
        seen.append(("sub", cli.verbosity()))
        cli.info("intermediate")
        click.echo("final")

    runner = CliRunner()
    assert runner.invoke(group, ["-v", "sub"]).exit_code == 0      # the group's -v holds in the subcommand
    result = runner.invoke(group, ["sub", "-q"])
    assert result.exit_code == 0 and result.stdout == "final\n"
    result = runner.invoke(group, ["sub", "-vv", "--n", "3"])
    assert "sub settings: n=3" in result.stderr and result.stdout == "intermediate\nfinal\n"
    assert seen == [("group", 1), ("sub", 1), ("group", 0), ("sub", -1), ("group", 0), ("sub", 2)]
    assert cli.verbosity() == cli.NORMAL  # given back after each run
    result = runner.invoke(group, ["-q", "sub", "-v"])
    assert result.exit_code == 2 and "--quiet and --verbose" in result.output


# --- through the commands ---------------------------------------------------------------------


def test_knn_command_prints_plain_progress_lines_or_none_with_quiet(synthetic_cache, tmp_path, plain_lines):
    from pipeline.commands.knn import main

    args = ["--cache", str(synthetic_cache.path), "--k", "2", "--metrics", str(tmp_path / "m.json")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = progress_lines(result.stderr, "kNN k=2")
    done = [(m["done"], m["total"], m["pct"]) for m in lines]
    assert ("1", "3", "33") in done and done[-1] == ("3", "3", "100")
    assert result.stdout.count("\n") == 1 and "mean AUROC" in result.stdout

    quiet = CliRunner().invoke(main, [*args, "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and quiet.stdout == result.stdout

    verbose = CliRunner().invoke(main, [*args, "-v"])
    assert verbose.exit_code == 0, verbose.output
    assert "settings:" in verbose.stderr and "k=2" in verbose.stderr and "threshold_quantile=" in verbose.stderr


def test_plume_verbose_prints_epochs_and_the_lr_range_test_progress(synthetic_cache, tmp_path, plain_lines):
    from pipeline.commands.plume import main

    result = CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "2", "--min-steps", "0", "--dim", "16",
                                       "--seeds", "1", "--classes", "0", "--lr", "lowest-loss", "-v",
                                       "--metrics", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    steps = progress_lines(result.stderr, "PLUME lr range test")
    assert steps and all(m["total"] == "100" for m in steps)
    assert "the learning-rate range test (lowest-loss) chose lr" in result.stderr
    epochs = [line for line in result.stderr.splitlines() if re.search(r"class0 seed 0 epoch \d+: .*loss ", line)]
    assert len(epochs) == 2 and "test AUROC" in epochs[0]
    quiet = CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "1", "--min-steps", "0", "--dim", "16",
                                      "--seeds", "1", "--classes", "0", "--lr", "lowest-loss", "-q",
                                      "--metrics", str(tmp_path / "p.json")])
    assert quiet.exit_code == 0 and quiet.stderr == ""


def _gzipped_mnist(root) -> None:
    """Tiny MNIST as downloaded: the four idx files, gzipped, in root/MNIST/raw/."""
    import gzip
    import struct

    import numpy as np

    rng = np.random.default_rng(5)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": np.array([2, 1, 0], dtype=np.uint8)}
    for name, array in arrays.items():
        header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
        (raw / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes()))


def test_extract_of_gzipped_mnist_into_a_batch_log(tmp_path):
    """python -m pipeline.extract with stderr to a pipe, as under SLURM or ``dvc repro > log``:
    plain progress lines on stderr, the result on stdout, the .gz files read without a network."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    _gzipped_mnist(tmp_path / "data")
    common = ["--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--backbone", "efficientnet_lite0",
              "--image-size", "32", "--map-grid", "2", "--batch-size", "3", "--workers", "0", "--device", "cpu"]
    result = subprocess.run([sys.executable, "-m", "pipeline.extract", *common, "--out", str(tmp_path / "c.zarr")],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PIPELINE_PROGRESS": "auto", "FFAD_PROGRESS_INTERVAL": "0"})
    assert result.returncode == 0, result.stderr
    lines = progress_lines(result.stderr, "extract efficientnet_lite0")
    assert [(m["done"], m["total"]) for m in lines] == [("3", "9"), ("6", "9"), ("9", "9")]
    assert "\r" not in result.stderr
    assert result.stdout.startswith(f"wrote {tmp_path / 'c.zarr'}: train 6 x 1280, test 3 x 1280")


def test_extract_quiet_and_the_missing_files_error(tmp_path, plain_lines):
    from pipeline.extract.command import main

    _gzipped_mnist(tmp_path / "data")
    common = ["--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--backbone", "efficientnet_lite0",
              "--image-size", "32", "--map-grid", "2", "--batch-size", "3", "--workers", "0", "--device", "cpu",
              "--views", "0"]
    quiet = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "q.zarr"), "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and quiet.stdout.count("\n") == 1 and quiet.stdout.startswith("wrote ")

    raw = tmp_path / "data" / "MNIST" / "raw"
    for name in ("t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"):
        (raw / name).unlink()
    missing = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "m.zarr")])
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    message = " ".join(missing.stderr.split())
    assert f"{raw}/" in message and "missing: t10k-images-idx3-ubyte." in message and ".gz" in message
