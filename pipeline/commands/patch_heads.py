"""What the patch heads' commands share (``patchcore.py``, ``padim.py``): refusing a cache
without patch maps, or without a stage asked for, before any data is read; and the metrics'
description of the maps read and of the pixel metrics."""

from __future__ import annotations

from pipeline.commands.stage import StageRun
from pipeline.errors import PipelineError


def check(run: StageRun) -> None:
    there = run.cache.trunk_names("train")
    if not there:
        raise PipelineError(f"the feature cache {run.cache.path} holds no full-resolution maps, which the {run.stage.name} "
                            f"head reads patch by patch. Extract it again with them: the python -m pipeline.extract "
                            f"command that made it, with --patch-maps patch (and --overwrite).")
    missing = [name for name in (run.head.layers or ()) if name not in there]
    if missing:
        raise PipelineError(f"--layers {','.join(missing)}: the feature cache {run.cache.path} has no full-resolution "
                            f"map of {', '.join(missing)}; it has {', '.join(there)}.")


def describe(run: StageRun) -> dict:
    masks = "masks" in run.cache.array_names("test")
    return {"layers": list(run.head.layers or run.cache.trunk_names("train")),
            "pixel_metrics": ("pixel AUROC and AUPRO (to 30% FPR) of the anomaly maps at the input resolution, over "
                              "the test images with masks" if masks else "none: the test images have no masks")}
