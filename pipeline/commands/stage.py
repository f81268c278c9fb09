"""The one stage runner every head's command is made of.

    main = head_command(Stage("knn", what_saved="k, the gallery"))

What every head stage does, written once: check that no output is written over something else,
open the cache and the protocol's tasks, plan the robustness shifts, build the head from its
declared parameters (options made from them, defaults from params.yaml), start the Dask client,
evaluate, write the metrics and plots, print the summary and where saved heads went. A head's
command module declares a ``Stage`` with hooks for what is truly its own (kNN's streaming, the
Gaussian head's map check, AnoMem's semi-supervised runs). Heavy modules (torch, zarr) are
imported when the command runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from pipeline import params
from pipeline.cli import verbosity_options
from pipeline.commands.options import (DeclaredType, apply_preset, declared_options, preset_option,
                                      scheduler_option)
from pipeline.declare import Spec, setting_words, specs
from pipeline.params import ShiftParams, StageParams, head_settings
from pipeline.protocol import FROM_DATASET, NORMAL_VS_ANOMALIES, PROTOCOLS

if TYPE_CHECKING:
    from distributed import Client

    from pipeline.heads.base import Head
    from pipeline.heads.saving import HeadSaver
    from pipeline.protocol import Task
    from pipeline.shift import ShiftPlan
    from pipeline.store.cache import FeatureCache

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# Head parameters that do not decide the metrics, left out of the metrics file's description.
NOT_REPORTED = ("device", "seed", "threshold_quantile")


def apply_options(command: Callable, options: list[Callable]) -> Callable:
    for option in reversed(options):
        command = option(command)
    return command


def cache_options(section: str) -> Callable[[Callable], Callable]:
    """--cache, --protocol, --classes, --expect, --scheduler and -q/--quiet, -v/--verbose."""
    return lambda command: apply_options(command, [
        click.option("--cache", "cache_path", required=True, type=click.Path(file_okay=False),
                     help="Feature cache made by python -m pipeline.extract (or imported from HDF5)."),
        click.option("--protocol", default=FROM_DATASET, show_default=True,
                     type=click.Choice([FROM_DATASET, *PROTOCOLS]),
                     help=f"one-vs-all: each class in turn is normal, one head per class; {NORMAL_VS_ANOMALIES}: "
                          f"one head trained on the normal classes' images, graded on the whole test split and "
                          f"per anomaly class (defect type) against the normal test images; {FROM_DATASET}: the "
                          f"one the cache's dataset records ({NORMAL_VS_ANOMALIES} for an anomaly_folder, else "
                          f"one-vs-all)."),
        declared_options(section, StageParams),
        click.option("--expect", multiple=True, metavar="KEY=VALUE",
                     help="Refuse a cache whose metadata differs, e.g. backbone.name=resnet50 or "
                          "preprocessing.image_size=224 (repeatable)."),
        scheduler_option,
        verbosity_options,
    ])


def output_options(section: str, what_saved: str, curves: bool) -> Callable[[Callable], Callable]:
    """--metrics, --plots, (--curves), --save-heads, and the shift section's --shift, --shift-labels."""
    options = [
        click.option("--metrics", "metrics_path", default=f"metrics/{section}.json", show_default=True,
                     help="Where to write the metrics JSON (per class and mean AUROC, AUPR, FPR@95%TPR)."),
        click.option("--plots", "plots_dir", default=None,
                     help="Folder for per-class ROC curves (roc_<class>.json, DVC plots; first seed). Heads that "
                          "localise, on a cache with masks, also write their heat-map gallery beside it, in "
                          "<folder>_maps: per defect type the 3 highest- and 3 lowest-scoring test images with "
                          "their anomaly maps (PNGs, gallery.json), which the HTML report shows."),
        click.option("--save-heads", "save_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
                     help=f"Also save each class's head as DIR/<class>.head (normal-vs-anomalies: the one head, "
                          f"DIR/<normal class>.head), to score new images with python -m stages.score: "
                          f"{what_saved}, the cache's metadata and a threshold, the --threshold-quantile quantile "
                          f"of its training scores. Metrics are unchanged. With --scheduler each file is written "
                          f"by the worker that trains the class, so DIR must be on storage the workers share."),
        declared_options("shift", ShiftParams),
    ]
    if curves:
        options.insert(2, click.option(
            "--curves", "curves_dir", default=None,
            help="Folder for training curves (train_<class>.json: loss terms and test AUROC per epoch and seed)."))
        options.insert(3, click.option(
            "--curve-epochs", "curve_epochs", default=None, type=DeclaredType("curve_epochs", Spec("epochs", "ints", low=1)), metavar="E,E,...",
            help="With --curves, score the test set only after these epochs (for example 1,5,10,15), not after "
                 "every one: each scoring pass costs a pass over the test set. [default: every epoch]"))
    return lambda command: apply_options(command, options)


def open_cache(cache_path: str, expect: tuple[str, ...], classes: Any,
               protocol: str = FROM_DATASET) -> tuple["FeatureCache", list["Task"]]:
    """The cache, refused unless its metadata matches ``expect``, and the tasks of the protocol
    (``pipeline.protocol.tasks``) on the chosen classes, each refused before any training if its
    labels cannot be graded (a class without training images, a test set without anomalies)."""
    from pipeline.cli import parse_expectations
    from pipeline.protocol import protocol_of, split_for, tasks
    from pipeline.store.cache import FeatureCache

    cache = FeatureCache.open(cache_path)
    cache.check_matches(parse_expectations(expect))
    chosen = tasks(protocol_of(cache.metadata, protocol), classes, cache.classes, cache.metadata)
    train_labels, test_labels = cache.labels("train"), cache.labels("test")
    for task in chosen:
        split_for(task, train_labels, test_labels, cache.classes)
    return cache, chosen


def shift_plan(cache: "FeatureCache", shift: str, shift_labels: str) -> "ShiftPlan | None":
    """The corrupted test splits --shift names (None for none), checked against the cache."""
    from pipeline.shift import resolve_shift

    return resolve_shift(cache, shift, shift_labels)


def saver_for(save_dir: str | None, kind: str, cache: "FeatureCache", threshold_quantile: float, device: str,
              **state_options: Any) -> "HeadSaver | None":
    """The after-fit hook that saves each task's head, or None without --save-heads."""
    if save_dir is None:
        return None
    from pipeline.heads.saving import HeadSaver

    return HeadSaver.for_cache(Path(save_dir), kind, cache, threshold_quantile=threshold_quantile, device=device,
                               state_options=state_options)


@dataclass
class StageRun:
    """One run of a head stage, as the hooks see it."""

    stage: "Stage"
    cache: "FeatureCache"
    tasks: list["Task"]
    head: "Head"
    seeds: list[int]
    run: dict[str, Any]          # the stage's own declared settings (the head's RUN class)
    extra: dict[str, Any]        # the stage's own plain options (kNN's --stream)
    shift: "ShiftPlan | None" = None
    saver: "HeadSaver | None" = None
    client: "Client | None" = None
    about: dict = field(default_factory=dict)


@dataclass
class Stage:
    """A head's stage: its name (head and params.yaml section), what a saved head holds, and
    hooks for what is its own. Every hook is optional.

    - ``options``: click options of its own (not parameters: kNN's --stream).
    - ``build(cache, extra) -> dict``: head arguments that come from elsewhere than its
      parameters (PANDA: the cache's backbone; ``extra``: the stage's own options).
    - ``check(run)``: refuse the cache or settings before any training.
    - ``evaluate(run) -> results``: instead of ``evaluate_one_vs_all`` on the tasks and seeds.
    - ``describe(run) -> dict``: more of the metrics file's description (``about``).
    - ``finish(run, payload, results)``: add to the payload before it is written.
    - ``report(run, payload)``: lines printed after the summary.
    - ``saver_options(run) -> dict``: what the saved head's state takes (kNN's gallery type).
    """

    name: str
    what_saved: str
    doc: str
    # The head class, imported when the command runs, by an import in the command's module (so
    # that dvc.yaml's deps, made from the imports, cover the head's package).
    head_class: Callable[[], type]
    curves: bool = False            # trained by epochs: --curves, and test AUROC per epoch
    # Declared settings of params.yaml given no option (not the run's: classical's detectors, the
    # list dvc.yaml runs, of which the command runs one, --detector).
    params_only: tuple[str, ...] = ()
    desc: Callable[[StageRun], str] | None = None
    options: list[Callable] = field(default_factory=list)
    build: Callable[["FeatureCache", dict], dict] | None = None
    check: Callable[[StageRun], None] | None = None
    evaluate: Callable[[StageRun], dict] | None = None
    describe: Callable[[StageRun], dict] | None = None
    finish: Callable[[StageRun, dict, dict], None] | None = None
    report: Callable[[StageRun, dict], None] | None = None
    saver_options: Callable[[StageRun], dict] | None = None


def describe(stage: Stage, head: "Head", run: dict, seeds: list[int]) -> dict:
    """The metrics file's description of a run: the head's parameters that decide the numbers,
    the stage's own settings and the seeds (``_run`` adds the report's words for them,
    ``setting_words``, from the declarations: the report reads them instead of the head's code)."""
    head_params, _ = head_settings(stage.name)
    declared = {name for name, spec in specs(head_params).items() if spec.config and name not in NOT_REPORTED}
    values = {k: v for k, v in head.get_params().items() if k in declared}
    values.update({k: v for k, v in run.items() if k != "seeds"})
    about = {"head": stage.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}
    if "seeds" in run:
        about["seeds"] = len(seeds)
    return about


def declared_words(head: str, values: dict) -> dict[str, str]:
    """The report's words for the settings in ``values``, as the head and its stage declare them."""
    head_params, run_params = head_settings(head)
    return {**setting_words(head_params, values), **(setting_words(run_params, values) if run_params else {})}


def read_paths(ctx: click.Context) -> dict[str, str]:
    """The files and folders the command's options name for it to read (click.Path options that
    must exist: PANDA's --weights, --knn-metrics), by option, for ``check_outputs``'s inputs."""
    return {param.opts[0] if param.opts else param.name: ctx.params[param.name] for param in ctx.command.params
            if isinstance(param.type, click.Path) and param.type.exists and ctx.params.get(param.name) is not None}


def _run(stage: Stage, ctx: click.Context, values: dict) -> None:
    from pipeline import metrics_file
    from pipeline.cli import check_outputs, resolve_device
    from pipeline.distributed import open_client
    from pipeline.evaluate import (evaluate_one_vs_all, format_summary, gallery_folder, gallery_location,
                                   has_gallery, metrics_payload, write_plots)

    params.load_params()  # a params.yaml that fails its check stops here, before anything is read or written
    head_params, run_params = head_settings(stage.name)
    head_cls = stage.head_class()
    values = apply_preset(ctx, values, _presets(stage.name), values.pop("preset", None))
    common = {k: values.pop(k) for k in ("cache_path", "protocol", "expect", "scheduler", "metrics_path", "plots_dir",
                                         "save_dir", "splits", "labels", "classes")}
    curves_dir = values.pop("curves_dir", None)
    curve_epochs = tuple(values.pop("curve_epochs", None) or ())
    if curve_epochs and curves_dir is None:
        raise click.UsageError("--curve-epochs chooses the epochs of the --curves files: give --curves too.")
    head_args = {k: values.pop(k) for k in list(values) if k in specs(head_params)}
    run = {k: values.pop(k) for k in list(values) if run_params is not None and k in specs(run_params)}
    extra = values  # the stage's own plain options
    # A localising head's heat-map gallery goes beside the --plots folder (gallery_folder).
    maps_dir = gallery_folder(common["plots_dir"]) if common["plots_dir"] is not None else None
    check_outputs(files={"--metrics": common["metrics_path"]},
                  folders={"--plots": common["plots_dir"], "--plots (its heat-map gallery)": maps_dir,
                           "--curves": curves_dir, "--save-heads": common["save_dir"]},
                  inputs={"--cache": common["cache_path"], **read_paths(ctx)})
    if "device" in head_args:
        head_args["device"] = str(resolve_device(head_args["device"]))
    head = head_cls(**head_args)
    head._check_params()  # before the cache is opened: a bad setting costs nothing
    cache, tasks = open_cache(common["cache_path"], common["expect"], common["classes"], common["protocol"])
    if stage.build is not None:
        head.set_params(**stage.build(cache, extra))
    seeds = list(run.get("seeds", (0,)))
    state = StageRun(stage, cache, tasks, head, seeds, run, extra, shift_plan(cache, common["splits"], common["labels"]))
    if stage.check is not None:
        stage.check(state)
    state.saver = saver_for(common["save_dir"], stage.name, cache, head.threshold_quantile,
                            str(getattr(head, "device", "cpu")),
                            **(stage.saver_options(state) if stage.saver_options else {}))
    desc = stage.desc(state) if stage.desc else stage.name
    with open_client(common["scheduler"]) as client:
        state.client = client
        if stage.evaluate is not None:
            results = stage.evaluate(state)
        else:
            results = evaluate_one_vs_all(cache, head, tasks, seeds=seeds, track_epochs=stage.curves, desc=desc,
                                          client=client, after_fit=state.saver, shift=state.shift,
                                          curve_epochs=curve_epochs)
        about = describe(stage, head, run, seeds)
        if stage.curves:
            about["auroc_is"] = "final epoch; best_epoch_auroc = best test AUROC over epochs (peeks at the test set)"
            if curve_epochs:
                about["auroc_is"] += f", over the scored epochs {', '.join(map(str, curve_epochs))} only"
                about["curve_epochs"] = list(curve_epochs)
        if stage.describe is not None:
            about.update(stage.describe(state))
        # The report's words, from the description as written (so that describe_metrics gives
        # an older file the same words from its description).
        about["setting_words"] = declared_words(stage.name, about)
        state.about = about
        payload = metrics_payload(results, cache.metadata, about)
        if maps_dir is not None and has_gallery(results):  # where the report finds it
            payload["about"]["gallery"] = gallery_location(maps_dir, common["metrics_path"])
        if stage.finish is not None:
            stage.finish(state, payload, results)
    metrics_file.write(common["metrics_path"], payload)
    write_plots(results, common["plots_dir"], curves_dir, maps_dir, cache)
    click.echo(format_summary(payload))
    if stage.report is not None:
        stage.report(state, payload)
    if state.saver is not None:
        from pipeline.heads.saving import saved_heads_note

        click.echo(saved_heads_note(state.saver, [task.name for task in tasks]))


def head_command(stage: Stage) -> click.Command:
    """The click command of a head's stage: the common options, an option per declared
    parameter of the head and of its stage (``settings.py``), --preset, and the stage's own."""
    head_params, run_params = head_settings(stage.name)

    @click.pass_context
    def main(ctx: click.Context, **values: Any) -> None:
        _run(stage, ctx, values)

    main.__doc__ = stage.doc
    command = apply_options(main, [
        cache_options(stage.name),
        output_options(stage.name, stage.what_saved, stage.curves),
        declared_options(stage.name, head_params, *([run_params] if run_params else []), skip=stage.params_only),
        preset_option(_presets(stage.name)),
        *stage.options,
    ])
    return click.command(context_settings=CONTEXT)(command)


def generic_command(name: str) -> click.Command:
    """The command of a registered head that has no command module of its own: the runner with
    no hooks, its options from the head's declared parameters."""
    from pipeline.heads.registry import head_class

    doc = sys.modules[head_class(name).__module__].__doc__ or f"Train and evaluate the {name} head."
    return head_command(Stage(name, what_saved="the fitted head", doc=doc, head_class=lambda: head_class(name)))


def _presets(name: str) -> dict:
    """The head's named configurations: ``PRESETS`` of its PARAMS class (``settings.py``)."""
    return head_settings(name)[0].PRESETS
