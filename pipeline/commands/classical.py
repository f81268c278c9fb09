"""A classical detector over a feature cache, one-vs-all for each class (or the cache's protocol).

    python -m stages.classical --cache cache/digits_efficientnet_lite0_224.zarr --detector ocsvm
    python -m stages.classical --cache cache/digits_efficientnet_lite0_224.zarr --detector pyod:ECOD

Its parameters are the head's (``pipeline/heads/classical/settings.py``); what is its own here:
the detector (--detector, one of params.yaml's ``detectors`` list) and its further constructor
arguments (--option), one run for a deterministic detector whatever the seeds, and the metrics'
description of the estimator, keeping only the settings the detector reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
import yaml

from pipeline import params
from pipeline.commands.stage import Stage, StageRun, head_command
from pipeline.declare import specs
from pipeline.errors import PipelineError
from pipeline.heads.classical.settings import DETECTOR_SETTINGS, ClassicalParams, ClassicalRun

if TYPE_CHECKING:
    from pipeline.heads.classical.head import ClassicalHead
    from pipeline.store.cache import FeatureCache


def head_class() -> type:
    from pipeline.heads.classical.head import ClassicalHead

    return ClassicalHead


def parse_options(values: tuple[str, ...]) -> dict:
    """('n_bins=20', 'alpha=0.2') -> {'n_bins': 20, 'alpha': 0.2}: values read as YAML scalars."""
    options = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.strip().isidentifier():
            raise click.BadParameter(f"{value!r}: give KEY=VALUE, e.g. n_bins=20")
        try:
            options[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            options[key.strip()] = text
    return options


def canonical_detector(ctx: click.Context, option: click.Parameter, value: str) -> str:
    """--detector as the head takes it: pyod-<Name> read as pyod:<Name>, an unknown name refused."""
    from pipeline.heads.classical import detectors

    try:
        return detectors.canonical(value)
    except PipelineError as error:
        raise click.BadParameter(error.message) from None


def first_detector() -> str:
    """The default --detector: the first of params.yaml's classical.detectors."""
    return str(params.default("classical", "detectors", ClassicalRun.detectors)[0])


OPTIONS = [
    click.option("--detector", default=first_detector(), show_default=True, callback=canonical_detector,
                 help=f"{specs(ClassicalParams)['detector'].help} A deterministic "
                      f"detector (no random_state: ocsvm, lof, ECOD, ...) runs once whatever --seeds. Default: the "
                      f"first of params.yaml's classical.detectors (dvc.yaml runs each of them)."),
    click.option("--option", "options", multiple=True, metavar="KEY=VALUE", callback=lambda c, p, v: parse_options(v),
                 help="Another constructor argument of the detector's estimator, e.g. --option n_bins=20 for "
                      "pyod:HBOS (repeatable; recorded in the metrics)."),
]


def check(run: StageRun) -> None:
    from pipeline.heads.classical import detectors

    run.head.estimator()  # before any work: an unknown or missing PyOD detector is refused here
    if len(run.seeds) > 1 and not detectors.is_random(run.head.detector):
        click.echo(f"{run.head.detector} is deterministic (no random_state): one run per class, not "
                   f"{len(run.seeds)}.", err=True)
        del run.seeds[1:]  # the list the evaluation and the description read


def describe(run: StageRun) -> dict:
    from pipeline.heads.classical import detectors

    head = run.head
    estimator = head.estimator()
    about: dict[str, Any] = {"detector": head.detector, **({"options": head.options} if head.options else {}),
                             "library": detectors.library_version(head.detector),
                             "estimator": type(estimator).__name__,
                             "estimator_params": detectors.plain_params(estimator)}
    if batch_dependence(run.cache, head, run.tasks[0].normal):
        about["batch_dependent_scores"] = True
    return about


def finish(run: StageRun, payload: dict, results: dict) -> None:
    """Keep in the description only the settings this detector reads (the report names them in
    its row), and the scoring only where it makes a difference (scores that depend on the
    batch); name the --option arguments in the report's words."""
    from pipeline.heads.classical import detectors

    about = payload["about"]
    words = about.setdefault("setting_words", {})
    unread = [name for name in DETECTOR_SETTINGS if name not in detectors.relevant_settings(run.head.detector)]
    if not about.get("batch_dependent_scores"):
        unread.append("scoring")
    for name in unread:
        about.pop(name, None)
        words.pop(name, None)
    if run.head.options:
        words["options"] = options_words(run.head.options)


def options_words(options: dict) -> str:
    """The --option arguments in the report's words."""
    return ", ".join(f"{key}={value}" for key, value in options.items())


def batch_dependence(cache: "FeatureCache", head: "ClassicalHead", normal: tuple[int, ...], rows: int = 200) -> bool:
    """Whether the detector's score of a row depends on the rows scored with it: known for
    scikit-learn's detectors and ECOD, COPOD; else measured by a head fitted on (at most 200 of)
    the first task's training rows (those of its ``normal`` classes). Training rows only: the test set plays no part."""
    import numpy as np
    from sklearn.base import clone

    from pipeline.heads.classical import detectors

    known = detectors.batch_dependence(head.detector)
    if known is not None:
        return known
    index = np.flatnonzero(np.isin(cache.labels("train"), normal))[:rows]
    return bool(clone(head).set_params(threshold_quantile=None).fit(cache.features("train", index)).batch_dependent_)


STAGE = Stage(
    "classical", head_class=head_class, what_saved="the detector's name and settings and its training features (loading fits it again on "
                            "them: no pickled estimator)",
    doc="""Fit a classical outlier detector on each normal class's training features in turn and
    score the test set (higher = more anomalous): scikit-learn's OC-SVM, Isolation Forest or
    LOF, or any PyOD detector. CPU only.""",
    params_only=("detectors",), options=OPTIONS, desc=lambda run: run.head.detector,
    build=lambda cache, extra: {"options": extra["options"]}, check=check, describe=describe, finish=finish)
main = head_command(STAGE)

if __name__ == "__main__":
    main()
