"""The results as one self-contained HTML page: the tables of ``pipeline.report.table``, ROC
curves and training curves (PLUME, IGD) drawn as inline SVG. Nothing is fetched (no scripts, style
sheets or fonts from elsewhere), so the page reads the same offline and years later.

Each table sits in its own box, which scrolls when the classes do not fit (or the rows, past
the window's height), with the header row and the Head, Setting and Mean columns held in place
(CSS ``position: sticky``). Radio buttons at the
top of the page (CSS only, no script) switch every table between AUROC, AUPR and FPR at 95% TPR;
their labels sit above each table.

A run whose metrics file records a heat-map gallery (``about.gallery``: the gallery.json a
localising head's stage wrote, relative to the metrics file; ``pipeline.evaluate.write_gallery``)
gets, below the curves, a row per defect type (and one of normal images) of its highest- and
lowest-scoring test images with their anomaly maps, the PNGs embedded (base64) so the page
stands alone."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from pipeline.files import safe_filename
from pipeline.errors import PipelineError
from pipeline.report.robustness import html_section
from pipeline.report.svg_chart import Axis, Series, line_chart, padded_range
from pipeline.report.rows import MISSING, Row, Run
from pipeline.report.table import (AUROC, HEAD_COL, MEAN_COL, METRICS, ONE_VS_ALL, PUBLISHED_COL, SETTING_COL, Group,
                                   Metric, caption, distinguishing, group_classes, group_metrics, group_robustness,
                                   group_rows, published_notes, published_shown, roc_curves, run_title, table_cells,
                                   varying_settings)

STYLE = """
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 36px; } h3 { font-size: 15px; }
p.caption { max-width: 1200px; font-size: 13px; line-height: 1.45; }
/* A long table scrolls in a box no taller than the window, so that its sideways scroll bar is in sight. */
div.table-box { overflow: auto; max-width: 100%; max-height: 85vh; margin: 6px 0 8px; }
table { border-collapse: separate; border-spacing: 0; font-size: 12px; }
th, td { border-right: 1px solid #ccc; border-bottom: 1px solid #ccc; padding: 3px 6px; text-align: right;
         white-space: nowrap; background: #fff; }
tr:first-child > * { border-top: 1px solid #ccc; }
tr > :first-child { border-left: 1px solid #ccc; }
th { background: #f2f2f2; vertical-align: bottom; position: sticky; top: 0; z-index: 2; }
tr:hover > td { background: #f3f7fc; }
th.head, td.head, th.setting, td.setting { text-align: left; white-space: normal; }
/* Head, Setting and Mean stay in place while the classes scroll by. */
.head, .setting, .mean { position: sticky; z-index: 1; box-sizing: border-box; }
th.head, th.setting, th.mean { z-index: 3; }
.head { left: 0; width: 90px; min-width: 90px; }
.setting { left: 90px; width: 300px; min-width: 300px; }
.mean { left: 390px; width: 96px; min-width: 96px; box-shadow: inset -2px 0 0 #999; }
td.mean { font-weight: bold; }
td.missing { text-align: center; color: #999; }
td.published, th.published { background: #fff7e0; font-style: italic; color: #555; }
th.published { white-space: normal; min-width: 130px; max-width: 150px; }
p.metric-words { font-size: 12px; color: #444; margin: 4px 0; max-width: 1200px; }
div.metric-tabs { font-size: 12px; margin: 10px 0 4px; }
div.metric-tabs label { display: inline-block; border: 1px solid #aaa; border-radius: 4px; padding: 3px 10px;
                        margin-left: 4px; background: #f7f7f7; cursor: pointer; }
/* The radio buttons themselves are out of sight (fixed, so that choosing one never scrolls the page). */
input.metric-choice { position: fixed; top: 0; left: 0; opacity: 0; pointer-events: none; }
input.metric-choice ~ section div.view { display: none; }
ul.notes { font-size: 12px; max-width: 1200px; }
div.charts { display: flex; flex-wrap: wrap; gap: 12px; }
svg.chart { border: 1px solid #e4e4e4; background: #fff; font-size: 11px; }
svg.chart .title { font-size: 13px; font-weight: bold; } svg.chart .subtitle { fill: #555; }
svg.chart .axis { font-size: 12px; }
svg.heat text { font-size: 10px; } svg.heat .column { font-size: 11px; }
p.missing { font-size: 12px; color: #a33; }
div.gallery { display: flex; flex-wrap: wrap; gap: 8px; margin: 4px 0 12px; }
figure.map { margin: 0; width: 160px; font-size: 11px; }
figure.map img { width: 160px; height: 160px; display: block; border: 1px solid #e4e4e4; image-rendering: pixelated; }
figure.map figcaption { margin-top: 2px; line-height: 1.3; }
/* A gap between the highest-scoring images and the lowest. */
figure.map.first-low { margin-left: 18px; }
"""


# --- curves ---------------------------------------------------------------------------------

def class_of(path: Path, prefix: str) -> str:
    """``roc_<class>.json`` -> ``<class>`` (class names may hold any character but '/')."""
    return path.stem[len(prefix):]


def read_roc(path: Path) -> list[tuple[float, float]]:
    """ROC points as the stages write them ([{fpr, tpr}, ...]; {fpr: [...], tpr: [...]} also read)."""
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return [(float(f), float(t)) for f, t in zip(data["fpr"], data["tpr"], strict=True)]
        return [(float(p["fpr"]), float(p["tpr"])) for p in data]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PipelineError(f"{path} is not a ROC curve file ([{{fpr, tpr}}, ...]): {error}") from error


def read_training(path: Path) -> list[tuple[float, float]]:
    """Test AUROC per epoch, the mean over seeds (a training file holds every seed's records;
    with --curve-epochs only some epochs' records carry a test AUROC)."""
    try:
        by_epoch: dict[float, list[float]] = {}
        for record in json.loads(path.read_text()):
            if "test_auroc" in record or "epoch" not in record:
                by_epoch.setdefault(float(record["epoch"]), []).append(float(record["test_auroc"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PipelineError(f"{path} is not a training curve file ([{{epoch, test_auroc, ...}}, ...]): "
                            f"{error}") from error
    return [(epoch, sum(v) / len(v)) for epoch, v in sorted(by_epoch.items())]


def _files(folder: Path | None, prefix: str, classes: list[str]) -> list[tuple[str, Path]]:
    """(class, file) of the folder's curve files, in the order of the table's classes (whose
    file names the stages made safe with ``safe_filename``), then any others by name."""
    if folder is None or not folder.is_dir():
        return []
    expected = {folder / safe_filename(f"{prefix}{c}", ".json"): c for c in classes}
    found = {f: expected.get(f, class_of(f, prefix)) for f in folder.glob(f"{prefix}*.json")}
    known = [(c, f) for f, c in expected.items() if f in found]
    return known + sorted((c, f) for f, c in found.items() if f not in expected)


def _subtitles(run: Run, varying: dict[str, set[str]]) -> list[str]:
    """What tells this run apart from the group's other runs of its head, then the features."""
    a = run.about
    features = f"{a.get('dataset')}, {a.get('backbone')} @ {a.get('image_size')}, {a.get('preprocessing')}"
    differing = distinguishing(run, varying)
    return [differing, features] if differing else [features]


def roc_chart(run: Run, classes: list[str], varying: dict[str, set[str]]) -> str | None:
    files = _files(run.roc_dir, "roc_", classes)
    if not files:
        return None
    # The ROC file is the first seed's (or draw's), so its AUROC is only the table's with one run.
    single = (run.about.get("seeds") or 1) == 1
    per_class = run.payload.get("per_class", {})
    series = []
    for name, f in files:
        auroc = per_class.get(name, {}).get("auroc") if single else None
        series.append(Series(name if auroc is None else f"{name} (AUROC {100 * auroc:.1f})", read_roc(f)))
    title = f"{run_title(run)}: ROC ({roc_curves(run.head)}{'' if single else ', first seed'})"
    return line_chart(title, _subtitles(run, varying), Axis("false positive rate (normal images flagged)", 0, 1),
                      Axis("true positive rate (anomalies found)", 0, 1), series, "roc", chance_diagonal=True)


def training_chart(run: Run, classes: list[str], varying: dict[str, set[str]]) -> str | None:
    files = _files(run.curves_dir, "train_", classes)
    if not files:
        return None
    series = [Series(name, read_training(f)) for name, f in files]
    epochs = [x for s in series for x, _ in s.points]
    values = [y for s in series for _, y in s.points]
    seeds = run.about.get("seeds") or 1
    x_low, x_high = (min(epochs), max(epochs)) if epochs else (0, 1)
    x_high = x_high if x_high > x_low else x_low + 1  # one epoch still needs a width
    return line_chart(f"{run_title(run)}: test AUROC per epoch" + (f" (mean of {seeds} seeds)" if seeds > 1 else ""),
                      _subtitles(run, varying), Axis("epoch", x_low, x_high, integer=True),
                      Axis("test AUROC", *padded_range(values)), series, "training")


# --- heat-map galleries -----------------------------------------------------------------------

END_WORDS = {"high": "highest", "low": "lowest"}


def _mask_words(entry: dict) -> str:
    if not entry.get("mask_known"):
        return "no mask"
    return "mask outlined in cyan" if entry.get("mask_pixels") else "no defect in its mask"


def _gallery_figure(folder: Path, group: str, entry: dict, first_low: bool) -> str:
    """One image of a gallery with its caption; a file name that is not a plain name in the
    gallery's folder, or a missing file, gives a caption saying so."""
    end, rank, score = str(entry.get("end")), entry.get("rank"), entry.get("score")
    words = f"{group}: {END_WORDS.get(end, end)} #{rank}"
    if isinstance(score, (int, float)):
        words += f", score {score:.4g}"
    caption = f"{words}, {_mask_words(entry)}"
    file = str(entry.get("file", ""))
    classes = f"map {end}" + (" first-low" if first_low else "")
    if Path(file).name != file or file.startswith(".") or not (folder / file).is_file():
        return f'<figure class="{classes}"><figcaption>{escape(caption)} (image {escape(file)} missing)</figcaption></figure>'
    data = base64.b64encode((folder / file).read_bytes()).decode("ascii")
    return (f'<figure class="{classes}"><img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def gallery_section(run: Run, varying: dict[str, set[str]]) -> str:
    """The run's heat-map gallery (``about.gallery``), a row per group: the highest-scoring
    images, highest first, then the lowest, lowest first; "" for a run without one."""
    where = run.about.get("gallery")
    if not isinstance(where, str) or not where:
        return ""
    path = run.source.parent / where
    try:
        gallery = json.loads(path.read_text())
        groups, colours = gallery["groups"], gallery["colour_range"]
        low, high = float(colours["low"]), float(colours["high"])
        if not isinstance(groups, dict):
            raise TypeError("groups is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return (f'<p class="missing">No heat-map gallery for {escape(_run_name(run, varying))}: cannot read '
                f"{escape(str(path))} ({escape(str(error))}).</p>")
    normal = gallery.get("normal")
    seed = " (first seed)" if (run.about.get("seeds") or 1) > 1 else ""
    heading = f"{run_title(run)}: the highest- and lowest-scoring test images, with their anomaly maps{seed}"
    words = (f"{'; '.join(_subtitles(run, varying))}. Per defect type (and the normal test images, {normal}): its 3 "
             f"highest-scoring images, highest first, then its 3 lowest, lowest first. The anomaly map is drawn over "
             f"each image as the backbone saw it, in one colour range for every image here, from {low:.4g} (black) "
             f"to {high:.4g} (pale yellow), so the same colour is the same score; a ground-truth mask, where there "
             f"is one, is outlined in cyan.")
    parts = [f"<h3>{escape(heading)}</h3>", f'<p class="caption">{escape(words)}</p>']
    for group, entries in groups.items():
        if not isinstance(entries, list):
            continue
        ordered = sorted((e for e in entries if isinstance(e, dict)),
                         key=lambda e: (e.get("end") != "high", e.get("rank") or 0))
        figures = [_gallery_figure(path.parent, str(group), e, e.get("end") == "low" and e.get("rank") == 1)
                   for e in ordered]
        label = "normal test images" if group == normal else "defect type"
        parts.append(f"<h4>{escape(str(group))} ({label})</h4>\n<div class=\"gallery\">\n" + "\n".join(figures)
                     + "\n</div>")
    return "\n".join(parts)


# --- page -----------------------------------------------------------------------------------

COLUMN_CLASSES = {HEAD_COL: "head", SETTING_COL: "setting", MEAN_COL: "mean"}


def _cell(text: str, index: int, published: bool, tag: str = "td") -> str:
    classes = [COLUMN_CLASSES[index]] if index in COLUMN_CLASSES else []
    if published and index == PUBLISHED_COL:
        classes.append("published")
    if tag == "td" and text == MISSING:
        classes.append("missing")
    attr = f' class="{" ".join(classes)}"' if classes else ""
    return f"<{tag}{attr}>{escape(text)}</{tag}>"


def html_table(group: Group, rows: list[Row], classes: list[str], metric: Metric = AUROC) -> str:
    """One metric's table, in a box of its own that scrolls sideways, Head, Setting and Mean held."""
    header, body = table_cells(group, rows, classes, metric)
    published = published_shown(group, metric)
    lines = ['<div class="table-box">', "<table>",
             "<tr>" + "".join(_cell(h, i, published, "th") for i, h in enumerate(header)) + "</tr>"]
    lines += ["<tr>" + "".join(_cell(c, i, published) for i, c in enumerate(cells)) + "</tr>" for cells in body]
    lines += ["</table>", "</div>"]
    notes = published_notes(rows) if published else {}
    if notes:
        lines.append("<p>Published figures, with the paper's backbone and protocol, not this project's:</p>")
        lines.append('<ul class="notes">' + "".join(f"<li>[{escape(t)}] {escape(n)}</li>" for t, n in notes.items())
                     + "</ul>")
    return "\n".join(lines)


def _choice_id(metric: Metric) -> str:
    return f"metric-{metric.key}"


def metric_tabs(metrics: list[Metric]) -> str:
    """The labels of the page's metric radio buttons, above a table (every table's switch together)."""
    labels = "".join(f'<label for="{_choice_id(m)}">{escape(m.label)}</label>' for m in metrics)
    return f'<div class="metric-tabs">Table of: {labels}</div>'


def metric_views(group: Group, metrics: list[Metric]) -> str:
    """The group's table once per metric of the page, each in a view the radio buttons show or hide."""
    tables = group_metrics(group)
    classes = group_classes(tables[AUROC])
    views = []
    for metric in metrics:
        inner = (html_table(group, tables[metric], classes, metric) if metric in tables else
                 f'<p class="missing">No {escape(metric.name)} in these metrics files.</p>')
        views.append(f'<div class="view view-{metric.key}">\n<p class="metric-words">{escape(metric.words)}</p>\n'
                     f"{inner}\n</div>")
    return "\n".join(([metric_tabs(metrics)] if len(metrics) > 1 else []) + views)


def _charts(heading: str, charts: list[str]) -> str:
    return f"<h3>{escape(heading)}</h3>\n<div class=\"charts\">\n" + "\n".join(charts) + "\n</div>" if charts else ""


def _run_name(run: Run, varying: dict[str, set[str]]) -> str:
    differing = distinguishing(run, varying)
    return f"{run_title(run)}{f' ({differing})' if differing else ''} from {run.source}"


def html_group(group: Group, metrics: list[Metric] = (AUROC,)) -> str:
    classes = group_classes(group_rows(group))
    varying = varying_settings(group.runs)
    rocs = [c for c in (roc_chart(run, classes, varying) for run in group.runs) if c]
    trainings = [c for c in (training_chart(run, classes, varying) for run in group.runs) if c]
    missing = [_run_name(run, varying) for run in group.runs if run.roc_dir is None or not run.roc_dir.is_dir()]
    # One-vs-all: a line per normal class; normal-vs-anomalies: a ROC per defect type, one training.
    lines = "normal class" if group.protocol == ONE_VS_ALL else "defect type (against the normal test images)"
    trained = "normal class" if group.protocol == ONE_VS_ALL else "training (the whole test split)"
    robust = group_robustness(group)
    galleries = [g for g in (gallery_section(run, varying) for run in group.runs) if g]
    parts = [f"<section>\n<h2>{escape(group.heading())}</h2>", f'<p class="caption">{escape(caption(group))}</p>',
             metric_views(group, list(metrics)), html_section(robust, group.heading()) if robust else "",
             _charts(f"ROC curves, one line per {lines}", rocs),
             _charts(f"Training (heads trained by epochs): test AUROC after each epoch, one line per {trained}",
                     trainings), *galleries]
    if missing:
        parts.append(f'<p class="missing">No ROC curve files found for: {escape("; ".join(missing))}.</p>')
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def metric_choices(metrics: list[Metric]) -> tuple[str, str]:
    """The radio buttons (AUROC chosen) and the CSS that shows the chosen metric's tables and marks
    its labels; none for a single metric."""
    if len(metrics) < 2:
        return "", ""
    inputs = "\n".join(f'<input type="radio" name="metric" class="metric-choice" id="{_choice_id(m)}" '
                       f'aria-label="{escape(m.label)}"{" checked" if m == AUROC else ""}>' for m in metrics)
    css = []
    for m in metrics:
        chosen = f"#{_choice_id(m)}:checked ~ section"
        css += [f"{chosen} div.view-{m.key} {{ display: block; }}",
                f'{chosen} label[for="{_choice_id(m)}"] {{ background: #2b4a6f; border-color: #2b4a6f; color: #fff; }}',
                f'#{_choice_id(m)}:focus-visible ~ section label[for="{_choice_id(m)}"] '
                f"{{ outline: 2px solid #4a90d9; }}"]
    return inputs, "\n".join(css) + "\n"


def html_report(groups: list[Group]) -> str:
    shown = {metric for group in groups for metric in group_metrics(group)}
    metrics = [metric for metric in METRICS if metric in shown]
    intro = ("AUROC (%) of every head, one-vs-all, per class and the mean over classes (for an anomaly folder, "
             "normal-vs-anomalies: per defect type, the mean and overall): one table per dataset, "
             "backbone and image size, then the curves behind them. The buttons above each table switch every "
             "table to AUPR or FPR at 95% TPR (lower is better) where the metrics files hold them. Figures in the "
             "shaded column are copied from the papers (AUROC), with their own backbones and protocols; they were "
             "not measured here. Made by python -m pipeline.report build.")
    inputs, choice_css = metric_choices(metrics)
    body = "\n".join(html_group(g, metrics) for g in groups)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Results</title>\n'
            f"<style>{STYLE}{choice_css}</style>\n</head>\n<body>\n<h1>Results</h1>\n"
            f"<p class=\"caption\">{escape(intro)}</p>\n{inputs}\n{body}\n</body>\n</html>\n")
