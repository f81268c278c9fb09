"""Which PLUME keeps its final epoch at its best epoch's level? A grid of configurations on one
cache, each CHOSEN BY VALIDATION FIGURES ONLY (held-out normal training images against
pseudo-anomalies), its test figures printed beside, apart.

Every configuration trains once per class and seed with the same held-out split
(``--val-fraction`` of the class's training images, drawn from the seed: the same rows for every
configuration) and ``select=held-out``; from that one training come two candidates, the
weights of the final epoch and those of the best validation epoch (``kept`` final / held-out).
For each candidate:

- validation (no test image read): ``val_own``, the held-out normal images against their own
  pseudo-anomalies (the configuration's perturbator on those images), the figure the head
  selects its epoch by; ``val_panel``, the same held-out images against the pseudo-anomalies
  of every OTHER configuration of the grid (final and selected epoch of each), the mean AUROC
  over those sets. Own pseudo-anomalies are not comparable between configurations (a
  perturbator that makes easy ones gives its classifier a high ``val_own`` whatever it does on
  real anomalies), so the pick is made on ``val_panel`` (``--pick-by``);
- test (never used to pick): the test AUROC at the kept epoch, the best test AUROC over
  epochs (peeking, labelled so), whether the kept epoch is within 2 points of the best on
  every class, and whether no class is below 50.

    python benchmarks/plume_study.py --cache /tmp/digits64.zarr --epochs 5 --out /tmp/plume_study.json

Writes the figures (per class, per candidate) to ``--out`` and prints the table, the
configuration the validation figures pick, and that configuration's test figures. The
grid's axes are ``--grid KEY=V1,V2`` (repeatable; keys are PLUME parameters); settings
outside the grid come from params.yaml's ``plume:`` section, as the head's command takes them.
The panel needs pseudo-anomalies in the cached feature space, so ``dim`` must be native.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from pipeline import params
from pipeline.cli import cache_label, info, write_json
from pipeline.commands.options import declared_options
from pipeline.commands.stage import open_cache
from pipeline.declare import specs
from pipeline.errors import PipelineError
from pipeline.heads.plume.settings import RUN, PlumeParams
from pipeline.params import StageParams

DEFAULT_GRID = ("batch_mode=joint,separate", "identity_target=paper,authors", "identity_loss=sum,mean",
                "lr=lowest-loss,steepest", "ema=0,0.99")
KEPT = ("final", "held-out")
# The head's settings a study can vary or fix, read (--grid) and checked as the head's command
# reads them: all but the held-out split and the kept epoch, which the study sets, and where and
# with what threshold the head runs.
STUDIED = {key: spec for key, spec in specs(PlumeParams).items()
           if spec.config and key not in ("val_fraction", "select", "device", "threshold_quantile")}


def parse_grid(items: tuple[str, ...]) -> dict[str, list]:
    grid = {}
    for item in items:
        key, _, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in STUDIED or not values:
            raise click.BadParameter(f"{item!r}: write KEY=V1,V2 with KEY one of {', '.join(STUDIED)}")
        grid[key] = [STUDIED[key].parse(v.strip(), key) for v in values.split(",") if v.strip()]
    return grid


def configurations(grid: dict[str, list]) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def config_name(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def study_head_class():
    """PlumeHead that also keeps, at its last epoch, a copy of itself as it was then and that
    epoch's validation (``final_``), before ``select=held-out`` restores the selected weights:
    both candidates of one training. (Defined here, after torch is loaded, so --help is quick.)"""
    from pipeline.heads.plume.head import PlumeHead

    @dataclass(eq=False, repr=False, kw_only=True)
    class StudyHead(PlumeHead):
        def _fit(self, features, labels, callback):
            def at_epoch(head, record):
                if record["epoch"] == self.epochs_run_:
                    self.final_ = (PlumeHead._from_state(self._state(), self.device), self.validation_)
                if callback is not None:
                    callback(head, record)

            super()._fit(features, labels, at_epoch)

    return StudyHead


def auroc(normal: np.ndarray, anomalies: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(anomalies))], np.r_[normal, anomalies]))


def train_one(cache, task, seed: int, settings: dict, head_class) -> dict:
    """One training of one configuration on one class and seed: its curves and both candidates
    (the head as it was at the final epoch and as kept, each with its validation)."""
    from pipeline.evaluate import evaluate_one_vs_all

    head = head_class(select="held-out", seed=seed, **settings)
    (result,) = evaluate_one_vs_all(cache, head, [task], seeds=[seed], track_epochs=True, keep_heads=True,
                                    desc=f"PLUME {task.name} seed {seed}").values()
    fitted = result["head"]
    curves = result["curves"]
    final_head, final_validation = fitted.final_
    kept = {"final": (final_head, final_validation, curves[-1]),
            "held-out": (fitted, fitted.validation_, curves[fitted.selected_epoch_ - 1])}
    # The kept weights are the selected epoch's: the evaluation's AUROC of them equals that epoch's record.
    if abs(result["metrics"]["auroc"] - kept["held-out"][2]["test_auroc"]) > 1e-9:
        raise PipelineError("the head's kept weights do not score as its selected epoch did")
    return {"held_out_rows": fitted.held_out_rows_, "curves": curves, "kept": kept,
            "best_test": max(r["test_auroc"] for r in curves)}


def panel_figures(runs: dict[str, dict], held_out: np.ndarray) -> dict[tuple[str, str], float]:
    """For each candidate (configuration, kept), the mean AUROC of the held-out normal images
    against each pseudo-anomaly set of the OTHER configurations, scored by the candidate."""
    sources = {(name, kept): run["kept"][kept][1]["anomalies"] for name, run in runs.items() for kept in KEPT}
    panel = {}
    for name, run in runs.items():
        for kept in KEPT:
            head = run["kept"][kept][0]
            normal = head.score_samples(held_out)
            panel[(name, kept)] = float(np.mean([auroc(normal, head.score_samples(anomalies))
                                                 for (source, _), anomalies in sources.items() if source != name]))
    return panel


def candidate_figures(rows: list[dict], classes: list[str]) -> dict:
    """Means over classes (each class's figure a mean over seeds) and the per-class checks."""
    by_class = {c: [r for r in rows if r["class"] == c] for c in classes}
    per_class = {c: {k: float(np.mean([r[k] for r in rs])) for k in ("val_own", "val_panel", "test", "best_test")}
                 for c, rs in by_class.items()}
    mean = {k: float(np.mean([m[k] for m in per_class.values()])) for k in next(iter(per_class.values()))}
    return {"mean": mean, "per_class": per_class,
            "within_2_of_best_every_class": all(m["best_test"] - m["test"] <= 0.02 for m in per_class.values()),
            "none_below_50": all(m["test"] >= 0.5 for m in per_class.values())}


def candidates_of(rows: list[dict], configs: list[dict], classes: list[str]) -> list[dict]:
    """Every candidate (configuration, kept) with its figures over classes."""
    candidates = []
    for config in configs:
        for kept in KEPT:
            mine = [r for r in rows if r["config"] == config_name(config) and r["kept"] == kept]
            candidates.append({"config": config, "kept": kept, **candidate_figures(mine, classes),
                               "epochs_kept": {f"{r['class']}/seed_{r['seed']}": r["epoch"] for r in mine},
                               "norm_ratio": float(np.mean([r["norm_ratio"] for r in mine])),
                               "ones_cosine": float(np.mean([r["ones_cosine"] for r in mine])),
                               "shift_cosine": float(np.mean([r.get("shift_cosine", np.nan) for r in mine]))})
    return candidates


def pick(candidates: list[dict], pick_by: str, max_ones_cosine: float = 1.0) -> dict:
    """The candidate with the highest mean validation figure ``pick_by``; no test figure is read.
    Candidates whose perturbation follows the all-ones direction more closely than
    ``max_ones_cosine`` (mean |cos(x~ - x, 1)| on training batches) are left out: one fixed
    direction is a degenerate family of pseudo-anomalies, which held-out pseudo-anomalies of the
    same grid cannot expose."""
    if not pick_by.startswith("val_"):
        raise ValueError(f"{pick_by!r} is not a validation figure")
    allowed = [c for c in candidates if not c["ones_cosine"] > max_ones_cosine]  # NaN (no perturbation) stays
    if not allowed:
        raise PipelineError(f"every candidate's perturbation has |cos(x~ - x, 1)| above {max_ones_cosine}; "
                            f"raise --max-ones-cosine.")
    return max(allowed, key=lambda c: c["mean"][pick_by])


def run_grid(cache, tasks, seeds: list[int], configs: list[dict], fixed: dict) -> list[dict]:
    """Train every configuration on every class and seed; one row of figures per candidate."""
    head_class = study_head_class()
    train_labels = cache.labels("train")
    rows = []
    for task in tasks:
        class_rows = np.flatnonzero(np.isin(train_labels, task.normal))  # the rows the head trains on
        for seed in seeds:
            runs = {config_name(c): train_one(cache, task, seed, {**fixed, **c}, head_class) for c in configs}
            splits = {tuple(run["held_out_rows"]) for run in runs.values()}
            if len(splits) != 1:
                raise PipelineError("configurations held out different images: the panel needs one split")
            held_out = cache.features("train", class_rows[next(iter(runs.values()))["held_out_rows"]])
            panel = panel_figures(runs, held_out)
            for name, run in runs.items():
                for kept in KEPT:
                    _, validation, record = run["kept"][kept]
                    rows.append({"config": name, "kept": kept, "class": task.name, "seed": seed,
                                 "epoch": record["epoch"], "val_own": validation["auroc"],
                                 "val_panel": panel[(name, kept)], "test": record["test_auroc"],
                                 "best_test": run["best_test"],
                                 "norm_ratio": record["norm_ratio"], "ones_cosine": record["ones_cosine"],
                                 "shift_cosine": record["shift_cosine"]})
    return rows


def merged(paths: tuple[str, ...]) -> tuple[dict, list[dict]]:
    """The about and the rows of earlier studies of the same grid (run on other classes, say)."""
    abouts, rows = [], []
    for path in paths:
        data = json.loads(Path(path).read_text())
        abouts.append(data["about"])
        rows += data["rows"]
    first = abouts[0]
    for about in abouts[1:]:
        if {k: about.get(k) for k in ("grid", "fixed", "dataset", "backbone")} != \
                {k: first.get(k) for k in ("grid", "fixed", "dataset", "backbone")}:
            raise PipelineError("--rows-from files come from different grids, settings or caches")
    return first, rows


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--cache", "cache_path", type=click.Path(file_okay=False), help="The feature cache to study.")
@declared_options("plume", StageParams, RUN)
@declared_options("plume", PlumeParams,
                  skip=tuple(key for key in specs(PlumeParams) if key not in ("epochs", "device")))
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Fraction of each class's training images held out (the same for every "
                                      "configuration).")
@click.option("--grid", "grid_items", multiple=True, default=DEFAULT_GRID, show_default=True,
              help="An axis of the grid, KEY=V1,V2 (repeatable).")
@click.option("--pick-by", type=click.Choice(["val_panel", "val_own"]), default="val_panel", show_default=True,
              help="The validation figure that picks the configuration (mean over classes).")
@click.option("--max-ones-cosine", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Leave out of the pick candidates whose perturbation x~ - x follows the all-ones vector "
                   "more closely than this (mean |cosine| on training batches; 1: none left out).")
@click.option("--rows-from", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Train nothing: combine the --out files of earlier runs of the same grid (on other classes, "
                   "say) and pick on all their rows (repeatable).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="JSON file of every figure.")
def main(cache_path, classes, seeds, device, epochs, val_fraction, grid_items, pick_by, max_ones_cosine, rows_from,
         out_path):
    """Run the grid, pick a configuration on validation figures only, print its test figures."""
    if rows_from:
        about, rows = merged(rows_from)
        configs = configurations(about["grid"])
    else:
        if cache_path is None:
            raise PipelineError("give --cache (or --rows-from files of earlier runs).")
        from pipeline.devices import resolve_device

        grid = parse_grid(grid_items)
        fixed = {k: v for k, v in params.section("plume").items() if k in STUDIED and k not in grid}
        fixed.update(epochs=epochs, val_fraction=val_fraction, device=str(resolve_device(device)),
                     threshold_quantile=None)
        if fixed.get("dim", "native") != "native" or "dim" in grid:
            raise PipelineError("the study's panel maps pseudo-anomalies back to the cached features: "
                                "set plume.dim to native (and leave dim out of --grid).")
        cache, tasks = open_cache(cache_path, (), classes)
        configs = configurations(grid)
        info(f"{len(configs)} configurations x {len(tasks)} classes x {len(seeds)} seed(s); fixed: {fixed}")
        rows = run_grid(cache, tasks, seeds, configs, fixed)
        about = {**cache_label(cache.metadata), "grid": grid, "fixed": fixed,
                 "test_is": "test AUROC at the kept epoch; best_test peeks at the test set"}
    names = list(dict.fromkeys(r["class"] for r in rows))
    candidates = candidates_of(rows, configs, names)
    picked = pick(candidates, pick_by, max_ones_cosine)
    write_json(out_path, {"about": {**about, "seeds": sorted({r["seed"] for r in rows}), "pick_by": pick_by,
                                    "max_ones_cosine": max_ones_cosine},
                          "candidates": candidates, "picked": {"config": picked["config"], "kept": picked["kept"]},
                          "rows": rows})
    click.echo(study_table(candidates, pick_by))
    left_out = "" if max_ones_cosine >= 1 else f", perturbations with |cos(x~ - x, 1)| > {max_ones_cosine} left out"
    click.echo(f"\nPicked on validation figures only ({pick_by}, held-out normal training images against "
               f"pseudo-anomalies{left_out}): {config_name(picked['config'])}, kept epoch {picked['kept']} "
               f"({pick_by} {100 * picked['mean'][pick_by]:.2f}).")
    click.echo(f"Its test figures (not used to pick): mean AUROC {100 * picked['mean']['test']:.2f} at the kept "
               f"epoch, {100 * picked['mean']['best_test']:.2f} at the best test epoch (peeking); per class "
               + ", ".join(f"{c} {100 * m['test']:.1f}" for c, m in picked["per_class"].items())
               + f"; within 2 points of the best epoch on every class: {picked['within_2_of_best_every_class']}; "
                 f"none below 50: {picked['none_below_50']}.")


def study_table(candidates: list[dict], pick_by: str) -> str:
    """Markdown: one line per candidate, validation figures first, test figures after."""
    lines = ["| configuration | kept | val own | val panel | test (kept epoch) | test best epoch (peeking) "
             "| within 2 of best, every class | none below 50 | ||x~||/||x|| | abs cos(x~ - x, 1) "
             "| abs cos between shifts |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(candidates, key=lambda c: -c["mean"][pick_by]):
        m = c["mean"]
        lines.append(f"| {config_name(c['config'])} | {c['kept']} | {100 * m['val_own']:.1f} | "
                     f"{100 * m['val_panel']:.1f} | {100 * m['test']:.1f} | {100 * m['best_test']:.1f} | "
                     f"{'yes' if c['within_2_of_best_every_class'] else 'no'} | "
                     f"{'yes' if c['none_below_50'] else 'no'} | {c['norm_ratio']:.2f} | {c['ones_cosine']:.2f} | "
                     f"{c['shift_cosine']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
