"""Extraction: a dataset through a frozen backbone into a Zarr feature cache, chunk by chunk,
resumable (the work behind ``python -m pipeline.extract``, in command.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import click
import numpy as np
import torch
from torch.utils.data import ConcatDataset

from pipeline.devices import resolve_device
from pipeline.files import safe_filename
from pipeline.errors import PipelineError
from pipeline.backbones import load_backbone
from pipeline.extract.datasets import ImageDataset, drop_unreadable
from pipeline.extract.masks import TestMasks
from pipeline.extract.loop import (ChunkBuffer, ChunkWriter, PreprocessedBatches, backbone_batches, engine_version,
                                   resolve_engine, resolve_precision,
                                   chunk_batches, user_facing_errors)
from pipeline.extract.names import PATCH_WORD
from pipeline.extract.preprocess import Preprocessing
from pipeline.store.cache import DEFAULT_CHUNK_ROWS, ArraySpec, FeatureCache, open_or_create
from pipeline.store.guards import check_replaceable, occupied
from pipeline.store.locks import attrs_lock, writer_lock
from pipeline.store.metadata import is_derived

if TYPE_CHECKING:
    from pipeline.extract.corruptions import CorruptionPlan, ShiftedSplit


def default_cache_path(dataset: str, backbone: str, image_size: int) -> Path:
    # Names checked against the registries by the command; made safe here too, for other callers.
    return Path("cache") / safe_filename(f"{dataset}_{backbone}_{image_size}", ".zarr")


def cache_metadata(dataset: ImageDataset, backbone: str, weights, preprocessing: Preprocessing,
                   feature_dtype: str, maps: dict[str, dict], precision: str = "float32",
                   trunk: dict | None = None, engine: str = "torch", patch: dict | None = None,
                   int8: dict | None = None) -> dict:
    """Everything that decides the numbers in a cache; compared on resume and by the heads.
    ``trunk`` (the full-resolution trunk map's stage and shape), ``patch`` (the patch heads'
    stages and shapes), ``engine`` (with its version) and ``int8`` (the quantised model's
    record: its calibration, name and SHA-256, ``pipeline.extract.quantise``) only when not the
    default, so caches made without them keep their metadata."""
    features = {"pooled": "global average of the last feature map", "dtype": feature_dtype, "maps": maps,
                "compute_precision": precision, **({"trunk": trunk} if trunk else {}),
                **({"patch": patch} if patch else {}),
                **({"engine": engine, "engine_version": engine_version(engine)} if engine != "torch" else {}),
                **({"int8": int8} if int8 else {})}
    return {
        "dataset": dataset.describe(),
        "backbone": {"name": backbone, "weights": weights.tag, "weights_sha256": weights.sha256},
        "preprocessing": preprocessing.to_dict(),
        "features": features,
    }


def full_map_stages(features: dict) -> list[str]:
    """The stages whose full-resolution maps a cache stores (``trunk/<stage>``), from its
    ``features`` metadata: PANDA's trunk stage, then the patch heads' stages."""
    stages = [features["trunk"]["stage"]] if features.get("trunk") else []
    return list(dict.fromkeys(stages + list(features.get("patch", {}).get("stages", []))))


def recorded_dataset(out: Path) -> dict | None:
    """What the cache at ``out`` (complete or not) records of its dataset, when that record
    tells which of its files are unreadable; else None (the unreadable-file check, when
    ``--skip-bad`` needs it, is then made again: ``drop_unreadable``).

    It tells when it lists files left out (``--skip-bad`` checked every file first) or its train
    and test splits are finished (every file was decoded). An unfinished cache that lists none
    may have been made without ``--skip-bad``, whose extraction stops at the first unreadable
    file: the files after it were never decoded."""
    if not occupied(out):
        return None
    try:
        cache = FeatureCache.open(out, require_complete=False)
    except PipelineError:
        return None
    recorded = cache.metadata.get("dataset")
    unfinished = any(cache.missing_chunks().get(split) for split in ("train", "test"))
    if recorded is not None and unfinished and not recorded.get("skipped_files"):
        return None
    return recorded


def check_labels(dataset: ImageDataset) -> None:
    """Refuse a dataset whose labels are not indices into its class list (0 to classes - 1),
    naming the first offending label and its split, before anything is written: a label
    outside the list would be stored as it is and name no class (``verify`` finds it only
    after the extraction)."""
    n_classes = len(dataset.classes)
    for split in ("train", "test"):
        labels = np.asarray(dataset.split(split).labels)
        outside = np.flatnonzero((labels < 0) | (labels >= n_classes))
        if len(outside):
            first = int(outside[0])
            named = ", ".join(map(str, dataset.classes[:5])) + (", ..." if n_classes > 5 else "")
            raise PipelineError(f"the {split} split of {dataset.name} has label {int(labels[first])} at sample {first} "
                                f"({len(outside)} of its {len(labels)} labels lie outside the class list), but the "
                                f"dataset names {n_classes} classes ({named}): labels must be class indices 0 to "
                                f"{n_classes - 1}. Nothing was written. Check the dataset's label files against its "
                                f"class list.")


# How many times a map's side --map-grid may be at most: 1, a grid no larger than the map.
# Pooling to a grid larger than the map only repeats its values (a grid of twice its side stores
# each value 2x2 times). The default grid of 4 needs a stride-16 map of 4x4 or more: 64 px images
# for EfficientNet-Lite; the 32 px test extractions (a 2x2 map) give --map-grid 2.
MAP_GRID_OVER_MAP = 1


def check_map_grid(map_grid: int, sizes: dict[str, tuple[int, int]], backbone: str, image_size: int) -> None:
    """Refuse a ``map_grid`` larger than a map asked for (``MAP_GRID_OVER_MAP`` times its shorter
    side; ``sizes``: each map's height and width at this image size): average pooling to more
    cells than the map has only repeats its values, in an array (grid / side)^2 times larger."""
    for name, (height, width) in sizes.items():
        most = MAP_GRID_OVER_MAP * min(height, width)
        if map_grid > most:
            raise PipelineError(f"--map-grid {map_grid} is larger than the map {name} of {backbone} at --image-size "
                                f"{image_size}, which is {height}x{width}: pooling it to a {map_grid}x{map_grid} grid "
                                f"would only repeat its values, in an array "
                                f"{round(map_grid * map_grid / (height * width), 2):g} times its size. Give --map-grid "
                                f"{most} or less (the map's side), or a larger --image-size, or --maps none to "
                                f"store no map.")


def extract(dataset: ImageDataset, backbone: str, preprocessing: Preprocessing, out: Path, *,
            weights_tag: str | None = None, weights_file: str | None = None, maps: tuple[str, ...] = (),
            map_grid: int = 4, feature_dtype: str = "float32", map_dtype: str = "float16",
            batch_size: int = 64, workers: int = 1, device: str = "auto",
            chunk_rows: int = DEFAULT_CHUNK_ROWS, overwrite: bool = False, skip_bad: bool = False,
            precision: str = "float32", engine: str = "torch", loaded: tuple | None = None,
            shard: tuple[int, int] | None = None, protected: Sequence[str | Path] = (),
            trunk_maps: str | None = None, patch_maps: Sequence[str] = (),
            corruptions: "CorruptionPlan | None" = None) -> FeatureCache:
    """Run the backbone over both splits, writing chunk by chunk; resumable.

    ``corruptions`` also writes one corrupted copy of the test split (or of the rows it draws)
    per corruption and severity, ``test@<corruption>@<severity>``, beside the clean one and
    like it (chunks, checksums, resume, shards); added to a finished cache without touching
    the rest. The images are corrupted in the loader workers, at their original size.

    ``loaded`` is what ``load_backbone`` returned, when the caller has loaded it already.
    ``shard = (i, n)`` extracts only the i-th of n disjoint sets of chunks, so n processes (one
    per GPU, or per machine sharing the cache's filesystem) can fill one cache together; the
    shard that records the last chunk marks the cache complete. Every chunk is computed from
    the same batches as in a single run, so the arrays are the same as a single run's.
    ``out`` is never written over the ``protected`` folders (the data directory) or the image
    folder, nor over anything but a feature cache made by this project.
    ``trunk_maps``: also store this stage's map at full resolution, float16, as
    ``trunk/<stage>`` (what PANDA's trainable tail reads); ``"panda"`` names the backbone's
    PANDA split (``BackboneSpec.trunk_end``). ``patch_maps``: also store these stages' maps at full
    resolution, float16, as ``trunk/<stage>`` too (one array for a stage asked for both ways): the
    patch heads' input; ``("patch",)`` names the backbone's ``BackboneSpec.patch_stages``.

    An anomaly folder with masks (``ground_truth/``) also stores the test images' masks, brought
    to the backbone input like the images, as ``test/masks``, and the images as the backbone saw
    them, ``test/inputs`` (``pipeline.extract.masks``).
    Each image is decoded once; one that cannot be (``UnreadableImageError``) stops the run,
    naming it, with the chunks finished before it kept (``user_facing_errors``). Only
    ``skip_bad`` decodes every file first (``drop_unreadable``), to leave the unreadable out.
    """
    out = Path(out)
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise PipelineError(f"--shard {shard[0]}/{shard[1]}: the index must be between 0 and {shard[1] - 1}.")
    check_labels(dataset)  # before anything is written
    protected = [*protected, *([dataset.root] if dataset.root is not None else [])]
    check_replaceable(out, protected)  # before the lock files beside it and any work
    with writer_lock(out, shard), user_facing_errors(out, dataset.root):
        device_ = resolve_device(device)
        precision = resolve_precision(precision, device_)  # auto: bfloat16 where native; recorded
        engine = resolve_engine(engine, device_, precision)  # auto: onnxruntime for float32 on a CPU; recorded
        model, weights = loaded or load_backbone(backbone, preprocessing.image_size, weights_tag, weights_file)
        model = model.to(device_, memory_format=torch.channels_last)
        maps = tuple(model.spec.intermediate if m == "intermediate" else m for m in maps)
        for name in maps:
            if name not in model.stage_names:
                raise PipelineError(f"{backbone} has no map {name!r}; its maps are {', '.join(model.stage_names)}.")
        trunk = model.spec.trunk_end if trunk_maps == "panda" else trunk_maps
        if trunk is not None:
            model.split(trunk)  # refuses a stage that leaves no tail to train
        patch = patch_stages(model, patch_maps)
        full = tuple(dict.fromkeys(([trunk] if trunk else []) + list(patch)))  # stored at full resolution
        dataset = drop_unreadable(dataset, skip_bad, workers, recorded_dataset(out))
        int8 = None
        if precision == "int8":  # calibrated on this dataset's training images; made once, kept in the store
            from pipeline.extract.quantise import make_int8_model

            int8 = make_int8_model(model, {"name": backbone, "weights": weights.tag, "weights_sha256": weights.sha256},
                                   preprocessing, dataset, echo=click.echo)

        with torch.inference_mode():
            probe = model(torch.zeros(1, 3, preprocessing.image_size, preprocessing.image_size, device=device_),
                          maps + full)
        check_map_grid(map_grid, {name: tuple(int(n) for n in probe[name].shape[-2:]) for name in maps}, backbone,
                       preprocessing.image_size)
        map_info = {name: {"grid": map_grid, "dtype": map_dtype, "channels": int(probe[name].shape[1])} for name in maps}
        trunk_info = None if trunk is None else {"stage": trunk, "dtype": "float16",
                                                 "shape": [int(n) for n in probe[trunk].shape[1:]]}
        patch_info = None if not patch else {"stages": list(patch), "dtype": "float16",
                                             "shapes": {n: [int(d) for d in probe[n].shape[1:]] for n in patch}}
        metadata = cache_metadata(dataset, backbone, weights, preprocessing, feature_dtype, map_info, precision,
                                  trunk_info, engine, patch_info, int8)
        feature_dim = int(probe["pooled"].shape[1])
        specs = [ArraySpec("features", (feature_dim,), feature_dtype), ArraySpec("labels", (), "int64")]
        specs += [ArraySpec(f"maps/{name}", (info["channels"], map_grid, map_grid), map_dtype) for name, info in map_info.items()]
        specs += [ArraySpec(f"trunk/{name}", tuple(int(d) for d in probe[name].shape[1:]), "float16") for name in full]
        sizes = {split: len(dataset.split(split).labels) for split in ("train", "test")}
        masks = TestMasks.of(dataset, preprocessing)
        # Under the attributes lock, so that of shards starting together one creates the store
        # and the others open it (they must all be given the same options).
        with attrs_lock(out):
            cache = open_or_create(out, metadata, {"train": specs, "test": specs + masks.specs()}, sizes,
                                   chunk_rows, overwrite, protected)
        shifted = {split.name: split for split in (corruptions.splits(dataset.test) if corruptions else [])}
        add_shifted_splits(cache, list(shifted.values()), specs, overwrite)
        if cache.is_complete:
            click.echo(f"{out} is already complete; nothing to do.")
            return cache

        todo = {split: sorted(set(range(len(cache.chunk_slices(split)))) - cache.done_chunks(split))
                for split in cache.splits}
        # A split's images, and which of them each row of the store holds (None: all, in order).
        sources = {"train": (dataset.train.images, None), "test": (dataset.test.images, None),
                   **{name: (split.images, split.rows) for name, split in shifted.items()}}
        if shard is not None:
            # Chunks are dealt round-robin over train then test, so every shard gets a share of both.
            everything = [(split, chunk) for split in todo for chunk in range(len(cache.chunk_slices(split)))]
            mine = set(everything[shard[0]::shard[1]])
            todo = {split: [chunk for chunk in chunks if (split, chunk) in mine] for split, chunks in todo.items()}
        todo = {split: chunks for split, chunks in todo.items() if chunks}
        plan = [(split, chunk, rows, last) for split, chunks in todo.items()
                for chunk, rows, last in chunk_batches(cache.chunk_slices(split), chunks, batch_size,
                                                       sources[split][1])]
        # One loader over every split: its workers start once.
        inputs = ConcatDataset([PreprocessedBatches(sources[split][0],
                                                    [rows for s, _, rows, _ in plan if s == split], preprocessing)
                                for split in todo])
        total = sum(len(rows) for _, _, rows, _ in plan)
        started = time.perf_counter()
        buffer = ChunkBuffer()
        with ChunkWriter() as writer:
            batches = backbone_batches(model, inputs, [rows for _, _, rows, _ in plan], map_info, device_,
                                       precision=precision, engine=engine, workers=workers,
                                       desc=f"extract {backbone}", full_maps=full, int8=int8)
            for (split, chunk, _, last), (_, outputs) in zip(plan, batches):
                buffer.add(outputs)
                if last:
                    values = buffer.take()
                    rows = cache.chunk_slices(split)[chunk]
                    if split in shifted:  # the test rows this chunk holds
                        values["rows"] = shifted[split].rows[rows]
                        rows = values["rows"]
                    values["labels"] = dataset.test.labels[rows] if split in shifted else dataset.split(split).labels[rows]
                    if split == "test" and masks:
                        values.update(masks.values(rows))
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
        derived = f", {len(cache.derived_splits)} corrupted test splits" if cache.derived_splits else ""
        click.echo(f"wrote {out}: train {sizes['train']} x {feature_dim}, test {sizes['test']} x {feature_dim}{derived} "
                   f"({total} images extracted in {elapsed:.1f} s, {total / max(elapsed, 1e-9):.1f} images/s).")
        return cache


def patch_stages(model, asked: Sequence[str]) -> tuple[str, ...]:
    """The stages ``--patch-maps`` names, each once: ``patch`` is the backbone's pair
    (``BackboneSpec.patch_stages``); a stage the backbone lacks, or its last (pooled) one, is refused."""
    stages: list[str] = []
    for name in asked:
        stages += list(model.spec.patch_stages) if name == PATCH_WORD else [name]
    for name in stages:
        if name not in model.stage_names:
            raise PipelineError(f"--patch-maps {name}: {model.spec.name} has no stage {name!r}; its stages are "
                                f"{', '.join(model.stage_names)} ({PATCH_WORD}: {', '.join(model.spec.patch_stages)}).")
    return tuple(dict.fromkeys(stages))


def add_shifted_splits(cache: FeatureCache, shifted: "list[ShiftedSplit]", specs: list[ArraySpec],
                       overwrite: bool) -> None:
    """Put each corrupted test split asked for in the store (the test split's arrays, plus the
    test rows it holds), unless it is there, made the same way. One made differently is made
    again with ``overwrite``, else refused; an unfinished one not asked for is refused (this
    run could not finish it)."""
    for split in shifted:
        if split.name in cache.derived_splits:
            recorded = cache.split_description(split.name)
            if recorded == json.loads(json.dumps(split.description)):
                continue
            if not overwrite:
                raise PipelineError(f"{cache.path} already has the split {split.name}, made differently (it records "
                                    f"{json.dumps(recorded)}). Pass --overwrite to make it again.")
            cache.remove_split(split.name)
        cache.add_split(split.name, [*specs, ArraySpec("rows", (), "int64")], len(split.rows), split.description)
    asked = {split.name for split in shifted}
    unfinished = [name for name, chunks in cache.missing_chunks().items() if chunks and is_derived(name)
                  and name not in asked]
    if unfinished:
        raise PipelineError(f"{cache.path} has unfinished corrupted test splits that this run does not make: "
                            f"{', '.join(unfinished)}. Run the command that started them again (its --corruptions, "
                            f"--severities and --corrupt-per-class) to finish them.")
