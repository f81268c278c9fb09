"""What every head's command shares: its common options (defaults from params.yaml), opening
the cache it scores, and the closing lines it prints.

A head's ``command.py`` adds its own options, builds its head from them and calls
``pipeline.evaluate.evaluate_one_vs_all`` on the protocol's tasks; heavy modules (torch, zarr)
are imported inside the command, so ``--help`` answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click

from pipeline import params
from pipeline.cli import verbosity_options
from pipeline.distributed import scheduler_option
from pipeline.protocol import FROM_DATASET, NORMAL_VS_ANOMALIES, PROTOCOLS
from pipeline.shift import SHIFT_LABELS

if TYPE_CHECKING:
    from pipeline.protocol import Task
    from pipeline.shift import ShiftPlan
    from pipeline.store.cache import FeatureCache

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def apply_options(command: Callable, options: list[Callable]) -> Callable:
    for option in reversed(options):
        command = option(command)
    return command


def cache_options(section: str) -> Callable[[Callable], Callable]:
    """--cache, --protocol, --classes, --device, --expect, --scheduler (defaults from
    ``params.yaml[section]``) and -q/--quiet, -v/--verbose (``pipeline.cli.verbosity_options``)."""
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
        params.option(section, "classes", help="Normal classes to evaluate: all, or comma-separated names or "
                                               f"indices ({NORMAL_VS_ANOMALIES}: the normal classes, together; "
                                               f"all: those the dataset records)."),
        params.option(section, "device", help="auto (GPU if there is one), cpu, cuda, cuda:<i>."),
        click.option("--expect", multiple=True, metavar="KEY=VALUE",
                     help="Refuse a cache whose metadata differs, e.g. backbone.name=resnet50 or "
                          "preprocessing.image_size=224 (repeatable)."),
        scheduler_option,
        verbosity_options,
    ])


def common_options(section: str, what_saved: str) -> Callable[[Callable], Callable]:
    """``cache_options`` and --metrics, --plots, --save-heads, --threshold-quantile, with the
    defaults of ``params.yaml[section]``, and --shift, --shift-labels (``params.yaml[shift]``)."""
    def decorate(command: Callable) -> Callable:
        options = [
            cache_options(section),
            click.option("--metrics", "metrics_path", default=f"metrics/{section}.json", show_default=True,
                         help="Where to write the metrics JSON (per class and mean AUROC, AUPR, FPR@95%TPR)."),
            click.option("--plots", "plots_dir", default=None,
                         help="Folder for per-class ROC curves (roc_<class>.json, DVC plots; first seed)."),
            click.option("--save-heads", "save_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
                         help=f"Also save each class's head as DIR/<class>.head (normal-vs-anomalies: the one "
                              f"head, DIR/<normal class>.head), to score new images with "
                              f"python -m stages.score: {what_saved}, the cache's metadata and a threshold, the "
                              f"--threshold-quantile quantile of its training scores. Metrics are unchanged. With "
                              f"--scheduler each file is written by the worker that trains the class, so DIR "
                              f"must be on storage the workers share (like the cache)."),
            params.option(section, "threshold_quantile", type=click.FloatRange(0, 1),
                          help="With --save-heads: the quantile of the training scores taken as the anomaly "
                               "threshold."),
            params.option("shift", "splits", "--shift", "--test-split", "shift", metavar="none|all|SPLIT,...",
                          help="Robustness protocol: each class's head, fitted once, also scores these corrupted "
                               "copies of the test split (made by extract --corruptions): all, or comma-separated "
                               "split names (test@glass_blur@5), corruptions (all their severities) or "
                               "corruption@severity. The metrics gain a shift section: SD (clean), SPD (mean over "
                               "corruptions at severity 5), per corruption and severity."),
            params.option("shift", "labels", "--shift-labels", type=click.Choice(SHIFT_LABELS),
                          help="unchanged: a corrupted normal-class image is normal (the paper's SPD); anomalous: "
                               "it is an anomaly, scored against the same images clean (does the head flag the "
                               "corruption?); both."),
        ]
        return apply_options(command, options)
    return decorate


def open_cache(cache_path: str, expect: tuple[str, ...], classes: str,
               protocol: str = FROM_DATASET) -> tuple["FeatureCache", list["Task"]]:
    """The cache, refused unless its metadata matches ``expect``, and the tasks of the protocol
    (``pipeline.protocol.tasks``) on the chosen classes, each refused before any training if its
    labels cannot be graded (a class without training images, a test set without anomalies)."""
    from pipeline.store.cache import FeatureCache
    from pipeline.cli import parse_expectations
    from pipeline.protocol import protocol_of, split_for, tasks

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
              **state_options):
    """The after-fit hook that saves each task's head, or None without --save-heads."""
    if save_dir is None:
        return None
    from pipeline.heads.saving import HeadSaver

    return HeadSaver.for_cache(Path(save_dir), kind, cache, threshold_quantile=threshold_quantile, device=device,
                               state_options=state_options)
