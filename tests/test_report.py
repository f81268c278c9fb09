"""python -m pipeline.report build: one table of every head and class, Markdown and HTML."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.report.command import main as report_main

CIFAR = "imagefolder:cifar10-jpg"
CLASSES = ["airplane", "automobile", "<b>&"]


def about(dataset: str, head: str, **extra) -> dict:
    return {"dataset": dataset, "backbone": "efficientnet_lite0", "image_size": 224,
            "preprocessing": "resize/bilinear/imagenet", "protocol": "one-vs-all", "head": head, **extra}


def knn_payload(dataset: str = CIFAR, classes: list[str] = CLASSES) -> dict:
    aurocs = [0.91, 0.82, 0.73][:len(classes)]
    auprs = [0.991, 0.982, 0.973][:len(classes)]
    fprs = [0.25, 0.5, 0.75][:len(classes)]
    return {"mean": {"auroc": sum(aurocs) / len(aurocs), "aupr": sum(auprs) / len(auprs),
                     "fpr_at_95_tpr": sum(fprs) / len(fprs)},
            "per_class": {c: {"auroc": a, "aupr": p, "fpr_at_95_tpr": f}
                          for c, a, p, f in zip(classes, aurocs, auprs, fprs)},
            "about": about(dataset, "knn", k=2)}


def plume_payload(seeds: int = 3) -> dict:
    # AUPR and FPR of the final model only (means over seeds, no spread), as pipeline.evaluate writes them.
    per_class = {c: {"auroc": 0.61 + i / 10, "auroc_std": 0.012, "best_epoch_auroc": 0.66 + i / 10,
                     "best_epoch_auroc_std": 0.021, "aupr": 0.951 + i / 100, "fpr_at_95_tpr": 0.6 - i / 10}
                 for i, c in enumerate(CLASSES)}
    return {"mean": {"auroc": 0.71, "auroc_std": 0.004, "best_epoch_auroc": 0.76, "best_epoch_auroc_std": 0.007,
                     "aupr": 0.961, "fpr_at_95_tpr": 0.5, "best_epoch": 2.0},
            "per_class": per_class,
            "about": about(CIFAR, "plume", perturbation="linear", guidance="contrastive", lam=5.0, epochs=2,
                           dim="native", batch_mode="joint", identity_loss="sum", lr=0.001, seeds=seeds)}


def anomem_payload() -> dict:
    # AUPR and FPR for the one-class run only: the semi-supervised and kNN-on-the-same-images rows hold AUROC.
    return {"mean": {"auroc": 0.55, "auroc_std": 0.0, "aupr": 0.92, "fpr_at_95_tpr": 0.9},
            "per_class": {c: {"auroc": 0.55, "auroc_std": 0.0, "aupr": 0.92, "fpr_at_95_tpr": 0.9} for c in CLASSES},
            "semi_supervised": {"0.01": {"mean": {"auroc": 0.88, "auroc_std": 0.033},
                                         "per_class": {c: {"auroc": 0.88, "auroc_std": 0.044} for c in CLASSES},
                                         "draws": 2}},
            "knn_same_rows": {"k": 2, "mean": {"auroc": 0.77}, "per_class": {c: {"auroc": 0.77} for c in CLASSES}},
            "about": about(CIFAR, "anomem", scales="multi", memory="learnt", slots_intermediate=16, slots_last=8,
                           proj_dim=32, beta=2.0, epochs=2, sup_epochs=2, seeds=1, views=30)}


def ablation_payload() -> dict:
    variant = {"mean": {"auroc": 0.6, "best_epoch_auroc": 0.65, "auroc_std": 0.0, "best_epoch_auroc_std": 0.0},
               "per_class": {c: {"auroc": 0.6, "best_epoch_auroc": 0.65} for c in CLASSES}}
    shared = {k: v for k, v in plume_payload(seeds=1)["about"].items() if k not in ("perturbation", "guidance")}
    return {"variants": {"gaussian/none": variant, "linear/mean": variant}, "about": shared}


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def roc_file(folder: Path, name: str) -> None:
    write(folder / f"roc_{name}.json", [{"fpr": 0.0, "tpr": 0.0}, {"fpr": 0.2, "tpr": 0.7}, {"fpr": 1.0, "tpr": 1.0}])


def build(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(report_main, ["build", *args])
    return result.exit_code, result.output


def md_tables(markdown: str) -> list[list[list[str]]]:
    """Every Markdown table of a text, each as its rows of cells, the header row first."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in markdown.splitlines():
        if line.startswith("| "):
            if not previous.startswith(("| ", "|---")):
                tables.append([])
            tables[-1].append([cell.strip() for cell in line.strip("|").split(" | ")])
        previous = line
    return tables


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of the first table of a text (the AUROC table of a group)."""
    return md_tables(markdown)[0][1:]


def md_groups(markdown: str) -> list[str]:
    """The report's groups (their '## ' sections), each from its heading on."""
    return re.split(r"^## ", markdown, flags=re.M)[1:]


class _Views(HTMLParser):
    """The HTML page's tables by metric view: {metric key: [table [row [cell text]]]}; and the
    radio buttons and labels that switch them."""

    def __init__(self) -> None:
        super().__init__()
        self.views: dict[str, list[list[list[str]]]] = {}
        self.inputs: list[dict] = []
        self.labels: dict[str, str] = {}
        self.cell_classes: dict[str, list[tuple[str, str]]] = {}
        self._view, self._depth, self._cell, self._label = None, 0, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input":
            self.inputs.append(attrs)
        elif tag == "label":
            self._label = attrs["for"]
            self.labels[self._label] = ""
        elif tag == "div":
            if self._view is not None:
                self._depth += 1
            elif (attrs.get("class") or "").startswith("view view-"):
                self._view, self._depth = attrs["class"].split("view-")[1], 0
        elif self._view is not None and tag == "table":
            self.views.setdefault(self._view, []).append([])
        elif self._view is not None and tag == "tr":
            self.views[self._view][-1].append([])
        elif self._view is not None and tag in ("td", "th"):
            self._cell = (tag, attrs.get("class") or "")
            self.views[self._view][-1][-1].append("")

    def handle_endtag(self, tag):
        if tag == "label":
            self._label = None
        elif tag == "div" and self._view is not None:
            if self._depth == 0:
                self._view = None
            else:
                self._depth -= 1
        elif tag in ("td", "th") and self._cell is not None:
            self.cell_classes.setdefault(self._view, []).append(
                (self.views[self._view][-1][-1][-1], self._cell[1]))
            self._cell = None

    def handle_data(self, data):
        if self._label is not None:
            self.labels[self._label] += data
        if self._cell is not None:
            self.views[self._view][-1][-1][-1] += data


def html_views(page: str) -> _Views:
    parser = _Views()
    parser.feed(page)
    return parser


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The dvc.yaml layout: metrics/<name>.json beside plots/<name> (and _training for PLUME)."""
    write(tmp_path / "metrics" / "knn_efficientnet_lite0.json", knn_payload())
    write(tmp_path / "metrics" / "plume_efficientnet_lite0.json", plume_payload())
    write(tmp_path / "metrics" / "anomem_efficientnet_lite0.json", anomem_payload())
    for head in ("knn", "plume", "anomem"):
        for name in CLASSES:
            roc_file(tmp_path / "plots" / f"{head}_efficientnet_lite0", name)
    for name in CLASSES:
        write(tmp_path / "plots" / "plume_efficientnet_lite0_training" / f"train_{name}.json",
              [{"seed": s, "epoch": e, "ce": 0.5, "test_auroc": 0.5 + e / 10} for s in range(3) for e in (1, 2)])
    return tmp_path


def test_one_table_holds_every_head_and_class_with_std_and_labelled_paper_figures(project: Path) -> None:
    code, output = build(str(project / "metrics"), "--out-md", str(project / "r.md"), "--out-html",
                         str(project / "r.html"))
    assert code == 0, output
    markdown = (project / "r.md").read_text()
    header = md_tables(markdown)[0][0]
    # The mean beside the setting, then the paper's figure, then every class in payload order.
    assert header == ["Head", "Setting", "Mean", "published (paper's backbone & protocol, not ours)", *CLASSES]
    rows = {(r[0], r[1]): r[2:] for r in table_rows(markdown)}
    assert rows[("kNN (DN2)", "k = 2")] == ["**82.0**", "92.5 [PANDA]", "91.0", "82.0", "73.0"]
    # Three seeds: mean ± std per class and for the mean; the paper's figure beside the row of its protocol.
    assert rows[("PLUME", "LinearMap, contrastive guidance; final epoch")] == [
        "**71.0 ± 0.4**", "", "61.0 ± 1.2", "71.0 ± 1.2", "81.0 ± 1.2"]
    assert rows[("PLUME", "LinearMap, contrastive guidance; best epoch (picked on the test set)")] == [
        "**76.0 ± 0.7**", "83.4 [PLUME]", "66.0 ± 2.1", "76.0 ± 2.1", "86.0 ± 2.1"]
    # One seed: no std; two draws: std over draws.
    assert rows[("AnoMem", "one-class; multi-scale, learnt memory")] == ["**55.0**", "91.5 [AnoMem]"] + ["55.0"] * 3
    assert rows[("AnoMem", "semi-supervised, gamma = 0.01, 2 draws; multi-scale, learnt memory")] == [
        "**88.0 ± 3.3**", "92.5 [AnoMem]"] + ["88.0 ± 4.4"] * 3
    assert rows[("kNN (DN2)", "k = 2, AnoMem's training images (those with views)")] == ["**77.0**", ""] + ["77.0"] * 3
    assert len(rows) == 6
    caption = md_groups(markdown)[0]
    for words in (CIFAR, "efficientnet_lite0", "224x224", "resize/bilinear/imagenet", "one-vs-all", "3 seeds"):
        assert words in caption
    assert "[PANDA] PANDA paper" in markdown and "resnet152" in markdown and "not measured here" in markdown


def test_paper_column_only_for_cifar10_and_groups_by_features(tmp_path: Path) -> None:
    digits = write(tmp_path / "knn_digits.json", knn_payload("digits", ["0", "1"]))
    cifar = write(tmp_path / "knn_cifar.json", knn_payload())
    ablation = write(tmp_path / "ablation.json", ablation_payload())
    code, output = build(str(digits), str(cifar), str(ablation), "--out-md", str(tmp_path / "r.md"),
                         "--out-html", str(tmp_path / "r.html"))
    assert code == 0, output
    digits_part, cifar_part = md_groups((tmp_path / "r.md").read_text())
    assert digits_part.startswith("digits: efficientnet_lite0 @ 224x224")
    assert "published" not in digits_part and "[PANDA]" not in digits_part
    assert md_tables(digits_part)[0][0] == ["Head", "Setting", "Mean", "0", "1"]
    assert "published (paper's backbone & protocol, not ours)" in cifar_part
    rows = {(r[0], r[1]): r[3] for r in table_rows(cifar_part)}
    assert rows[("PLUME", "Gaussian, no guidance; best epoch (picked on the test set)")] == "77.5 [PLUME]"
    assert rows[("PLUME", "LinearMap, mean guidance; best epoch (picked on the test set)")] == "76.9 [PLUME]"
    assert rows[("PLUME", "LinearMap, mean guidance; final epoch")] == ""


def test_params_file_leaves_out_runs_of_other_settings(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    write(folder / "knn_efficientnet_lite0.json", knn_payload("digits", ["0", "1"]))
    stale = knn_payload("digits", ["0", "1"])
    stale["about"]["backbone"] = "resnet50"  # a backbone since removed from params.yaml
    write(folder / "knn_resnet50.json", stale)
    write(folder / "knn_cifar.json", knn_payload())  # imagefolder:cifar10-jpg
    params = tmp_path / "params.yaml"
    params.write_text("dataset: {name: digits}\nbackbones: [efficientnet_lite0]\npreprocess: {image_size: 224}\n")
    out = ["--out-md", str(tmp_path / "r.md"), "--out-html", str(tmp_path / "r.html")]
    code, output = build(str(folder), "--params", str(params), *out)
    assert code == 0, output
    assert "left out 2 metrics files" in output and "knn_resnet50.json" in output and "knn_cifar.json" in output
    assert "1 runs in 1 table(s)" in output and "resnet50" not in (tmp_path / "r.md").read_text()
    # An image folder dataset matches its recorded imagefolder:<folder> name.
    params.write_text("dataset: {name: imagefolder}\nbackbones: [efficientnet_lite0]\npreprocess: {image_size: 224}\n")
    code, output = build(str(folder), "--params", str(params), *out)
    assert code == 0 and "1 runs in 1 table(s)" in output and CIFAR in (tmp_path / "r.md").read_text()
    params.write_text("dataset: {name: svhn}\nbackbones: [efficientnet_lite0]\npreprocess: {image_size: 224}\n")
    code, output = build(str(folder), "--params", str(params), *out)
    assert code == 1 and "none of the metrics files" in output


def test_html_is_self_contained_escaped_and_draws_every_curve(project: Path) -> None:
    out = project / "reports" / "results.html"
    code, output = build(str(project / "metrics"), "--out-md", str(project / "r.md"), "--out-html", str(out))
    assert code == 0, output
    page = out.read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page and "@import" not in page
    assert "<b>&" not in page and "&lt;b&gt;&amp;" in page
    roc_files = list((project / "plots").glob("*/roc_*.json"))
    assert len(roc_files) == 9 and page.count('<path class="roc"') == len(roc_files)
    assert page.count('<path class="training"') == 3
    assert "test AUROC per epoch (mean of 3 seeds)" in page and "false positive rate" in page
    assert page.count("<table>") == 3 and page.count("92.5 [PANDA]") == 1  # the papers' figure: AUROC only


def test_the_mean_column_comes_before_the_classes_in_every_table(project: Path) -> None:
    code, output = build(str(project / "metrics"), "--out-md", str(project / "r.md"), "--out-html",
                         str(project / "r.html"))
    assert code == 0, output
    published = "published (paper's backbone & protocol, not ours)"
    headers = [table[0] for table in md_tables((project / "r.md").read_text())]
    # AUROC (with the papers' figure beside the mean), then AUPR and FPR@95%TPR (the papers publish AUROC only).
    assert headers == [["Head", "Setting", "Mean", published, *CLASSES], ["Head", "Setting", "Mean", *CLASSES],
                       ["Head", "Setting", "Mean", *CLASSES]]
    views = html_views((project / "r.html").read_text())
    assert views.views["auroc"][0][0] == ["Head", "Setting", "Mean", published, *CLASSES]
    assert views.views["aupr"][0][0] == views.views["fpr_at_95_tpr"][0][0] == ["Head", "Setting", "Mean", *CLASSES]
    # Head, Setting and Mean are the columns held in place while the classes scroll.
    header_classes = [c for text, c in views.cell_classes["auroc"][:4]]
    assert header_classes == ["head", "setting", "mean", "published"]
    page = (project / "r.html").read_text()
    assert '<div class="table-box">' in page and "position: sticky" in page and "overflow: auto" in page


def test_html_switches_between_auroc_aupr_and_fpr_with_the_figures_of_the_metrics_file(project: Path) -> None:
    code, output = build(str(project / "metrics"), "--out-md", str(project / "r.md"), "--out-html",
                         str(project / "r.html"))
    assert code == 0, output
    page = (project / "r.html").read_text()
    views = html_views(page)
    assert list(views.views) == ["auroc", "aupr", "fpr_at_95_tpr"]
    rows = {metric: {(r[0], r[1]): r[2:] for r in tables[0][1:]} for metric, tables in views.views.items()}
    knn, plume = ("kNN (DN2)", "k = 2"), ("PLUME", "LinearMap, contrastive guidance; final epoch")
    # knn_payload: AUROC .91/.82/.73, AUPR .991/.982/.973, FPR .25/.5/.75, and their means.
    assert rows["auroc"][knn] == ["82.0", "92.5 [PANDA]", "91.0", "82.0", "73.0"]
    assert rows["aupr"][knn] == ["98.2", "99.1", "98.2", "97.3"]
    assert rows["fpr_at_95_tpr"][knn] == ["50.0", "25.0", "50.0", "75.0"]
    # Three seeds: AUROC ± std; AUPR and FPR are means over seeds, with no spread recorded.
    assert rows["auroc"][plume] == ["71.0 ± 0.4", "", "61.0 ± 1.2", "71.0 ± 1.2", "81.0 ± 1.2"]
    assert rows["aupr"][plume] == ["96.1", "95.1", "96.1", "97.1"]
    assert rows["fpr_at_95_tpr"][plume] == ["50.0", "60.0", "50.0", "40.0"]
    # Every view has the same rows in the same order, so switching keeps each row in its place.
    assert [list(r) for r in rows.values()] == [list(rows["auroc"])] * 3
    # One set of radio buttons, AUROC chosen, with a label above each table; CSS only, nothing fetched.
    assert [(i["type"], i["name"], i["id"]) for i in views.inputs] == [
        ("radio", "metric", "metric-auroc"), ("radio", "metric", "metric-aupr"),
        ("radio", "metric", "metric-fpr_at_95_tpr")]
    assert ["checked" in i for i in views.inputs] == [True, False, False]
    assert views.labels == {"metric-auroc": "AUROC (%)", "metric-aupr": "AUPR (%)",
                            "metric-fpr_at_95_tpr": "FPR@95%TPR (%, lower is better)"}
    assert "#metric-aupr:checked ~ section div.view-aupr { display: block; }" in page
    assert "lower is better" in page and "anomalies as the positive class" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_a_row_without_aupr_or_fpr_shows_a_dash(project: Path) -> None:
    code, output = build(str(project / "metrics"), "--out-md", str(project / "r.md"), "--out-html",
                         str(project / "r.html"))
    assert code == 0, output
    views = html_views((project / "r.html").read_text())
    semi = ("AnoMem", "semi-supervised, gamma = 0.01, 2 draws; multi-scale, learnt memory")
    same = ("kNN (DN2)", "k = 2, AnoMem's training images (those with views)")
    best = ("PLUME", "LinearMap, contrastive guidance; best epoch (picked on the test set)")
    one_class = ("AnoMem", "one-class; multi-scale, learnt memory")
    for metric in ("aupr", "fpr_at_95_tpr"):
        rows = {(r[0], r[1]): r[2:] for r in views.views[metric][0][1:]}
        # AnoMem's semi-supervised rows, its kNN on the same images and PLUME's best epoch record AUROC only.
        for key in (semi, same, best):
            assert rows[key] == ["–"] * 4, (metric, key)
        assert rows[one_class] == (["92.0"] * 4 if metric == "aupr" else ["90.0"] * 4)
        cells = views.cell_classes[metric]
        assert ("–", "missing") in cells and ("–", "mean missing") in cells
    markdown = (project / "r.md").read_text()
    aupr = md_tables(markdown)[1]
    assert {(r[0], r[1]): r[2:] for r in aupr[1:]}[semi] == ["–"] * 4  # not "**–**"
    assert "### AUPR (%), " in markdown and "### FPR@95%TPR (%, lower is better), " in markdown


def test_only_auroc_without_a_switch_when_no_metrics_file_holds_aupr_or_fpr(tmp_path: Path) -> None:
    ablation = write(tmp_path / "ablation.json", ablation_payload())  # AUROC only
    code, output = build(str(ablation), "--out-md", str(tmp_path / "r.md"), "--out-html", str(tmp_path / "r.html"))
    assert code == 0, output
    markdown, page = (tmp_path / "r.md").read_text(), (tmp_path / "r.html").read_text()
    assert len(md_tables(markdown)) == 1 and "### AUPR" not in markdown
    views = html_views(page)
    assert list(views.views) == ["auroc"] and views.inputs == [] and views.labels == {}
    # With no radio button, no rule hides the view.
    assert "input.metric-choice ~ section div.view { display: none; }" in page and "<input" not in page


def test_plots_dirs_can_be_given_per_file(tmp_path: Path) -> None:
    ablation = write(tmp_path / "ablation.json", ablation_payload())
    knn = write(tmp_path / "knn.json", knn_payload())
    for variant in ("gaussian_none", "linear_mean"):
        roc_file(tmp_path / "abl_plots" / variant / "roc", "airplane")
    roc_file(tmp_path / "elsewhere", "airplane")
    roc_file(tmp_path / "elsewhere", "automobile")
    code, output = build(str(ablation), str(knn), "--plots-dir", f"{knn}={tmp_path / 'elsewhere'}",
                         "--plots-dir", str(tmp_path / "abl_plots"), "--out-md", str(tmp_path / "r.md"),
                         "--out-html", str(tmp_path / "r.html"))
    assert code == 0, output
    assert (tmp_path / "r.html").read_text().count('<path class="roc"') == 4
    code, output = build(str(knn), "--plots-dir", f"{tmp_path / 'other.json'}={tmp_path}",
                         "--out-md", str(tmp_path / "r.md"), "--out-html", str(tmp_path / "r.html"))
    assert code == 1 and "not one of the metrics files" in output


def test_writes_both_files_atomically_and_refuses_what_is_not_a_payload(project: Path, monkeypatch) -> None:
    import pipeline.cli
    import pipeline.report.command

    written = []

    def recording_write_text(path, text):
        written.append(Path(path).name)
        pipeline.cli.write_text(path, text)

    monkeypatch.setattr(pipeline.report.command, "write_text", recording_write_text)
    md, page = project / "out" / "results.md", project / "out" / "results.html"
    code, output = build(str(project / "metrics"), "--out-md", str(md), "--out-html", str(page))
    assert code == 0, output
    assert written == ["results.md", "results.html"] and not list(md.parent.glob("*.tmp"))

    written.clear()
    md.write_text("previous")
    not_payload = write(project / "metrics" / "notes.json", {"comment": "hello"})
    code, output = build(str(project / "metrics"), "--out-md", str(md), "--out-html", str(page))
    assert code == 1 and "Traceback" not in output
    assert f"{not_payload} is not a metrics payload" in " ".join(output.split())
    assert written == [] and md.read_text() == "previous"  # nothing half-updated
    write(not_payload, {"about": {"head": "knn"}, "mean": {"auroc": 0.5}, "per_class": {"a": {"aupr": 0.5}}})
    code, output = build(str(not_payload), "--out-md", str(md), "--out-html", str(page))
    assert code == 1 and "is not a metrics payload" in output and "Traceback" not in output
    not_payload.write_text("{broken")
    code, output = build(str(not_payload), "--out-md", str(md), "--out-html", str(page))
    assert code == 1 and "cannot read" in output and "as JSON" in output


def test_readme_section_between_markers_is_replaced_and_the_rest_kept():
    from pipeline.errors import PipelineError
    from pipeline.report.command import README_END, README_START, replace_between_markers

    text = f"# Title\n\nintro\n{README_START}\nold table\n{README_END}\n\n## After\n"
    out = replace_between_markers(text, "# Results\n\nnew table\n")
    assert out == f"# Title\n\nintro\n{README_START}\nnew table\n{README_END}\n\n## After\n"
    # Every heading one level down, under the README's own "## Results".
    out = replace_between_markers(text, "# Results\n\nintro\n\n## group\n\n### AUPR (%), group\n\n| a |\n")
    assert f"{README_START}\nintro\n\n### group\n\n#### AUPR (%), group\n\n| a |\n{README_END}" in out
    import pytest

    with pytest.raises(PipelineError, match="results:start"):
        replace_between_markers("no markers", "x")


# --- heads: their rows come from their own report module (pipeline/report/heads/) --------------

FAKE_REPORT = '''
from pipeline.report.published import published
from pipeline.report.rows import Figure, Row, figures

DISPLAY_NAME = "Fake head"
ORDER = -1  # before kNN
ROC_CURVES = "fake model"


def title(about):
    return f"Fake head, width {about.get('width')}"


def rows(run, extra):
    p = run.payload
    return [Row(DISPLAY_NAME, f"fake setting{extra}", figures(p["per_class"], "auroc", None),
                Figure(p["mean"]["auroc"]), published(12.5, "FAKE", "Fake paper, fake backbone."))]
'''


def test_a_head_in_the_registry_gets_its_rows_from_its_report_module_and_an_unknown_head_a_generic_row(
        tmp_path: Path, monkeypatch) -> None:
    from pipeline.report import heads

    package = f"fake_reports_{abs(hash(str(tmp_path)))}"
    write(tmp_path / "src" / package / "__init__.py", "")
    (tmp_path / "src" / package / "fakehead.py").write_text(FAKE_REPORT)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    # "bare": a head with no report module
    monkeypatch.setattr(heads, "REPORTS", {**heads.REPORTS, "fakehead": f"{package}.fakehead"})
    runs = {"knn": knn_payload()}
    for head, width in (("fakehead", 3), ("fakehead", 5), ("unknownhead", 3), ("bare", 3)):
        payload = knn_payload()
        payload["about"] = about(CIFAR, head, width=width, depth=2,
                                 setting_words={"width": f"width {width}", "depth": "depth 2"})
        runs[f"{head}_{width}"] = payload
    for name, payload in runs.items():
        write(tmp_path / "metrics" / f"{name}.json", payload)
        roc_file(tmp_path / "plots" / name, "airplane")
    code, output = build(str(tmp_path / "metrics"), "--out-md", str(tmp_path / "r.md"),
                         "--out-html", str(tmp_path / "r.html"))
    assert code == 0, output
    markdown = (tmp_path / "r.md").read_text()
    rows = [(r[0], r[1], r[2], r[3]) for r in table_rows(markdown)]
    # The fake head's own rows (ORDER -1: first), told apart by its varying setting, with its paper's
    # figure; kNN as always; heads without a report module last (in file order), with the generic row.
    assert rows == [("Fake head", "fake setting; width 3", "**82.0**", "12.5 [FAKE]"),
                    ("Fake head", "fake setting; width 5", "**82.0**", "12.5 [FAKE]"),
                    ("kNN (DN2)", "k = 2", "**82.0**", "92.5 [PANDA]"),
                    ("bare", "-", "**82.0**", ""), ("unknownhead", "-", "**82.0**", "")]
    assert "Fake head: depth 2." in markdown  # a setting shared by the head's runs goes to the caption
    assert "- [FAKE] Fake paper, fake backbone. Copied from the paper, not measured here." in markdown
    page = (tmp_path / "r.html").read_text()
    assert "Fake head, width 5: ROC (fake model)" in page and "unknownhead: ROC (per class)" in page


def _project_imports(path: Path) -> set[str]:
    """The pipeline modules a file imports, function-level imports included."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # from package import module
    return {name for name in names if name.split(".")[0] == "pipeline" and _module_file(name)}


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


REPO = Path(__file__).resolve().parents[1]


def _import_graph(start: str) -> dict[str, set[str]]:
    """Module -> the project modules it imports, from ``start`` on; ``pipeline.report.heads``
    also imports each head's report module (through importlib)."""
    from pipeline.report.heads import REPORTS

    graph: dict[str, set[str]] = {}
    todo = [start]
    while todo:
        name = todo.pop()
        if name in graph:
            continue
        graph[name] = _project_imports(_module_file(name))
        if name == "pipeline.report.heads":
            graph[name] |= set(REPORTS.values())
        todo.extend(graph[name])
    return graph


def test_report_imports_no_circle_and_its_dvc_stage_depends_on_every_file_it_imports() -> None:
    import yaml

    graph = _import_graph("pipeline.report.__main__")
    # No circle: a depth-first walk never meets a module still on its path.
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            assert state.get(other) != "open", f"import circle: {' -> '.join([*path, name, other])}"
            if other not in state:
                visit(other, [*path, name])
        state[name] = "done"

    visit("pipeline.report.__main__", [])
    files = {_module_file(name) for name in graph}
    for name in graph:  # importing a module runs its packages' __init__.py first
        parts = name.split(".")
        files |= {_module_file(".".join(parts[:i])) for i in range(1, len(parts))}
    deps = [REPO / d for d in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["report"]["deps"]]
    missing = sorted(str(f.relative_to(REPO)) for f in files if not any(f == d or d in f.parents for d in deps))
    assert not missing, f"dvc.yaml's report stage does not depend on: {missing}"
    assert REPO / "pipeline" / "report" in deps  # paper_results.json with it


def test_head_report_modules_import_only_the_report_package_and_load_neither_torch_nor_heads() -> None:
    import subprocess
    import sys

    from pipeline.heads.registry import HEADS
    from pipeline.report.heads import REPORTS

    for module in REPORTS.values():
        imported = _project_imports(_module_file(module))
        assert all(name.startswith("pipeline.report") or name == "pipeline.errors" for name in imported), imported
    modules = ["pipeline.report.table", "pipeline.report.page", *REPORTS.values()]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('pipeline.')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(REPO)}).stdout
    assert "'torch'" not in loaded
    assert not any(f"'pipeline.heads.{h}" in loaded for h in HEADS)  # no head package at all
