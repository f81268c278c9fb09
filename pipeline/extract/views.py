"""Augmented views of training images, cached beside a feature cache (for AnoMem's stage A).

AnoMem contrasts two augmented views of each image. With a frozen backbone the views have
to be run through it at extraction time, so they are cached once, like the plain features,
in a second store next to the cache::

    cache/<name>.zarr          plain features (and maps) of train and test
    cache/<name>.views.zarr    train/features (N, V, D), train/maps/<layer> (N, V, C, g, g),
                               train/labels (N,), train/rows (N,) = rows of <name>.zarr's train split

It uses the same chunked, checksummed, resumable format as the plain cache, and records the
plain cache's metadata, so a head can refuse views made from another cache. The views of a
batch are drawn from a seed derived from its first row: a resumed or sharded run gives the
same views as a single run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import click
import numpy as np
import torch
import torchvision.transforms.v2 as T

from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from pipeline.extract.datasets import ImageDataset, UnreadableImageError
from pipeline.extract.loop import ChunkBuffer, ChunkWriter, backbone_batches, chunk_batches, user_facing_errors
from pipeline.extract.preprocess import Preprocessing
from pipeline.store.cache import ArraySpec, FeatureCache, open_or_create
from pipeline.store.locks import attrs_lock, writer_lock
from pipeline.store.views import views_path


@dataclass(frozen=True)
class Augmentation:
    """SimCLR's augmentations (Chen et al. 2020, appendix A), CIFAR strength by default.

    Random resized crop straight to the backbone's input size, horizontal flip, colour
    jitter (strength s: brightness, contrast, saturation 0.8 s, hue 0.2 s) with probability
    0.8, grayscale with probability 0.2. SimCLR leaves out the blur for CIFAR; so do we.
    """

    crop_scale_min: float = 0.08
    jitter_strength: float = 0.5
    jitter_probability: float = 0.8
    grayscale_probability: float = 0.2
    flip_probability: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.crop_scale_min <= 1:
            raise PipelineError(f"the smallest crop scale must be in (0, 1], got {self.crop_scale_min}.")

    def to_dict(self) -> dict:
        return asdict(self)

    def transform(self, image_size: int) -> T.Compose:
        s = self.jitter_strength
        return T.Compose([
            T.RandomResizedCrop(image_size, scale=(self.crop_scale_min, 1.0), antialias=True),
            T.RandomHorizontalFlip(self.flip_probability),
            T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=self.jitter_probability),
            T.RandomGrayscale(self.grayscale_probability),
        ])


def choose_rows(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Training rows that get views: all, or ``per_class`` drawn at random from each class."""
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=min(per_class, int((labels == c).sum())), replace=False)
              for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


class _ViewBatches(torch.utils.data.Dataset):
    """Batches of ``views`` augmented copies of each image: (views * B, 3, S, S), view-major."""

    def __init__(self, images, batches: list[list[int]], preprocessing: Preprocessing,
                 augmentation: Augmentation, views: int, seed: int) -> None:
        self.images, self.batches, self.preprocessing = images, batches, preprocessing
        self.augment = augmentation.transform(preprocessing.image_size)
        self.views, self.seed = views, seed

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> torch.Tensor | UnreadableImageError:
        rows = self.batches[index]
        try:  # each image decoded once for all its views
            images = [Preprocessing.rgb(self.images[i]) for i in rows]
        except UnreadableImageError as unreadable:
            return unreadable  # raised in a worker, it would reach the main process only as text
        out = []
        # Seeded by the batch's first row, in a forked RNG: the same views whatever the run,
        # worker or resume, without touching the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + rows[0])
            for _ in range(self.views):
                for image in images:
                    out.append(self.augment(image).float().div_(255.0))
        return self.preprocessing.normalise(torch.stack(out))


def extract_views(dataset: ImageDataset, cache: FeatureCache, loaded, *, views: int = 2,
                  per_class: int | None = None, seed: int = 0, augmentation: Augmentation = Augmentation(),
                  batch_size: int = 64, workers: int = 1, device: str = "auto", overwrite: bool = False,
                  protected: Sequence[str | Path] = ()) -> FeatureCache:
    """Run the backbone over ``views`` augmented copies of (some of) the training images.

    ``cache`` is the complete plain cache of the same dataset and options: the views take
    its backbone, preprocessing (normalisation; the crop replaces the resize), maps and
    precision. ``loaded`` is what ``load_backbone`` returned for it. The views store replaces
    only a store made by this project, never the ``protected`` folders (the data directory).
    """
    if views < 1:
        raise PipelineError(f"--views must be at least 1, got {views}.")
    out = views_path(cache.path)
    parent = cache.metadata
    preprocessing = Preprocessing(**parent["preprocessing"])
    maps_info = parent["features"]["maps"]
    train = dataset.split("train")
    if len(train.labels) != cache.size("train"):
        raise PipelineError(f"the dataset has {len(train.labels)} training images but {cache.path} has "
                            f"{cache.size('train')}: give the extraction the same dataset options.")
    rows = choose_rows(train.labels, per_class, seed)
    metadata = {"views_of": parent, "dataset": {"classes": parent["dataset"]["classes"]},
                "views": {"count": views, "per_class": per_class, "seed": seed, "rows": len(rows),
                          "augmentation": augmentation.to_dict()}}
    specs = [ArraySpec("features", (views, int(cache.array("train").shape[1])), parent["features"]["dtype"]),
             ArraySpec("labels", (), "int64"), ArraySpec("rows", (), "int64")]
    specs += [ArraySpec(f"maps/{name}", (views, info["channels"], info["grid"], info["grid"]), info["dtype"])
              for name, info in maps_info.items()]
    with writer_lock(out), user_facing_errors(out, dataset.root):
        device_ = resolve_device(device)
        with attrs_lock(out):
            store = open_or_create(out, metadata, {"train": specs}, {"train": len(rows)}, cache.chunk_rows, overwrite,
                                   protected)
        if store.is_complete:
            click.echo(f"{out} is already complete; nothing to do.")
            return store
        chunks = sorted(set(range(len(store.chunk_slices("train")))) - store.done_chunks("train"))
        plan = chunk_batches(store.chunk_slices("train"), chunks, batch_size, rows)
        inputs = _ViewBatches(train.images, [batch_rows for _, batch_rows, _ in plan], preprocessing, augmentation,
                              views, seed)
        total = sum(len(batch_rows) for _, batch_rows, _ in plan) * views
        started = time.perf_counter()
        buffer = ChunkBuffer()
        with ChunkWriter() as writer:
            batches = backbone_batches(loaded[0], inputs, [batch_rows for _, batch_rows, _ in plan], maps_info,
                                       device_, precision=parent["features"].get("compute_precision", "float32"),
                                       engine=parent["features"].get("engine", "torch"),
                                       int8=parent["features"].get("int8"),
                                       workers=workers, desc=f"views x{views}", images_per_row=views)
            for (chunk, _, last), (batch_rows, outputs) in zip(plan, batches):
                n = len(batch_rows)
                # (views * n, ...) view-major -> (n, views, ...)
                per_row = {name: values.reshape(views, n, *values.shape[1:]).swapaxes(0, 1)
                           for name, values in outputs.items()}
                buffer.add({**per_row, "rows": np.asarray(batch_rows, dtype=np.int64)})
                if last:
                    values = buffer.take()
                    values["labels"] = train.labels[values["rows"]]
                    writer.submit(store.write_chunk, "train", chunk, values)
        writer.wait()
        store.mark_complete()
        elapsed = time.perf_counter() - started
        click.echo(f"wrote {out}: {len(rows)} training images x {views} views ({total} forward passes in "
                   f"{elapsed:.1f} s, {total / max(elapsed, 1e-9):.1f} images/s).")
        return store
