"""One table of every head's results, grouped by dataset, backbone and image size.

Reads the metrics payloads the head stages write (and PLUME ablation files, one run per
variant), groups the runs and renders their rows as Markdown: one table per metric (AUROC,
then AUPR and FPR at 95% TPR where the metrics files hold them), the mean beside the
setting. ``pipeline.report.page`` draws the same rows, with ROC and training curves, as a
self-contained HTML page.

What a head's rows, title and settings say is its own report module's business
(``pipeline/report/heads/<name>.py``, found through ``pipeline.report.heads``); a head
without one still gets a row of its AUROCs. The head modules read AUROC; the other metrics'
rows are theirs too, read from a view of the payload with that metric in AUROC's place
(``metric_run``), so that every metric's table has the same rows in the same order.
Published figures come from ``paper_results.json`` (``pipeline.report.published``); they
only appear for CIFAR-10's AUROC table and always carry a tag naming the paper, whose
backbone and protocol are spelled out in the notes under the table.

Runs of the normal-vs-anomalies protocol (an anomaly folder) make tables of heads x defect
types, with an Overall column (every anomaly against the normal test images) read, like the
other metrics, from a view of the payload with its ``overall`` in the mean's place
(``overall_run``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline import metrics_file
from pipeline.files import safe_filename
from pipeline.errors import PipelineError
from pipeline.report import heads
from pipeline.report.published import has_published_column
from pipeline.report.robustness import RobustnessRow, markdown_section, robustness_row
from pipeline.report.rows import MISSING, Row, Run, other_rows, plural

PUBLISHED_HEADER = "published (paper's backbone & protocol, not ours)"
RESIZE_WORDS = {"resize": "resized straight to {size}x{size}",
                "resize_crop": "short side resized to {size}*256/224, centre crop {size}x{size}"}
NORMALISATION_WORDS = {"imagenet": "ImageNet mean/std normalisation", "inception": "inputs scaled to [-1, 1]",
                       "none": "no normalisation"}


@dataclass(frozen=True)
class Metric:
    """A metric of the metrics files (``key``, a fraction per class and for the mean), as the
    report names it (``name``) and says what it means (``words``)."""

    key: str
    name: str
    label: str
    words: str


METRICS = (
    Metric("auroc", "AUROC", "AUROC (%)", "AUROC in percent, higher is better (50 is chance)."),
    Metric("aupr", "AUPR", "AUPR (%)", "AUPR (average precision) in percent, anomalies as the positive class, "
           "higher is better (chance is the share of anomalies in the test set, 90% with ten classes "
           "one-vs-all)."),
    Metric("fpr_at_95_tpr", "FPR@95%TPR", "FPR@95%TPR (%, lower is better)",
           "FPR at 95% TPR in percent: the share of normal test images flagged at the threshold that finds 95% "
           "of the anomalies; lower is better."),
    # The patch heads' anomaly maps, graded where the test images have masks (the metrics file's
    # ``pixel`` section; the mean is over the defect types with masks).
    Metric("pixel_auroc", "pixel AUROC", "Pixel AUROC (%)",
           "Pixel AUROC in percent: every pixel of the test images with masks, the anomaly map's value against the "
           "mask, higher is better (50 is chance); the mean is over the defect types with masks. Only the heads that "
           "make anomaly maps (patchcore, padim) have it."),
    Metric("aupro", "AUPRO", "AUPRO to 30% FPR (%)",
           "AUPRO in percent (MVTec AD's localisation metric): the mean overlap of each defect region with the map "
           "above a threshold, integrated over the normal pixels' false-positive rate from 0 to 30% and divided by "
           "0.3, higher is better; the mean is over the defect types with masks."),
)
PIXEL_KEYS = ("pixel_auroc", "aupro")
AUROC = METRICS[0]


ONE_VS_ALL = "one-vs-all"  # the protocol of metrics files that name none (pipeline.protocol's names)
NORMAL_VS_ANOMALIES = "normal-vs-anomalies"


@dataclass
class Group:
    """Runs on the same features: dataset, backbone, image size (and preprocessing, since
    features made with another preprocessing are other features), under one protocol (whose
    columns are classes, or defect types)."""

    dataset: str
    backbone: str
    image_size: Any
    preprocessing: str
    protocol: str = ONE_VS_ALL
    runs: list[Run] = field(default_factory=list)

    @property
    def published_column(self) -> bool:
        return has_published_column({"dataset": self.dataset, "protocol": self.protocol})

    def heading(self) -> str:
        protocol = "" if self.protocol == ONE_VS_ALL else f", {self.protocol}"
        # The normalisation tells apart tables of one backbone whose features were made two ways.
        parts = self.preprocessing.split("/")
        normalisation = f", {parts[-1]} normalisation" if len(parts) == 3 and parts[-1] != "None" else ""
        return f"{self.dataset}: {self.backbone} @ {self.image_size}x{self.image_size}{protocol}{normalisation}"


# --- reading --------------------------------------------------------------------------------

def ablation_payloads(paths: list[str | Path]) -> dict[str, dict]:
    """Variants from one or more ablation metrics files (python -m stages.plume_ablation) or
    single-variant PLUME metrics files (python -m stages.plume), in order."""
    payloads: dict[str, dict] = {}
    for path in paths:
        data = metrics_file.read(path)
        about = data.get("about", {})
        if "variants" not in data and about.get("head") == "plume" and "per_class" in data:
            data = {"about": about, "variants": {f"{about['perturbation']}/{about['guidance']}": data}}
        if "variants" not in data:
            raise PipelineError(f"{path} is not a PLUME metrics file (no 'variants' section, no PLUME head).")
        for name, payload in data["variants"].items():
            about = {**data["about"], **payload.get("about", {})}
            payloads[name] = {**payload, "about": about}
    return payloads


def read_payload(path: str | Path) -> dict:
    """A metrics file as written by the head stages, or a PipelineError saying why it is not one."""
    path = Path(path)
    try:
        data = metrics_file.read(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PipelineError(f"cannot read {path} as JSON: {error}") from error
    about = data.get("about") if isinstance(data, dict) else None
    has_rows = isinstance(data, dict) and ("variants" in data or ("per_class" in data and "mean" in data))
    if not isinstance(about, dict) or "head" not in about or not has_rows or not _aurocs_present(data):
        raise PipelineError(f"{path} is not a metrics payload of this pipeline: expected an 'about' section "
                            f"naming the head and 'per_class' and 'mean' with an 'auroc' each (or 'variants' of "
                            f"those), as written by python -m stages.knn, stages.plume, stages.anomem or "
                            f"stages.plume_ablation.")
    return data


def _aurocs_present(data: dict) -> bool:
    """Every table cell will find its AUROC (else a KeyError deep in the rendering)."""
    parts = data["variants"].values() if "variants" in data else [data]
    try:
        return all(isinstance(p["mean"]["auroc"], (int, float))
                   and all(isinstance(m["auroc"], (int, float)) for m in p["per_class"].values()) for p in parts)
    except (KeyError, TypeError, AttributeError):
        return False


def runs_of(path: str | Path, plots_dir: Path | None = None, curves_dir: Path | None = None) -> list[Run]:
    """The runs of a metrics file; an ablation file gives one per variant, whose curves
    stages.plume_ablation writes under ``<plots_dir>/<perturbation>_<guidance>/{roc,training}``."""
    path = Path(path)
    data = read_payload(path)
    if "variants" not in data:
        return [Run(data["about"], data, path, roc_dir=plots_dir, curves_dir=curves_dir)]
    runs = []
    for name, payload in ablation_payloads([path]).items():
        # The file's shared 'about' leaves out what tells the variants apart: their names say it.
        perturbation, _, guidance = name.partition("/")
        payload["about"] = {**payload["about"], "perturbation": perturbation, "guidance": guidance}
        # Named as stages.plume_ablation names it (a name read from a file never leads outside plots_dir).
        variant_dir = plots_dir / safe_filename(name.replace("/", "_")) if plots_dir is not None else None
        runs.append(Run(payload["about"], payload, path, name=name,
                        roc_dir=variant_dir / "roc" if variant_dir is not None else None,
                        curves_dir=variant_dir / "training" if variant_dir is not None else None))
    return runs


def discover_plots(path: Path) -> tuple[Path | None, Path | None]:
    """Where the stages' --plots and --curves folders sit for a metrics file: dvc.yaml writes
    metrics/<name>.json beside plots/<name> and plots/<name>_training; the README's result files
    sit beside plots/<name> in their own folder."""
    for base in (path.parent.parent / "plots", path.parent / "plots"):
        if (base / path.stem).is_dir():
            curves = base / f"{path.stem}_training"
            return base / path.stem, curves if curves.is_dir() else None
    return None, None


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups in order of first appearance, runs within a group in the order of their heads."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        a = run.about
        key = (str(a.get("dataset")), str(a.get("backbone")), a.get("image_size"), str(a.get("preprocessing")),
               str(a.get("protocol", ONE_VS_ALL)))
        groups.setdefault(key, Group(*key)).runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda r: head_order(r.head))
    return list(groups.values())


def metric_payload(data: Any, key: str) -> Any:
    """A payload as the head report modules read it, with metric ``key`` in AUROC's place: in
    every dict of figures (one with an ``auroc``), ``auroc`` becomes its ``key`` (NaN where it
    has none: the cell reads "–"), ``auroc_std`` its ``key``_std (or nothing), and likewise
    ``best_epoch_auroc``. Everything else is kept, so a head's rows come out the same."""
    if isinstance(data, list):
        return [metric_payload(item, key) for item in data]
    if not isinstance(data, dict):
        return data
    if not isinstance(data.get("auroc"), (int, float)):
        return {name: value if name == "about" else metric_payload(value, key) for name, value in data.items()}
    figures = {name: value for name, value in data.items() if not name.startswith(("auroc", "best_epoch_auroc"))}
    for prefix in ("", "best_epoch_"):
        if f"{prefix}auroc" in data:
            figures[f"{prefix}auroc"] = data.get(f"{prefix}{key}", math.nan)
            if f"{prefix}{key}_std" in data:
                figures[f"{prefix}auroc_std"] = data[f"{prefix}{key}_std"]
    return figures


def with_pixel_figures(payload: dict) -> dict:
    """The payload with its ``pixel`` section's figures (pixel AUROC, AUPRO) beside the image
    figures of the same defect type, the mean and the overall, so that they read like them."""
    pixel = payload.get("pixel")
    if not isinstance(pixel, dict):
        return payload
    merged = dict(payload)
    merged["per_class"] = {name: {**figures, **pixel.get("per_class", {}).get(name, {})}
                           for name, figures in payload["per_class"].items()}
    for section in ("mean", "overall"):
        if isinstance(payload.get(section), dict):
            merged[section] = {**payload[section], **pixel.get(section, {})}
    return merged


def metric_run(run: Run, metric: Metric) -> Run:
    """The run as its head's report module should read it to give rows of ``metric``."""
    if metric.key == "auroc":
        return run
    payload = with_pixel_figures(run.payload) if metric.key in PIXEL_KEYS else run.payload
    return dataclasses.replace(run, payload=metric_payload(payload, metric.key))


def overall_payload(data: Any) -> Any:
    """A payload (normal-vs-anomalies) as the head report modules read it to give each row's
    Overall figure: in every section with figures by class and a ``mean``, the mean's figures
    are replaced by its ``overall``'s (every anomaly against the normal test images), or NaN
    where the section has none (the cell reads "–"). The keys stay the mean's, so the head
    modules give the same rows."""
    if isinstance(data, list):
        return [overall_payload(item) for item in data]
    if not isinstance(data, dict):
        return data
    view = {name: value if name == "about" else overall_payload(value) for name, value in data.items()}
    if isinstance(data.get("mean"), dict) and "auroc" in data["mean"]:
        overall = data.get("overall", {})
        view["mean"] = {name: overall.get(name, math.nan) for name in data["mean"]}
    return view


def overall_run(run: Run) -> Run:
    return dataclasses.replace(run, payload=overall_payload(run.payload))


# --- heads --------------------------------------------------------------------------------

def head_report(head: str) -> ModuleType | None:
    """The report module of a head (``pipeline/report/heads/<name>.py``), or None for a head
    without one."""
    return heads.report_module(head)


def display_name(head: str) -> str:
    report = head_report(head)
    return report.DISPLAY_NAME if report is not None else head


def head_order(head: str) -> float:
    """Where a head's runs sit in a group: by the heads' ``ORDER``, unknown heads last."""
    report = head_report(head)
    return report.ORDER if report is not None else math.inf


def run_title(run: Run) -> str:
    """How the run is named above its charts."""
    report = head_report(run.head)
    return report.title(run.about) if report is not None else run.head


def roc_curves(head: str) -> str:
    """Which model the ROC curves of a head's run show."""
    report = head_report(head)
    return report.ROC_CURVES if report is not None else "per class"


def run_rows(run: Run, extra: str) -> list[Row]:
    """The rows of a run: its head's (``rows(run, extra)``), or the generic row of an unknown head."""
    report = head_report(run.head)
    return report.rows(run, extra) if report is not None else other_rows(run, extra)


# --- rows -----------------------------------------------------------------------------------

def head_settings(about: dict) -> dict[str, str]:
    """A run's settings in words: those its metrics file records (``setting_words``, written by
    the head stage from the head's declared parameters, ``pipeline.declare``; older files get
    them from ``python -m pipeline.commands.describe_metrics``), and its seeds."""
    words = about.get("setting_words")
    settings = {str(k): str(v) for k, v in words.items()} if isinstance(words, dict) else {}
    if "seeds" in about:
        settings["seeds"] = plural(about["seeds"], "seed")
    return settings


def _join(settings: dict[str, str]) -> str:
    return ", ".join(settings.values())


def varying_settings(runs: list[Run]) -> dict[str, set[str]]:
    """Per head, the setting keys whose values differ between the group's runs of that head."""
    by_head: dict[str, list[dict[str, str]]] = {}
    for run in runs:
        by_head.setdefault(run.head, []).append(head_settings(run.about))
    return {head: {k for s in all_settings for k in s if len({x.get(k) for x in all_settings}) > 1}
            for head, all_settings in by_head.items()}


def distinguishing(run: Run, varying: dict[str, set[str]]) -> str:
    """The run's settings that other runs of its head in the group do not share."""
    return _join({k: v for k, v in head_settings(run.about).items() if k in varying.get(run.head, ())})


def group_rows(group: Group, metric: Metric = AUROC) -> list[Row]:
    """The group's rows of ``metric``: the same rows, in the same order, for every metric."""
    varying = varying_settings(group.runs)
    seen, rows = [], []
    for run in group.runs:
        differing = distinguishing(run, varying)
        extra = f"; {differing}" if differing else ""
        by_auroc = run_rows(run, extra)
        shown = by_auroc if metric.key == "auroc" else run_rows(metric_run(run, metric), extra)
        overall = run_rows(overall_run(metric_run(run, metric)), extra) if "overall" in run.payload else shown
        if not len(shown) == len(overall) == len(by_auroc):
            raise PipelineError(f"{run.source}: the {run.head} report module gives {len(by_auroc)} AUROC rows but "
                                f"{len(shown)} {metric.name} rows ({len(overall)} overall).")
        if "overall" in run.payload:
            for row, whole in zip(shown, overall):
                row.overall = whole.mean
        for key, row in zip(by_auroc, shown):
            # Runs that share a part (AnoMem's one-class run is repeated in every semi-supervised
            # file) would give the very same row twice.
            if key not in seen:
                seen.append(key)
                rows.append(row)
    return rows


def group_robustness(group: Group) -> list[RobustnessRow]:
    """The group's runs scored on corrupted test sets too (--shift), one row each."""
    varying = varying_settings(group.runs)
    rows = []
    for run in group.runs:
        setting = distinguishing(run, varying)
        name = display_name(run.head) + (f" ({setting})" if setting else "")
        rows.append(robustness_row(run, run_title(run), setting, name))
    return [row for row in rows if row is not None]


def has_figures(rows: list[Row]) -> bool:
    """Whether any cell of these rows holds a figure (not every one "–")."""
    return any(not f.missing for row in rows for f in (row.mean, *row.per_class.values()))


def group_metrics(group: Group) -> dict[Metric, list[Row]]:
    """The rows of each metric the group's metrics files hold (AUROC always, the others where
    some row has them)."""
    tables = {metric: group_rows(group, metric) for metric in METRICS}
    return {metric: rows for metric, rows in tables.items() if metric.key == "auroc" or has_figures(rows)}


def group_classes(rows: list[Row]) -> list[str]:
    """Every class of any row, in order of first appearance."""
    classes: dict[str, None] = {}
    for row in rows:
        classes.update(dict.fromkeys(row.per_class))
    return list(classes)


# --- captions and notes ---------------------------------------------------------------------

def preprocessing_words(preprocessing: str, size: Any) -> str:
    """``resize/bilinear/imagenet`` in words."""
    parts = preprocessing.split("/")
    if len(parts) != 3:
        return preprocessing
    resize, interpolation, normalisation = parts
    return ", ".join([RESIZE_WORDS.get(resize, resize).format(size=size), f"{interpolation} interpolation",
                      NORMALISATION_WORDS.get(normalisation, normalisation)])


def protocol_words(group: Group) -> str:
    if group.protocol == NORMAL_VS_ANOMALIES:
        normal = ", ".join(sorted({str(run.about.get("normal")) for run in group.runs}))
        return (f"each head trains once on the normal training images (normal: {normal}) and scores the whole "
                f"test split; each defect-type column grades that type's test images against the normal test "
                f"images, Mean is the mean over defect types, Overall grades every anomaly together against the "
                f"normal test images (for AUROC, the mean over defect types weighted by their numbers of images)")
    return "each class in turn is normal, the head trains on its training images and scores the whole test set"


def caption(group: Group) -> str:
    lines = [f"Dataset {group.dataset}; backbone {group.backbone} (frozen, pooled features); "
             f"{group.image_size}x{group.image_size} input; preprocessing {group.preprocessing} "
             f"({preprocessing_words(group.preprocessing, group.image_size)}); protocol {group.protocol} "
             f"({protocol_words(group)}). Figures in percent; ± is the standard deviation of the AUROC over seeds "
             f"(PLUME, AnoMem one-class) or draws of labelled anomalies (AnoMem semi-supervised) where there are "
             f"several; AUPR and FPR@95%TPR are means over seeds, without a spread. {MISSING}: the metrics file "
             f"holds no such figure for that row."]
    varying = varying_settings(group.runs)
    seen: set[str] = set()
    for run in group.runs:
        if run.head in seen:
            continue
        seen.add(run.head)
        shared = {k: v for k, v in head_settings(run.about).items() if k not in varying.get(run.head, ())}
        if shared:
            lines.append(f"{display_name(run.head)}: {_join(shared)}.")
    lines.append("Sources: " + ", ".join(dict.fromkeys(str(run.source) for run in group.runs)) + ".")
    return " ".join(lines)


def published_notes(rows: list[Row]) -> dict[str, str]:
    """The paper, backbone and protocol behind each tag used in the published column."""
    notes: dict[str, str] = {}
    for row in rows:
        if row.published is not None:
            notes.setdefault(row.published.tag, row.published.note + " Copied from the paper, not measured here.")
    return notes


# --- Markdown -------------------------------------------------------------------------------

def _md(text: str) -> str:
    """A Markdown table cell: a '|' would end the cell, a newline the row."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


# Where the columns sit: the mean beside the setting, then the published figure (AUROC only,
# the papers' metric), then the classes.
HEAD_COL, SETTING_COL, MEAN_COL, PUBLISHED_COL = 0, 1, 2, 3


def published_shown(group: Group, metric: Metric = AUROC) -> bool:
    """The published column: CIFAR-10's AUROC table (the papers publish AUROC)."""
    return group.published_column and metric.key == "auroc"


def table_cells(group: Group, rows: list[Row], classes: list[str],
                metric: Metric = AUROC) -> tuple[list[str], list[list[str]]]:
    """Header and body cells as plain text, shared by the Markdown and HTML renderings:
    Head, Setting, Mean, (published), (Overall: normal-vs-anomalies), then the classes."""
    published = published_shown(group, metric)
    overall = any(row.overall is not None for row in rows)
    header = ["Head", "Setting", "Mean", *([PUBLISHED_HEADER] if published else []), *(["Overall"] if overall else []),
              *classes]
    body = []
    for row in rows:
        cells = [row.head, row.setting, row.mean.percent()]
        if published:
            cells.append(row.published.text() if row.published is not None else "")
        if overall:
            cells.append(row.overall.percent() if row.overall is not None else MISSING)
        cells.extend(row.per_class[c].percent() if c in row.per_class else MISSING for c in classes)
        body.append(cells)
    return header, body


def markdown_table(group: Group, rows: list[Row], classes: list[str], metric: Metric) -> str:
    header, body = table_cells(group, rows, classes, metric)
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    for cells in body:
        cells = [_md(c) for c in cells]
        if cells[MEAN_COL] != MISSING:
            cells[MEAN_COL] = f"**{cells[MEAN_COL]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_group(group: Group) -> str:
    tables = group_metrics(group)
    rows = tables[AUROC]
    classes = group_classes(rows)
    notes = [f"- [{tag}] {_md(text)}" for tag, text in published_notes(rows).items()]
    parts = [f"## {_md(group.heading())}", _md(caption(group)), markdown_table(group, rows, classes, AUROC)]
    if notes:
        parts.append("Published figures (the paper's backbone and protocol, not this project's):\n\n"
                     + "\n".join(notes))
    for metric, metric_rows in tables.items():
        if metric != AUROC:
            parts += [f"### {_md(metric.label)}, {_md(group.heading())}", _md(metric.words),
                      markdown_table(group, metric_rows, classes, metric)]
    robust = group_robustness(group)
    if robust:
        parts.append(markdown_section(robust, group.heading()))
    return "\n\n".join(parts) + "\n"


def markdown_report(groups: list[Group]) -> str:
    intro = ("# Results\n\nAUROC (%) of every head, one-vs-all, per class and the mean over classes (for an anomaly "
             "folder, normal-vs-anomalies: per defect type, the mean and overall), one table per "
             "dataset, backbone and image size, the mean beside the setting; under each, the same rows' AUPR and "
             "FPR at 95% TPR (lower is better) where the metrics files hold them, and for runs scored on corrupted test "
             "sets too (--shift) their robustness, SD against SPD. Made by "
             "`python -m pipeline.report build`; ROC and training curves are in the HTML page built beside this "
             "file.\n")
    return "\n".join([intro, *(markdown_group(g) for g in groups)])
