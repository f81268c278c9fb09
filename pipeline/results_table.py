"""One table of every head's results, grouped by dataset, backbone and image size.

Reads the metrics payloads the head stages write (kNN, PLUME, AnoMem, PLUME ablation files)
into rows of AUROC per class, and renders them as Markdown. ``pipeline.results_page`` draws
the same rows, with ROC and training curves, as a self-contained HTML page.

Published figures come from ``paper_results.json`` through the helpers of
``pipeline.published``; they only appear for CIFAR-10 and always carry a tag naming the paper,
whose backbone and protocol are spelled out in the notes under the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.published import (GUIDANCE_NAMES, PLUME_NAMES, ablation_payloads, anomem_paper, gamma_key,
                                has_published_column, knn_paper, paper_results, plume_paper_mean)

HEAD_NAMES = {"knn": "kNN (DN2)", "plume": "PLUME", "anomem": "AnoMem"}
HEAD_ORDER = {"knn": 0, "plume": 1, "anomem": 2}
PUBLISHED_HEADER = "published (paper's backbone & protocol, not ours)"
RESIZE_WORDS = {"resize": "resized straight to {size}x{size}",
                "resize_crop": "short side resized to {size}*256/224, centre crop {size}x{size}"}
NORMALISATION_WORDS = {"imagenet": "ImageNet mean/std normalisation", "inception": "inputs scaled to [-1, 1]",
                       "none": "no normalisation"}


@dataclass(frozen=True)
class Figure:
    """An AUROC as a fraction; ``std`` over seeds or draws, None for a single run."""

    value: float
    std: float | None = None

    def percent(self) -> str:
        text = f"{100 * self.value:.1f}"
        return text if self.std is None else f"{text} ± {100 * self.std:.1f}"


@dataclass(frozen=True)
class Published:
    """A figure copied from a paper (percent, as printed there) and the tag of its note."""

    value: float
    tag: str

    def text(self) -> str:
        return f"{self.value:.1f} [{self.tag}]"


@dataclass
class Row:
    head: str
    setting: str
    per_class: dict[str, Figure]
    mean: Figure
    published: Published | None = None


@dataclass
class Run:
    """One trained configuration: a metrics file, or one variant of an ablation file."""

    about: dict
    payload: dict
    source: Path
    name: str = ""  # the ablation variant ("linear/contrastive"), empty otherwise
    roc_dir: Path | None = None
    curves_dir: Path | None = None

    @property
    def head(self) -> str:
        return str(self.about.get("head"))

    @property
    def title(self) -> str:
        """How the run is named above its charts."""
        if self.head == "plume":
            return f"PLUME {variant_label(self.about)}"
        if self.head == "knn":
            return f"kNN (DN2), k = {self.about.get('k')}"
        if self.head == "anomem":
            return f"AnoMem one-class, {anomem_setting(self.about)}"
        return HEAD_NAMES.get(self.head, self.head)


@dataclass
class Group:
    """Runs on the same features: dataset, backbone, image size (and preprocessing, since
    features made with another preprocessing are other features)."""

    dataset: str
    backbone: str
    image_size: Any
    preprocessing: str
    runs: list[Run] = field(default_factory=list)

    @property
    def published_column(self) -> bool:
        return has_published_column({"dataset": self.dataset})

    def heading(self) -> str:
        return f"{self.dataset}: {self.backbone} @ {self.image_size}x{self.image_size}"


# --- reading --------------------------------------------------------------------------------

def read_payload(path: str | Path) -> dict:
    """A metrics file as written by the head stages, or a PipelineError saying why it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
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
        variant_dir = plots_dir / name.replace("/", "_") if plots_dir is not None else None
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
    """Groups in order of first appearance, runs within a group ordered kNN, PLUME, AnoMem."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        a = run.about
        key = (str(a.get("dataset")), str(a.get("backbone")), a.get("image_size"), str(a.get("preprocessing")))
        groups.setdefault(key, Group(*key)).runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda r: HEAD_ORDER.get(r.head, len(HEAD_ORDER)))
    return list(groups.values())


# --- rows -----------------------------------------------------------------------------------

def variant_label(about: dict) -> str:
    perturbation, guidance = about.get("perturbation"), about.get("guidance")
    guidance_words = "no guidance" if guidance == "none" else f"{GUIDANCE_NAMES.get(guidance, guidance)} guidance"
    return f"{PLUME_NAMES.get(perturbation, perturbation)}, {guidance_words}"


def plural(count: Any, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def anomem_setting(about: dict) -> str:
    scales = "multi-scale" if about.get("scales") == "multi" else "last scale"
    return f"{scales}, {about.get('memory')} memory"


def _figures(per_class: dict, key: str, std_key: str | None) -> dict[str, Figure]:
    return {name: Figure(m[key], m.get(std_key) if std_key else None) for name, m in per_class.items()}


def knn_rows(run: Run, extra: str) -> list[Row]:
    p, about = run.payload, run.about
    published = knn_paper() if has_published_column(about) else None
    return [Row(HEAD_NAMES["knn"], f"k = {about.get('k')}{extra}", _figures(p["per_class"], "auroc", None),
                Figure(p["mean"]["auroc"]), Published(published, "PANDA") if published is not None else None)]


def plume_rows(run: Run, extra: str) -> list[Row]:
    """Two rows, named apart: the model after the last epoch, and the best test AUROC over the
    epochs (the paper's protocol, which picks the epoch on the test set). The paper's figure
    sits beside the latter, the row with the same protocol."""
    p, about = run.payload, run.about
    several = (about.get("seeds") or 1) > 1
    label = variant_label(about)
    final = Row(HEAD_NAMES["plume"], f"{label}; final epoch{extra}",
                _figures(p["per_class"], "auroc", "auroc_std" if several else None),
                Figure(p["mean"]["auroc"], p["mean"].get("auroc_std") if several else None))
    if "best_epoch_auroc" not in p["mean"]:
        return [final]
    paper = plume_paper_mean(str(about.get("perturbation")), str(about.get("guidance"))) if has_published_column(about) else None
    best = Row(HEAD_NAMES["plume"], f"{label}; best epoch (picked on the test set){extra}",
               _figures(p["per_class"], "best_epoch_auroc", "best_epoch_auroc_std" if several else None),
               Figure(p["mean"]["best_epoch_auroc"], p["mean"].get("best_epoch_auroc_std") if several else None),
               Published(paper, "PLUME") if paper is not None else None)
    return [final, best]


def _anomem_one_class_key(about: dict) -> str | None:
    if about.get("scales") == "multi" and about.get("memory") == "learnt":
        return "one_class"
    return {("last", "learnt"): "memory_last_scale", ("last", "kmeans"): "kmeans_last_scale"}.get(
        (about.get("scales"), about.get("memory")))


def _anomem_published(about: dict, key: str | None) -> Published | None:
    value = anomem_paper(key) if key and has_published_column(about) else None
    return Published(value, "AnoMem") if value is not None else None


STAGE_A = {"retrain": ", stage A retrained with the anomalies (paper)",
           "reuse": ", stage B only on the one-class stage A"}


def anomem_rows(run: Run, extra: str) -> list[Row]:
    """One-class (std over seeds), each semi-supervised gamma (std over draws) and kNN on the
    same training images, the like-for-like baseline the stage computes."""
    p, about = run.payload, run.about
    several = (about.get("seeds") or 1) > 1
    rows = [Row(HEAD_NAMES["anomem"], f"one-class; {anomem_setting(about)}{extra}",
                _figures(p["per_class"], "auroc", "auroc_std" if several else None),
                Figure(p["mean"]["auroc"], p["mean"].get("auroc_std") if several else None),
                _anomem_published(about, _anomem_one_class_key(about)))]
    for gamma, semi in p.get("semi_supervised", {}).items():
        draws = semi.get("draws", 1) > 1
        rows.append(Row(HEAD_NAMES["anomem"],
                        f"semi-supervised, gamma = {gamma}, {plural(semi.get('draws'), 'draw')}"
                        f"{STAGE_A.get(semi.get('stage_a'), '')}; {anomem_setting(about)}{extra}",
                        _figures(semi["per_class"], "auroc", "auroc_std" if draws else None),
                        Figure(semi["mean"]["auroc"], semi["mean"].get("auroc_std") if draws else None),
                        _anomem_published(about, gamma_key(gamma))))
    same = p.get("knn_same_rows")
    if same:
        rows.append(Row(HEAD_NAMES["knn"], f"k = {same.get('k')}, AnoMem's training images (those with views)",
                        _figures(same["per_class"], "auroc", None), Figure(same["mean"]["auroc"])))
    return rows


def other_rows(run: Run, extra: str) -> list[Row]:
    """A head this module does not know: its final AUROC, so that it is not left out."""
    p = run.payload
    several = (run.about.get("seeds") or 1) > 1
    return [Row(run.head, extra.lstrip("; ") or "-",
                _figures(p["per_class"], "auroc", "auroc_std" if several else None),
                Figure(p["mean"]["auroc"], p["mean"].get("auroc_std") if several else None))]


ROWS = {"knn": knn_rows, "plume": plume_rows, "anomem": anomem_rows}


# Settings that describe a head's run besides its variant; those shared by every run of the head
# in a group go to the caption, the others to the rows, so that two rows never read the same.
SETTINGS = {
    "plume": {"lam": "lambda = {}", "epochs": "{} epochs", "dim": "D = {}", "batch_mode": "batch mode {}",
              "identity_loss": "identity loss {}", "lr": "lr {}", "seeds": "{}"},
    "anomem": {"slots": "{} memory slots", "proj_dim": "{} dims", "beta": "beta {}", "epochs": "{} epochs (stage A)",
               "sup_epochs": "{} epochs (stage B)", "seeds": "{}",
               "views": "trained on the {} training images with views"},
}


def head_settings(about: dict) -> dict[str, str]:
    about = dict(about)
    if "slots_intermediate" in about:
        about["slots"] = f"{about['slots_intermediate']} + {about.get('slots_last')}"
    if "seeds" in about:
        about["seeds"] = plural(about["seeds"], "seed")
    formats = SETTINGS.get(str(about.get("head")), {})
    return {k: fmt.format(about[k]) for k, fmt in formats.items() if k in about}


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


def group_rows(group: Group) -> list[Row]:
    varying = varying_settings(group.runs)
    rows = []
    for run in group.runs:
        differing = distinguishing(run, varying)
        for row in ROWS.get(run.head, other_rows)(run, f"; {differing}" if differing else ""):
            # Runs that share a part (AnoMem's one-class run is repeated in every semi-supervised
            # file) would give the very same row twice.
            if row not in rows:
                rows.append(row)
    return rows


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


def caption(group: Group) -> str:
    protocols = sorted({str(run.about.get("protocol", "one-vs-all")) for run in group.runs})
    lines = [f"Dataset {group.dataset}; backbone {group.backbone} (frozen, pooled features); "
             f"{group.image_size}x{group.image_size} input; preprocessing {group.preprocessing} "
             f"({preprocessing_words(group.preprocessing, group.image_size)}); protocol {', '.join(protocols)} "
             f"(each class in turn is normal, the head trains on its training images and scores the whole "
             f"test set). AUROC in percent; ± is the standard deviation over seeds (PLUME, AnoMem one-class) "
             f"or draws of labelled anomalies (AnoMem semi-supervised) where there are several."]
    varying = varying_settings(group.runs)
    seen: set[str] = set()
    for run in group.runs:
        if run.head in seen:
            continue
        seen.add(run.head)
        shared = {k: v for k, v in head_settings(run.about).items() if k not in varying.get(run.head, ())}
        if shared:
            lines.append(f"{HEAD_NAMES.get(run.head, run.head)}: {_join(shared)}.")
    lines.append("Sources: " + ", ".join(dict.fromkeys(str(run.source) for run in group.runs)) + ".")
    return " ".join(lines)


def published_notes(rows: list[Row]) -> dict[str, str]:
    """The paper, backbone and protocol behind each tag used in the published column."""
    paper = paper_results()
    texts = {
        "PANDA": f"PANDA paper, DN2 kNN without adaptation: {paper['panda']['backbone']}.",
        "PLUME": f"PLUME paper, table 1c (lambda = 5), mean over classes: {paper['plume']['backbone']}; "
                 f"{paper['plume']['protocol']}.",
        "AnoMem": f"AnoMem paper, mean over classes: {paper['anomem']['backbone']}.",
    }
    tags = dict.fromkeys(row.published.tag for row in rows if row.published is not None)
    return {tag: texts[tag] + " Copied from the paper, not measured here." for tag in tags}


# --- Markdown -------------------------------------------------------------------------------

def _md(text: str) -> str:
    """A Markdown table cell: a '|' would end the cell, a newline the row."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def table_cells(group: Group, rows: list[Row], classes: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and body cells as plain text, shared by the Markdown and HTML renderings."""
    header = ["Head", "Setting", *classes, "Mean"]
    if group.published_column:
        header.append(PUBLISHED_HEADER)
    body = []
    for row in rows:
        cells = [row.head, row.setting, *(row.per_class[c].percent() if c in row.per_class else "–" for c in classes),
                 row.mean.percent()]
        if group.published_column:
            cells.append(row.published.text() if row.published is not None else "")
        body.append(cells)
    return header, body


def markdown_group(group: Group) -> str:
    rows = group_rows(group)
    classes = group_classes(rows)
    header, body = table_cells(group, rows, classes)
    mean_col = len(header) - (2 if group.published_column else 1)
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    for cells in body:
        cells = [_md(c) for c in cells]
        cells[mean_col] = f"**{cells[mean_col]}**"
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- [{tag}] {_md(text)}" for tag, text in published_notes(rows).items()]
    parts = [f"## {_md(group.heading())}", _md(caption(group)), "\n".join(lines)]
    if notes:
        parts.append("Published figures (the paper's backbone and protocol, not this project's):\n\n"
                     + "\n".join(notes))
    return "\n\n".join(parts) + "\n"


def markdown_report(groups: list[Group]) -> str:
    intro = ("# Results\n\nAUROC (%) of every head, one-vs-all, per class and the mean over classes, one table per "
             "dataset, backbone and image size. Made by `python -m pipeline.report build`; ROC and training curves "
             "are in the HTML page built beside this file.\n")
    return "\n".join([intro, *(markdown_group(g) for g in groups)])
