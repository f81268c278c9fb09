"""The feature cache's command line: ``python -m pipeline.cache info|verify|export-hdf5|import-hdf5``."""

from __future__ import annotations

import click

from pipeline.cli import check_outputs, os_errors_as_messages, output_problem
from pipeline.errors import PipelineError
from pipeline.store.cache import FeatureCache
from pipeline.store.guards import check_replaceable, occupied
from pipeline.store.hdf5 import export_hdf5, import_hdf5


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Inspect feature caches and move features in and out of HDF5."""


@main.command()
@click.argument("cache_path", type=click.Path(file_okay=False))
@os_errors_as_messages
def info(cache_path: str) -> None:
    """Print how CACHE_PATH was made, its arrays and whether it is complete."""
    import json

    cache = FeatureCache.open(cache_path, require_complete=False)
    click.echo(json.dumps(cache.metadata, indent=2))
    for split in cache.splits:
        arrays = [f"{name} {cache.array(split, name).shape} {cache.array(split, name).dtype}"
                  for name in ["features", "labels"] + [f"maps/{m}" for m in cache.map_names(split)]
                  + [f"trunk/{t}" for t in cache.trunk_names(split)]]
        done = len(cache.done_chunks(split))
        made = f" (made as {json.dumps(cache.split_description(split))})" if cache.split_description(split) else ""
        click.echo(f"{split}: {'; '.join(arrays)}; {done}/{len(cache.chunk_slices(split))} chunks written{made}")
    edited = cache.metadata_edited()
    if edited:
        click.echo(f"EDITED: {edited}; see python -m pipeline.cache verify {cache_path}")
    click.echo("complete" if cache.is_complete else "INCOMPLETE: re-run the extraction command to finish it")


@main.command()
@click.argument("cache_path", type=click.Path(file_okay=False))
@click.option("--repair", is_flag=True,
              help="Set damaged chunks aside and mark the cache incomplete, so that running the "
                   "extraction command again recomputes just those chunks.")
@os_errors_as_messages
def verify(cache_path: str, repair: bool) -> None:
    """Check every chunk of CACHE_PATH against its recorded checksum, the metadata against the
    checksum recorded when the cache was made, and the arrays against the metadata. Exits with
    status 1 if anything is missing, damaged or edited."""
    from pipeline.store.metadata import remake_hint

    cache = FeatureCache.open(cache_path, require_complete=False)
    problems = cache._problems()
    for _, _, problem in problems:
        click.echo(f"  {problem}")
    note = (f"note: {cache_path} was made before the metadata's checksum was recorded, so an edit of its metadata "
            f"(zarr.json) cannot be detected; making it again records one.")
    if not problems:
        click.echo(f"{cache_path}: all {sum(len(cache.chunk_slices(s)) for s in cache.splits)} chunks present and "
                   f"intact{'' if cache.is_complete else ', but not marked complete'}"
                   f"{', metadata as made' if cache.metadata_checked else ''}.")
        if not cache.metadata_checked:
            click.echo(note)
        return
    if not cache.metadata_checked:
        click.echo(note)
    chunks = {split: {chunk for s, chunk, _ in problems if s == split and chunk is not None} for split in cache.splits}
    # Missing or damaged chunks are recomputed by the extraction; anything else (edited metadata,
    # arrays that disagree with it) is not, and only making the cache again mends it.
    whole = len(problems) - sum(len(c) for c in chunks.values())
    if repair and any(chunks.values()):
        unwritable = output_problem(cache_path, "store")
        if unwritable:
            raise PipelineError(f"cannot set the damaged chunks aside: {cache_path} {unwritable}. Run verify --repair "
                                f"where the cache can be written (or copy it there).")
        for split, damaged in chunks.items():
            if damaged:
                cache.set_aside(split, damaged)
        click.echo(f"{len(problems)} problems; damaged chunks set aside. Run the extraction command again "
                   f"(or dvc repro) to recompute them.")
        if not whole:
            raise SystemExit(1)
    if whole:
        raise PipelineError(
            f"{cache_path} has {len(problems)} problems (listed above), {whole} of which setting chunks aside cannot "
            f"mend. {remake_hint(cache_path)}")
    raise PipelineError(
        f"{cache_path} has {len(problems)} problems (listed above). Run python -m pipeline.cache verify --repair "
        f"{cache_path} and then the extraction command again to recompute the damaged chunks.")


@main.command("export-hdf5")
@click.argument("cache_path", type=click.Path(file_okay=False))
@click.argument("hdf5_path", type=click.Path(dir_okay=False))
@os_errors_as_messages
def export_command(cache_path: str, hdf5_path: str) -> None:
    """Write the pooled features and labels of CACHE_PATH to HDF5_PATH."""
    check_outputs(files={"HDF5_PATH": hdf5_path}, inputs={"CACHE_PATH": cache_path})
    export_hdf5(FeatureCache.open(cache_path), hdf5_path)
    click.echo(f"wrote {hdf5_path}")


@main.command("import-hdf5")
@click.argument("hdf5_path", type=click.Path(dir_okay=False))
@click.argument("cache_path", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True,
              help="Replace an existing feature cache at CACHE_PATH (anything else there is never replaced).")
@os_errors_as_messages
def import_command(hdf5_path: str, cache_path: str, overwrite: bool) -> None:
    """Make a feature cache at CACHE_PATH from features computed elsewhere (HDF5_PATH holds
    /train/features, /train/labels, /test/features, /test/labels; optional attrs classes,
    dataset, backbone)."""
    # Anything but a feature cache made by this project is refused, --overwrite or not.
    check_replaceable(cache_path)
    if occupied(cache_path) and not overwrite:
        raise PipelineError(f"{cache_path} is a feature cache already; pass --overwrite to replace it.")
    check_outputs(stores={"CACHE_PATH": cache_path}, inputs={"HDF5_PATH": hdf5_path})
    cache = import_hdf5(hdf5_path, cache_path)
    click.echo(f"wrote {cache_path}: train {cache.array('train').shape}, test {cache.array('test').shape}, "
               f"{len(cache.classes)} classes")

