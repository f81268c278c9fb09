"""``python -m pipeline.report``: the results tables (``build``) and PLUME's ablation table
(``plume-table``) beside the published figures."""

from __future__ import annotations

import re
from pathlib import Path

import click

from pipeline import metrics_file
from pipeline.cli import check_outputs, verbosity_options, write_text
from pipeline.errors import PipelineError
from pipeline.report.heads import report_module
from pipeline.report.page import html_report
from pipeline.report.published import has_published_column
from pipeline.report.table import ablation_payloads, discover_plots, group_runs, markdown_report, runs_of

# `build --readme` replaces what lies between these two lines.
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@verbosity_options
def main() -> None:
    """Tables of this project's results beside the published figures."""


@main.command("plume-table")
@click.argument("metrics", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--knn-metrics", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A kNN metrics file on the same cache, added as a row.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the Markdown table here too.")
@verbosity_options
def plume_table(metrics: tuple[str, ...], knn_metrics: str | None, out: str | None) -> None:
    """Table 1c layout from one or more PLUME ablation metrics files (for variants run
    separately, for example in parallel processes)."""
    check_outputs(files={"--out": out}, inputs={"METRICS": list(metrics), "--knn-metrics": knn_metrics})
    payloads = ablation_payloads(list(metrics))
    knn = metrics_file.read(knn_metrics) if knn_metrics else None
    # The PLUME ablation table is PLUME's, in its report module.
    table = report_module("plume").plume_ablation_table(
        payloads, knn, paper_column=has_published_column(next(iter(payloads.values()))["about"]))
    if out:
        write_text(out, table)
    click.echo(table)


def _pair_dirs(values: tuple[str, ...], metrics: list[Path], option: str) -> dict[Path, Path]:
    """``FILE=DIR`` values, and bare ``DIR`` values taken in the order of the metrics files."""
    pairs: dict[Path, Path] = {}
    bare = [v for v in values if "=" not in v]
    if len(bare) > len(metrics):
        raise PipelineError(f"{len(bare)} bare {option} values for {len(metrics)} metrics files; "
                            f"give one per file in order, or FILE=DIR.")
    pairs.update(zip(metrics, map(Path, bare)))
    for value in values:
        if "=" in value:
            file, folder = value.split("=", 1)
            if Path(file) not in metrics:
                raise PipelineError(f"{option} {value}: {file} is not one of the metrics files given.")
            pairs[Path(file)] = Path(folder)
    for folder in pairs.values():
        if not folder.is_dir():
            raise PipelineError(f"{option} {folder}: no such folder.")
    return pairs


def metrics_files(paths: tuple[str, ...]) -> list[Path]:
    """The files given, with a folder standing for the *.json files in it (DVC cannot glob)."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(f for f in path.glob("*.json") if not metrics_file.is_sidecar(f)) if path.is_dir()
                     else [path])
    if not files:
        raise PipelineError(f"no metrics files in {', '.join(paths)}.")
    return files


@main.command("build")
@click.argument("metrics", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--plots-dir", "plots_dirs", multiple=True, metavar="[FILE=]DIR",
              help="The folder a stage wrote with --plots (roc_<class>.json; for an ablation file, one subfolder "
                   "per variant). FILE=DIR, or bare DIRs taken in the order of the metrics files (repeatable). "
                   "Default: plots/<file name> beside the metrics folder, or in it.")
@click.option("--curves-dir", "curves_dirs", multiple=True, metavar="[FILE=]DIR",
              help="The folder PLUME wrote with --curves (train_<class>.json), like --plots-dir. "
                   "Default: <plots dir>_training.")
@click.option("--out-md", default="reports/results.md", show_default=True, type=click.Path(dir_okay=False))
@click.option("--out-html", default="reports/results.html", show_default=True, type=click.Path(dir_okay=False))
@click.option("--readme", default=None, type=click.Path(exists=True, dir_okay=False),
              help=f"Also put the tables into this Markdown file, between the lines {README_START!r} and "
                   f"{README_END!r} (what is between them is replaced).")
@click.option("--params", "params_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A DVC params file (params.yaml): keep only the runs of its dataset, backbones and image "
                   "size; files left over from earlier settings (a backbone since removed) are named and left out.")
@verbosity_options
def build(metrics: tuple[str, ...], plots_dirs: tuple[str, ...], curves_dirs: tuple[str, ...], out_md: str,
          out_html: str, readme: str | None, params_file: str | None) -> None:
    """One table of every head and class from metrics files of any head (or folders of them),
    grouped by dataset, backbone and image size, beside the published CIFAR-10 figures;
    as Markdown, and as a self-contained HTML page with ROC and training curves (PLUME, IGD)."""
    files = metrics_files(metrics)
    # --readme is rewritten in place on purpose: an input only to the other outputs.
    check_outputs(files={"--out-md": out_md, "--out-html": out_html},
                  inputs={"METRICS": list(metrics), "--params": params_file, "--readme": readme})
    plots = _pair_dirs(plots_dirs, files, "--plots-dir")
    curves = _pair_dirs(curves_dirs, files, "--curves-dir")
    runs = []
    for file in files:
        found_plots, found_curves = discover_plots(file)
        plots_dir = plots.get(file, found_plots)
        curves_dir = curves.get(file, found_curves if file not in plots else _training_dir(plots_dir))
        runs.extend(runs_of(file, plots_dir, curves_dir))
    if params_file:
        runs = current_runs(runs, params_file)
    groups = group_runs(runs)
    # Both rendered before either is written, so a bad input leaves both files as they were.
    markdown, page = markdown_report(groups), html_report(groups)
    if readme:
        write_text(readme, replace_between_markers(Path(readme).read_text(), markdown, readme))
    write_text(out_md, markdown)
    write_text(out_html, page)
    click.echo(f"{len(runs)} runs in {len(groups)} table(s): {out_md}, {out_html}")


@main.command("summary")
@click.argument("metrics", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--params", "params_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Keep only the runs of this params file's dataset, backbones and image size (as build does).")
@click.option("--width", default=100, show_default=True, type=click.IntRange(60, 400),
              help="Widest line to print; classes that do not fit go to further blocks.")
def summary(metrics: tuple[str, ...], params_file: str | None, width: int) -> None:
    """Print every head's AUROC per class and the mean, one compact table per dataset,
    backbone and image size (the full report: build)."""
    from pipeline.report.terminal import terminal_table

    runs = [run for file in metrics_files(metrics) for run in runs_of(file)]
    if params_file:
        runs = current_runs(runs, params_file)
    click.echo("\n\n".join(terminal_table(group, width) for group in group_runs(runs)))


def made_with(about: dict, params: dict) -> bool:
    """Whether a run's ``about`` matches the dataset, backbones and image size of a params file."""
    dataset = str(params.get("dataset", {}).get("name"))
    # An image folder is recorded as imagefolder:<folder name> (anomaly_folder:<folder name>).
    same_dataset = str(about.get("dataset")) == dataset or str(about.get("dataset")).startswith(dataset + ":")
    return (same_dataset and about.get("backbone") in params.get("backbones", [])
            and about.get("image_size") == params.get("preprocess", {}).get("image_size"))


def current_runs(runs: list, params_file: str | Path) -> list:
    """The runs made with the settings of ``params_file``; the files of the others are named on stderr."""
    import yaml

    try:
        params = yaml.safe_load(Path(params_file).read_text()) or {}
    except yaml.YAMLError as error:
        raise PipelineError(f"cannot read {params_file} as YAML: {error}") from None
    if not isinstance(params, dict):
        raise PipelineError(f"{params_file} is not a params file (a YAML mapping with dataset, backbones, preprocess).")
    keep = [run for run in runs if made_with(run.about, params)]
    stale = sorted({str(run.source) for run in runs if not made_with(run.about, params)})
    if stale:
        click.echo(f"left out {len(stale)} metrics files not made with the dataset, backbones and image size of "
                   f"{params_file}: {', '.join(stale)}", err=True)
    if not keep:
        raise PipelineError(f"none of the metrics files was made with the settings of {params_file}.")
    return keep


def replace_between_markers(text: str, tables: str, where: str = "the file") -> str:
    """``text`` with what lies between the results markers replaced by ``tables`` (the
    report's own title line dropped: the README has its own heading)."""
    if text.count(README_START) != 1 or text.count(README_END) != 1 or text.index(README_START) > text.index(README_END):
        raise PipelineError(f"{where} needs one line {README_START} and, after it, one line {README_END} "
                            f"around the part the report replaces.")
    body = tables.split("\n", 2)[2] if tables.startswith("# ") else tables
    # One level down: the README's own "## Results" section holds the tables (## and ### headings).
    body = "\n".join("#" + line if re.match(r"#{2,5} ", line) else line for line in body.splitlines())
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n{body.strip()}\n{README_END}{tail}"


def _training_dir(plots_dir: Path) -> Path | None:
    curves = plots_dir.with_name(plots_dir.name + "_training")
    return curves if curves.is_dir() else None


if __name__ == "__main__":
    main()
