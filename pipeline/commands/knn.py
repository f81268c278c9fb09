"""DN2 kNN head over a feature cache, one-vs-all for each class (or the cache's protocol).

    python -m stages.knn --cache cache/digits_efficientnet_lite0_224.zarr --k 2

Its parameters are the head's (``pipeline/heads/knn/settings.py``); what is its own here: the
ways of reading a gallery larger than memory, and the float32 saved gallery.
"""

from __future__ import annotations

import click

from pipeline.cli import detail
from pipeline.commands.stage import Stage, StageRun, head_command
from pipeline.errors import PipelineError

OPTIONS = [
    click.option("--stream", is_flag=True,
                 help="Read each class's gallery chunk by chunk from the cache instead of loading the training "
                      "split, for galleries larger than memory."),
    click.option("--out-of-core", is_flag=True,
                 help="Score each class with a Dask computation over the cache's chunks: one task per chunk keeps "
                      "its K nearest distances, partial results are merged in a tree, so memory stays at a few "
                      "chunks per worker whatever the gallery's size (the test split is held in memory). With "
                      "--scheduler the chunk tasks are spread over the cluster's workers."),
    click.option("--save-float32", is_flag=True,
                 help="With --save-heads: keep the gallery in float32 (a file twice as large) instead of float16."),
]


def head_class() -> type:
    from pipeline.heads.knn.head import KNNHead

    return KNNHead


def access(run: StageRun) -> str:
    if run.extra["stream"] and run.extra["out_of_core"]:
        raise PipelineError("--stream and --out-of-core are two ways of reading a large gallery; give one of them.")
    return "stream" if run.extra["stream"] else "dask" if run.extra["out_of_core"] else "memory"


def evaluate(run: StageRun) -> dict:
    from pipeline.evaluate import evaluate_one_vs_all

    mode = access(run)
    # A gallery read chunk by chunk is not scored against itself for a threshold unless saved
    # (the saver does it): leave-one-out over a gallery larger than memory is the costly part.
    head = run.head if mode == "memory" else run.head.set_params(threshold_quantile=None)
    return evaluate_one_vs_all(run.cache, head, run.tasks, desc=f"kNN k={run.head.k}", train_access=mode,
                               client=run.client, after_fit=run.saver, shift=run.shift)


def report(run: StageRun, payload: dict) -> None:
    if "diagnostics" in payload:
        certified = payload["diagnostics"]["per_class"]
        detail(f"kNN bfloat16 screen: test images certified at once, mean "
               f"{100 * payload['diagnostics']['mean']['certified_fraction']:.2f}% ("
               + ", ".join(f"{name} {100 * c['certified_fraction']:.2f}" for name, c in certified.items())
               + "); the others were searched again, exactly.")


STAGE = Stage(
    "knn", what_saved="k, the gallery (float16 unless --save-float32)", head_class=head_class,
    doc="""Score every test image by the sum of squared L2 distances to its K nearest normal
    training features (DN2), for each normal class in turn.""",
    options=OPTIONS, check=lambda run: access(run) and None, evaluate=evaluate, report=report,
    saver_options=lambda run: {"gallery_dtype": "float32" if run.extra["save_float32"] else "float16"})
main = head_command(STAGE)

if __name__ == "__main__":
    main()
