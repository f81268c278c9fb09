"""Ensemble over several caches of the same images: one member head per cache (any registered
head), each member's score standardised by its normal training images' scores, the standardised
scores summed (``pipeline/heads/ensemble/head.py``), for each normal class in turn.

    python -m stages.ensemble --cache cache/cifar10_efficientnet_lite0_224.zarr \\
        --with-cache cache/cifar10_efficientnet_lite1_224.zarr \\
        --with-cache cache/cifar10_efficientnet_lite2_224.zarr --member gaussian
    python -m stages.ensemble --cache A --with-cache B --member knn --member-settings k=2

The shape, and why. The caches meet in this command, nowhere else: it opens them, refuses any
that is not of the same images in the same order (``same_images``), and hands the one
evaluation loop (``pipeline.evaluate.evaluate_one_vs_all``) a read-only view of them as one
cache (``JoinedCaches``): the first cache's pooled vectors and labels, and every cache's other
arrays under ``member<i>/``, the layout the ensemble head reads (``pipeline.heads.ensemble.join``).
The loop does for the ensemble what it does for every head: per task, fit a clone on the task's
training rows (the ensemble head fits its member on each cache's rows), score the test set, grade
it with the same metrics code, write the same metrics file. The store is unchanged and knows no
head; the ensemble head reads arrays. Each member's standardised score is graded beside the sum
(``controls`` in the metrics: member0 is --cache, member1 the first --with-cache, ...), so one
run gives every member's AUROC too.

Same images: the caches' ``dataset`` records must agree (name, classes, split sizes and, for
image folders, ``content_sha256``: the SHA-256 over every file's relative path and content, in
order, so the file lists and their order agree; the folder's name may differ when both carry
it), and so must their train and test labels. The backbone, image size and preprocessing may
differ: that is the point.

Not done here: --scheduler (the view is opened in this process; a Dask worker reopens a cache by
its path), --shift (corrupted test splits are per cache), --save-heads (scoring new images with
an ensemble needs every cache's features of them; ``EnsembleHead.save`` works from Python), and
members that read augmented views (AnoMem's stage A).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from pipeline.commands.stage import Stage, StageRun, head_command
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.store.cache import FeatureCache

# Keys of a cache's ``dataset`` record that may differ between caches of the same images: the
# folder's name, when both record the files' content digest.
RENAMEABLE = ("folder",)
PREFIX = "member"  # as pipeline.heads.ensemble.head.PREFIX (kept here: --help imports no head)


def head_class() -> type:
    from pipeline.heads.ensemble.head import EnsembleHead

    return EnsembleHead


def same_images(caches: list["FeatureCache"]) -> None:
    """Refuse, naming the cache and what differs, caches that are not of the same images in the
    same order as the first."""
    first = caches[0]
    reference = first.metadata.get("dataset", {})
    for cache in caches[1:]:
        other = cache.metadata.get("dataset", {})
        digests = "content_sha256" in reference and "content_sha256" in other
        differ = [key for key in sorted(set(reference) | set(other))
                  if reference.get(key) != other.get(key) and not (digests and key in RENAMEABLE)]
        if differ:
            shown = "; ".join(f"dataset.{key}: {_short(reference.get(key))} there, {_short(other.get(key))} here"
                              for key in differ)
            raise PipelineError(f"{cache.path} is not a cache of the same images as {first.path} ({shown}): an "
                                f"ensemble sums scores of the same images, row by row. Extract every cache from the "
                                f"same dataset (the same folder of files).")
        for split in ("train", "test"):
            mine, theirs = first.labels(split), cache.labels(split)
            if len(mine) != len(theirs) or not np.array_equal(mine, theirs):
                where = (f"{len(theirs)} {split} images, not {len(mine)}" if len(mine) != len(theirs) else
                         f"{split} label of row {int(np.flatnonzero(mine != theirs)[0])} differs")
                raise PipelineError(f"{cache.path} is not a cache of the same images as {first.path}: {where}.")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class JoinedCaches:
    """Several caches of the same images, read as one by the evaluation loop (in this process):
    the first cache's pooled vectors, labels and metadata; ``maps/member<i>/pooled`` the pooled
    vectors of cache i >= 1; ``maps/member<i>/<map>`` and ``trunk/member<i>/<stage>`` every cache's
    maps when the member head reads them. Reads only; every read is the cache's own, checked."""

    def __init__(self, caches: list["FeatureCache"], maps: bool, trunk: bool) -> None:
        self.caches, self.with_maps, self.with_trunk = caches, maps, trunk
        self.path = caches[0].path

    @property
    def metadata(self) -> dict:
        return self.caches[0].metadata

    @property
    def classes(self) -> list[str]:
        return self.caches[0].classes

    def labels(self, split: str) -> np.ndarray:
        return self.caches[0].labels(split)

    def features(self, split: str, rows: Any = None, dtype: Any = np.float32) -> np.ndarray:
        return self.caches[0].features(split, rows, dtype)

    def map_names(self, split: str = "train") -> list[str]:
        names = []
        for i, cache in enumerate(self.caches):
            if i:
                names.append(f"{PREFIX}{i}/pooled")
            if self.with_maps:
                names += [f"{PREFIX}{i}/{name}" for name in cache.map_names(split)]
        return names

    def trunk_names(self, split: str = "train") -> list[str]:
        if not self.with_trunk:
            return []
        return [f"{PREFIX}{i}/{name}" for i, cache in enumerate(self.caches) for name in cache.trunk_names(split)]

    def array_names(self, split: str) -> list[str]:
        return self.caches[0].array_names(split)

    def read(self, split: str, name: str = "features", rows: Any = None) -> np.ndarray:
        kind, _, rest = name.partition("/")
        if kind in ("maps", "trunk") and rest.startswith(PREFIX):
            member, _, inner = rest.partition("/")
            cache = self.caches[int(member[len(PREFIX):])]
            if kind == "maps" and inner == "pooled":
                return cache.features(split, rows)
            return cache.read(split, f"{kind}/{inner}", rows)
        return self.caches[0].read(split, name, rows)


def check(run: StageRun) -> None:
    """The other caches opened and checked against the first, and what the member reads, before
    any fit."""
    from pipeline.store.cache import FeatureCache

    if run.shift is not None:
        raise PipelineError("the ensemble stage does not run the robustness protocol (--shift): each cache has its "
                            "own corrupted splits. Run --shift none.")
    caches = [run.cache, *(FeatureCache.open(path) for path in run.extra["with_caches"])]
    resolved = [Path(c.path).resolve() for c in caches]
    if len(set(resolved)) != len(resolved):
        raise PipelineError("a cache is given twice (--cache and --with-cache name the caches of the ensemble, one "
                            "member each).")
    same_images(caches)
    member = run.head._prototype()
    if member.needs_views:
        raise PipelineError(f"the {run.head.member} head reads augmented views, which the ensemble does not carry: "
                            f"choose another member.")
    for cache in caches:
        if member.needs_maps and not cache.map_names("train"):
            raise PipelineError(f"{cache.path} has no intermediate maps, which the {run.head.member} member reads "
                                f"with these settings: extract it with --maps intermediate (or the stages to use).")
        if member.needs_trunk and not cache.trunk_names("train"):
            raise PipelineError(f"{cache.path} has no full-resolution maps, which the {run.head.member} member reads.")
    run.extra["joined"] = JoinedCaches(caches, member.needs_maps, member.needs_trunk)


def evaluate(run: StageRun) -> dict:
    from pipeline.evaluate import evaluate_one_vs_all

    if run.client is not None:
        raise PipelineError("the ensemble runs in this process: its view of several caches does not travel to Dask "
                            "workers. Leave out --scheduler.")
    if run.saver is not None:
        raise PipelineError("--save-heads is not offered for the ensemble: scoring new images with it needs every "
                            "cache's features of them, which python -m stages.score does not make. Save from Python "
                            "(EnsembleHead.save) if you need the fitted heads.")
    return evaluate_one_vs_all(run.extra["joined"], run.head, run.tasks, seeds=run.seeds,
                               desc=f"ensemble of {len(run.extra['joined'].caches)} {run.head.member}")


def _labels(run: StageRun) -> list[dict]:
    from pipeline.cli import cache_label

    return [{"member": f"{PREFIX}{i}", "cache": str(cache.path), **cache_label(cache.metadata)}
            for i, cache in enumerate(run.extra["joined"].caches)]


def describe(run: StageRun) -> dict:
    return {"members": _labels(run),
            "score": f"sum over caches of the {run.head.member} head's score, each minus the mean and over the "
                     f"standard deviation of its training scores ({run.head.standardise})"}


def finish(run: StageRun, payload: dict, results: dict) -> None:
    """The metrics' labels name every cache's backbone (and image size, preprocessing where they
    differ), joined with '+', in member order."""
    labels = _labels(run)
    about = payload["about"]
    for key in ("backbone", "image_size", "preprocessing"):
        values = [label[key] for label in labels]
        about[key] = values[0] if len(set(map(str, values))) == 1 and key != "backbone" else "+".join(map(str, values))


def report(run: StageRun, payload: dict) -> None:
    controls = payload.get("controls", {})
    for label in _labels(run):
        figures = controls.get(label["member"], {}).get("mean")
        if figures:
            click.echo(f"  {label['member']} ({label['backbone']} @ {label['image_size']}, standardised alone): "
                       f"mean AUROC {100 * figures['auroc']:.2f}%")


STAGE = Stage(
    "ensemble", head_class=head_class,
    what_saved="refused by this stage (scoring new images needs every cache's features of them; save from Python)",
    doc="""Ensemble over several caches of the same images (--cache and each --with-cache, e.g. one
    per backbone): the member head (--member) is fitted on each cache for each normal class in
    turn; each member's test scores are standardised by the mean and standard deviation of its
    scores of the class's training images (--standardise) and summed. The metrics also grade each
    member's standardised score alone (controls member0, member1, ...). In process only.""",
    options=[click.option("--with-cache", "with_caches", multiple=True, required=True,
                          type=click.Path(exists=True, file_okay=False), metavar="CACHE",
                          help="Another feature cache of the same images as --cache (the same dataset, files and "
                               "order; another backbone or image size), one member each. Repeatable.")],
    desc=lambda run: f"ensemble {run.head.member}", check=check, evaluate=evaluate, describe=describe,
    finish=finish, report=report)
main = head_command(STAGE)

if __name__ == "__main__":
    main()
