"""A classical detector over a feature cache, one-vs-all for each class.

    python -m stages.classical --cache cache/digits_efficientnet_lite0_224.zarr --detector ocsvm
    python -m stages.classical --cache cache/digits_efficientnet_lite0_224.zarr --detector pyod:ECOD
"""

from __future__ import annotations

import click
import yaml

from pipeline import params
from pipeline.errors import PipelineError
from pipeline.heads.classical import PYOD_EXTRA, SCORINGS, SKLEARN_DETECTORS
from pipeline.heads.scaling import SCALINGS
from pipeline.heads.stage import CONTEXT, common_options, open_cache, saver_for, shift_plan


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


def first_detector() -> str:
    """The default --detector: the first of params.yaml's classical.detectors."""
    listed = params.default("classical", "detectors")
    if not isinstance(listed, list) or not listed:
        raise PipelineError(f"{params.params_path()}: classical.detectors must be a list of detector names.")
    return str(listed[0])


@click.command(context_settings=CONTEXT)
@common_options("classical", "the detector's name and settings and its training features (loading fits it again "
                             "on them: no pickled estimator)")
@click.option("--detector", default=first_detector(), show_default=True,
              help=f"{', '.join(SKLEARN_DETECTORS)} (scikit-learn's OneClassSVM with an RBF kernel, IsolationForest, "
                   f"LocalOutlierFactor in novelty mode), or pyod:<Name>, any PyOD detector by its class name "
                   f"(pyod:ECOD, pyod:COPOD, pyod:HBOS, ...; needs {PYOD_EXTRA}); pyod-<Name> is the same. "
                   f"Default: the first of params.yaml's classical.detectors (dvc.yaml runs each of them).")
@params.option("classical", "scaling", type=click.Choice(SCALINGS),
               help="Before the detector, fitted on the training rows: none; standardise (each dimension by its "
                    "training mean and standard deviation); l2 (each vector to unit length).")
@params.option("classical", "nu", type=click.FloatRange(0, 1, min_open=True),
               help="ocsvm: upper bound on the share of training rows outside the boundary (scikit-learn's default).")
@params.option("classical", "gamma", help="ocsvm: RBF kernel width: scale (1 / (n_features * X.var()), scikit-learn's "
                                          "default), auto (1 / n_features) or a number.")
@params.option("classical", "n_estimators", type=click.IntRange(1), help="iforest: number of trees.")
@params.option("classical", "n_neighbors", type=click.IntRange(1),
               help="lof: neighbours (scikit-learn's default; n - 1 for a class with fewer training images).")
@params.option("classical", "seeds", type=click.IntRange(1),
               help="Seeds 0..N-1 (random_state) for detectors that take one (iforest, PyOD's randomised ones); "
                    "mean and standard deviation are reported. A deterministic detector runs once.")
@params.option("classical", "scoring", type=click.Choice(SCORINGS),
               help="For detectors whose score of a row depends on the rows scored with it (PyOD's ECOD and "
                    "COPOD put them into their empirical distributions): alone scores each test image as if it "
                    "came on its own (with the training rows only), as a deployed detector would; joint scores "
                    "the whole test set in one call, as PyOD's decision_function does (one-vs-all, 90% of the "
                    "test set are anomalies, which then shape the distribution they are measured against).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", callback=lambda c, p, v: parse_options(v),
              help="Another constructor argument of the detector's estimator, e.g. --option n_bins=20 for "
                   "pyod:HBOS (repeatable; recorded in the metrics).")
def main(cache_path, protocol, detector, scaling, nu, gamma, n_estimators, n_neighbors, seeds, scoring, options, classes, device,
         expect, scheduler, metrics_path, plots_dir, save_dir, threshold_quantile, shift, shift_labels):
    """Fit a classical outlier detector on each normal class's training features in turn and
    score the test set (higher = more anomalous): scikit-learn's OC-SVM, Isolation Forest or
    LOF, or any PyOD detector. CPU only (--device is not used)."""
    from pipeline.cli import check_outputs
    from pipeline.distributed import open_client
    from pipeline.evaluate import evaluate_one_vs_all, format_summary, write_results
    from pipeline.heads.classical import detectors
    from pipeline.heads.classical.head import ClassicalHead

    check_outputs(files={"--metrics": metrics_path}, folders={"--plots": plots_dir, "--save-heads": save_dir})
    detector = detectors.canonical(detector)
    head = ClassicalHead(detector=detector, scaling=scaling, nu=nu, gamma=gamma, n_estimators=n_estimators,
                         n_neighbors=n_neighbors, options=options, scoring=scoring, threshold_quantile=threshold_quantile)
    head._check_params()
    estimator = head.estimator()  # before any work: an unknown or missing PyOD detector is refused here
    if seeds > 1 and not detectors.is_random(detector):
        click.echo(f"{detector} is deterministic (no random_state): one run per class, not {seeds}.", err=True)
        seeds = 1
    cache, tasks = open_cache(cache_path, expect, classes, protocol)
    shifted = shift_plan(cache, shift, shift_labels)
    saver = saver_for(save_dir, "classical", cache, threshold_quantile, "cpu")
    with open_client(scheduler) as client:
        results = evaluate_one_vs_all(cache, head, tasks, seeds=range(seeds), desc=detector, client=client,
                                      after_fit=saver, shift=shifted)
    about = {"head": "classical", "detector": detector, "scaling": scaling,
             **{name: getattr(head, name) for name in detectors.relevant_settings(detector)},
             **({"options": options} if options else {}), "seeds": seeds,
             "library": detectors.library_version(detector), "estimator": type(estimator).__name__,
             "estimator_params": detectors.plain_params(estimator)}
    if batch_dependence(cache, head, tasks[0].normal):
        about.update(batch_dependent_scores=True, scoring=scoring)
    payload = write_results(results, cache.metadata, about, metrics_path, plots_dir)
    click.echo(format_summary(payload))
    if saver is not None:
        from pipeline.heads.saving import saved_heads_note  # loads torch: only when heads were saved

        click.echo(saved_heads_note(saver, [task.name for task in tasks]))


def batch_dependence(cache, head, normal: tuple[int, ...], rows: int = 200) -> bool:
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


if __name__ == "__main__":
    main()
