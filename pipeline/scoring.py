"""Score new images (or features) with a head saved by --save-heads of stages.knn, stages.plume or stages.anomem
(``python -m stages.score``, ``ffad score``).

    python -m stages.score --head heads/cat.head --images new_photos/ --out scores.csv
    python -m stages.score --head heads/cat.head --features new.h5 --out scores.csv
    python -m stages.score --head heads/cat.head --images new_photos/ --out scores.csv --maps maps/

``--maps`` (heads that localise: patchcore, padim) also draws each image's anomaly map over
it, one PNG per image (``write_anomaly_maps``).

Images are turned into features exactly as the head's training cache was made (backbone,
weights, preprocessing, compute precision and storage type, all read from the head file). A head
trained on features imported without a record of their preprocessing (an HDF5 file with no
metadata) scores images only when the preprocessing is given (--image-size, --resize,
--interpolation, --normalisation), as it would otherwise be guessed.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from typing import TYPE_CHECKING

import click
import numpy as np

from pipeline.cli import check_outputs, resolve_device, verbosity_options, write_text
from pipeline.errors import PipelineError
from pipeline.extract.names import AUTO, INTERPOLATION_NAMES, NORMALISATION_NAMES, RESIZE_MODES

if TYPE_CHECKING:  # imported where used, so that --help loads no torch
    import torch

    from pipeline.heads.saving import SavedHead

# What decides the features' numbers; an HDF5 file that records any of it must agree with the head.
COMPARED = ("backbone", "preprocessing")
# The fields of the preprocessing record (pipeline.extract.preprocess.Preprocessing) and the
# options that give them for a head whose cache does not record them.
PREPROCESSING_OPTIONS = {"image_size": "--image-size", "resize": "--resize", "interpolation": "--interpolation",
                         "normalisation": "--normalisation"}
PREPROCESSING_HINT = (f"--image-size PIXELS --resize {'|'.join(RESIZE_MODES)} --interpolation "
                      f"{'|'.join(INTERPOLATION_NAMES)} --normalisation {'|'.join((AUTO, *NORMALISATION_NAMES))}")


def find_images(folder: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every image under ``folder`` (recursively), sorted, so the output order is reproducible,
    and the entries refused with their reason: the listing rule of extraction
    (``pipeline.extract.listing``: links to files followed, links to folders never; a broken or
    looping link refused like an unreadable image)."""
    from pipeline.extract.listing import IMAGE_EXTENSIONS, list_images

    folder = Path(folder)
    files, refused = list_images(folder)
    if not files and not refused:
        raise PipelineError(f"no images under {folder} (looked recursively for {', '.join(IMAGE_EXTENSIONS)}).")
    return sorted(Path(p) for p in files), [(Path(p), reason) for p, reason in refused]


def image_preprocessing(saved: SavedHead, given: dict | None = None):
    """How images become the head's backbone inputs: the preprocessing its training cache
    records, each field of it (image_size, resize, interpolation, normalisation) recorded or
    ``given`` (the command's options; None: not given). A field neither recorded nor given is
    refused rather than guessed (features imported from HDF5 without their metadata record
    none); a given field that contradicts the record is refused too. Also refuses a backbone this
    version cannot run."""
    from pipeline.backbones import get_spec
    from pipeline.extract.preprocess import Preprocessing, resolve_normalisation

    backbone, where = saved.backbone, f"the head {saved.path}"
    name = backbone.get("name")
    try:
        spec = get_spec(name)
    except PipelineError:
        raise PipelineError(f"{where} was trained on features of backbone {name!r}, which this version cannot run "
                            f"(imported features?); score features made the same way with --features FILE.h5 "
                            f"instead.") from None
    given = {key: value for key, value in (given or {}).items() if value is not None}
    if given.get("normalisation") == AUTO:
        given["normalisation"] = resolve_normalisation(AUTO, spec.native_normalisation)
    recorded = saved.preprocessing
    missing = [option for key, option in PREPROCESSING_OPTIONS.items() if key not in recorded and key not in given]
    if missing:
        said = "records no preprocessing" if not recorded else f"records only part of its preprocessing ({recorded})"
        raise PipelineError(f"{where} was trained on features whose cache {said} (features imported from HDF5 without "
                            f"their metadata?), so how to prepare images for it is not known. Give how the images of "
                            f"its training features were prepared: {' '.join(missing)} (all: {PREPROCESSING_HINT}), "
                            f"or score features made the same way with --features FILE.h5 instead.")
    contradicted = [f"{PREPROCESSING_OPTIONS[key]} {given[key]} (the head records {key} {recorded[key]!r})"
                    for key in PREPROCESSING_OPTIONS if key in given and key in recorded and given[key] != recorded[key]]
    if contradicted:
        raise PipelineError(f"{where} records how its training images were prepared, and {'; '.join(contradicted)} "
                            f"would make features unlike its training features. Leave "
                            f"{'these options' if len(contradicted) > 1 else 'the option'} out.")
    try:
        return Preprocessing(**{key: recorded.get(key, given.get(key)) for key in PREPROCESSING_OPTIONS})
    except (TypeError, PipelineError) as error:
        raise PipelineError(f"{where} records no usable preprocessing ({recorded!r}: {error}); "
                            f"score features made the same way with --features FILE.h5 instead.") from None


def load_matching_backbone(saved: SavedHead, weights_file: str | None = None, preprocessing=None):
    """The head's backbone with its weights, refused unless they are the very weights (SHA-256)
    the training cache was made with, and its preprocessing (``image_preprocessing``, unless
    given)."""
    from pipeline.backbones import load_backbone

    backbone, where = saved.backbone, f"the head {saved.path}"
    name = backbone.get("name")
    preprocessing = preprocessing or image_preprocessing(saved)
    model, weights = load_backbone(name, preprocessing.image_size, backbone.get("weights"), weights_file)
    recorded = backbone.get("weights_sha256")
    if recorded and weights.sha256 != recorded:
        raise PipelineError(f"{where} was trained with {name} weights of SHA-256 {recorded[:12]}..., but the "
                            f"weights loaded now ({weights.file}) have SHA-256 {str(weights.sha256)[:12]}...: "
                            f"its features would not be comparable. Pass the training weights with --weights FILE.")
    return model, preprocessing


def readable_images(paths: list[Path], skip_bad: bool, workers: int = 0,
                    refused: list[tuple[Path, str]] = ()) -> list[Path]:
    """``paths`` less the files that cannot be decoded: refused (listing them, and the entries
    ``find_images`` refused) unless ``skip_bad``."""
    from pipeline.extract.datasets import FileImages, first_few, unreadable_images

    bad = unreadable_images(FileImages([str(p) for p in paths]), workers)
    if not bad and not refused:
        return paths
    listed = [f"{path} ({reason})" for path, reason in refused] + [f"{paths[i]} ({reason})" for i, reason in bad]
    if not skip_bad:
        raise PipelineError(f"cannot read image {first_few(listed)}. Replace or remove "
                            f"{'them' if len(listed) > 1 else 'it'}, or pass --skip-bad to leave unreadable "
                            f"files out of the scores.")
    click.echo(f"left out {len(listed)} unreadable image files: {'; '.join(listed)}", err=True)
    drop = {i for i, _ in bad}
    return [p for i, p in enumerate(paths) if i not in drop]


def image_features(saved: SavedHead, paths: list[Path], device: torch.device, batch_size: int = 64,
                   weights_file: str | None = None, workers: int = 0,
                   preprocessing=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Pooled features (N, D) and the cache's maps (and, for a head that reads them, its
    full-resolution maps as ``trunk/<stage>``), computed as pipeline.extract computed the head's training cache: same
    model layout, precision, map pooling and storage rounding; ``preprocessing`` (default: the
    one the cache records, ``image_preprocessing``)."""
    from pipeline.extract.datasets import FileImages
    from pipeline.extract.extraction import full_map_stages
    from pipeline.extract.loop import PRECISIONS, PreprocessedBatches, backbone_batches

    model, preprocessing = load_matching_backbone(saved, weights_file, preprocessing)
    about = saved.cache_metadata.get("features", {})
    precision = about.get("compute_precision", "float32")
    if precision not in PRECISIONS:
        raise PipelineError(f"the head's cache records compute precision {precision!r}, which this version does "
                            f"not know ({', '.join(PRECISIONS)}).")
    maps = saved.maps
    missing = [name for name in maps if name not in model.stage_names]
    if missing:
        raise PipelineError(f"the head's cache has maps {missing} that {model.spec.name} does not produce.")
    # The full-resolution maps the cache held (PANDA's trunk, the patch heads' stages), for heads that read them.
    full = full_map_stages(about) if saved.head.needs_trunk else []
    batches = [list(range(start, min(start + batch_size, len(paths)))) for start in range(0, len(paths), batch_size)]
    inputs = PreprocessedBatches(FileImages([str(p) for p in paths]), batches, preprocessing)
    pooled, pooled_maps = [], {name: [] for name in [*maps, *(f"trunk/{stage}" for stage in full)]}
    for _, out in backbone_batches(model, inputs, batches, maps, device, precision=precision,
                                   engine=about.get("engine", "torch"), int8=about.get("int8"), workers=workers,
                                   desc=f"extract {model.spec.name}", full_maps=full):
        pooled.append(out["features"])
        for name, info in maps.items():
            pooled_maps[name].append(out[f"maps/{name}"].astype(info.get("dtype", "float16")))
        for stage in full:
            pooled_maps[f"trunk/{stage}"].append(out[f"trunk/{stage}"])
    # Stored in the cache's dtype, as the training features were: the same rounding.
    features = np.concatenate(pooled).astype(about.get("dtype", "float32")).astype(np.float32)
    return features, {name: np.concatenate(parts) for name, parts in pooled_maps.items()}


def metadata_differences(saved: SavedHead, other: dict) -> list[str]:
    """What the features' recorded backbone and preprocessing say that the head's do not
    (keys recorded on one side only are not compared)."""
    found = []
    for section in COMPARED:
        mine, theirs = saved.cache_metadata.get(section) or {}, other.get(section) or {}
        for key in sorted(set(mine) & set(theirs)):
            if mine[key] != theirs[key]:
                found.append(f"{section}.{key} is {theirs[key]!r} there but {mine[key]!r} for the head")
    return found


def read_feature_file(saved: SavedHead, path: str | Path) -> tuple[list[str], np.ndarray]:
    """Row names and features of an HDF5 file with /features (N, D) and optional /paths (N,);
    refused if D or its recorded backbone / preprocessing (attrs) differ from the head's."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise PipelineError(f"{path} is not a readable HDF5 file ({error}).") from None
    with f:
        if "features" not in f or not isinstance(f["features"], h5py.Dataset):
            raise PipelineError(f"{path} has no /features dataset (it has: {', '.join(f.keys()) or 'nothing'}). "
                                f"Give an HDF5 file with /features (N, D) and optionally /paths (N,).")
        features = f["features"]
        if features.ndim != 2 or features.dtype.kind != "f":
            raise PipelineError(f"/features in {path} must be a 2-D float array (samples, dimensions), got shape "
                                f"{features.shape} and type {features.dtype}.")
        if saved.feature_dim is not None and features.shape[1] != saved.feature_dim:
            raise PipelineError(f"/features in {path} has {features.shape[1]} dimensions, but the head {saved.path} "
                                f"was trained on {saved.feature_dim}-d features ({saved.backbone.get('name')}).")
        recorded = _recorded_metadata(f, path)
        if "backbone" in f.attrs and "name" not in recorded.get("backbone", {}):
            if not isinstance(f.attrs["backbone"], (str, bytes)):
                raise PipelineError(f"the backbone attribute of {path} must be text (the backbone's name), got "
                                    f"{type(f.attrs['backbone']).__name__}.")
            recorded.setdefault("backbone", {})["name"] = _text(f.attrs["backbone"])
        found = metadata_differences(saved, recorded)
        if found:
            raise PipelineError(f"the features in {path} were made differently from the head {saved.path}'s: "
                                f"{'; '.join(found)}. Extract them with the head's backbone and preprocessing.")
        values = np.asarray(features[()], dtype=np.float32)
        if "paths" in f:
            paths = f["paths"]
            if not isinstance(paths, h5py.Dataset) or paths.ndim != 1 or paths.dtype.kind not in "OSU":
                raise PipelineError(f"/paths in {path} must be a 1-D array of texts (one name per row), got "
                                    f"{_described(paths)}.")
            names = [_text(p) for p in paths[()]]
            if len(names) != len(values):
                raise PipelineError(f"/paths in {path} has {len(names)} entries but /features has {len(values)} rows.")
        else:
            names = [f"{path.name}#{i}" for i in range(len(values))]
    if not len(values):
        raise PipelineError(f"/features in {path} has no rows.")
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(bad):
        raise PipelineError(f"/features in {path} contains NaN or Inf (first at row {bad[0]}).")
    return names, values


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _described(node) -> str:
    import h5py

    if isinstance(node, h5py.Dataset):
        return f"shape {node.shape} and type {node.dtype}"
    return "a group"


def _recorded_metadata(f, path: Path) -> dict:
    """The metadata attribute of a feature file (as export-hdf5 writes it), {} if absent; the
    sections compared with the head's must be mappings."""
    raw = f.attrs.get("metadata")
    if raw is None:
        return {}
    what = (f"the metadata attribute of {path} must be JSON text of an object (the cache metadata, as "
            f"python -m pipeline.cache export-hdf5 writes it), with {' and '.join(COMPARED)} sections that are objects")
    if not isinstance(raw, (str, bytes)):
        raise PipelineError(f"{what}; got {type(raw).__name__}.")
    try:
        recorded = json.loads(_text(raw) or "{}")
    except ValueError as error:
        raise PipelineError(f"{what}; it is not valid JSON ({error}).") from None
    if not isinstance(recorded, dict) or any(not isinstance(recorded.get(s, {}), dict) for s in COMPARED):
        raise PipelineError(f"{what}; got {json.dumps(recorded)[:80]}.")
    return recorded


# The percentiles of the map values (of all the images of one run) that the colours of --maps
# run between (named in --help and in the command's line as the 1st and 99.9th).
MAP_PERCENTILES = (1.0, 99.9)
# Heads that make anomaly maps (Head.localises), named in messages without importing them.
LOCALISING_HEADS = ("patchcore", "padim")


def map_file_names(paths: list[Path], folder: str | Path) -> list[str]:
    """One PNG name per image: its path relative to ``folder`` (``/``-separated) made a safe
    file name (``safe_filename``: kept as it is when plain and lower-case, else with a hash of
    the exact path), then ``.png``; distinct for distinct paths, never leaving the folder."""
    from pipeline.files import safe_filename

    return [safe_filename(Path(p).relative_to(folder).as_posix(), ".png") for p in paths]


def map_range(anomaly_maps: np.ndarray) -> tuple[float, float]:
    """The colour range of a run's anomaly maps: the ``MAP_PERCENTILES`` (1st and 99.9th) of all
    their values together, one range for every image of the run; refused if any value is NaN or
    infinite."""
    if not np.isfinite(anomaly_maps).all():
        raise PipelineError("the head's anomaly maps hold NaN or infinite values; no maps written.")
    low, high = np.percentile(anomaly_maps, MAP_PERCENTILES)
    return float(low), float(high)


def write_anomaly_maps(folder: str | Path, paths: list[Path], images_dir: str | Path, anomaly_maps: np.ndarray,
                       preprocessing, low: float, high: float) -> None:
    """One PNG per image in ``folder`` (``map_file_names``; each written atomically, a file of
    the same name replaced, others left alone): the image as the backbone saw it
    (``pipeline.extract.masks.input_image``) with its anomaly map over it (``overlay``, half and
    half), every map coloured on the same range, ``low`` to ``high`` (``map_range``)."""
    from pipeline.extract.masks import input_image
    from pipeline.heatmaps import overlay, write_png

    for path, name, anomaly_map in zip(paths, map_file_names(paths, images_dir), anomaly_maps):
        write_png(Path(folder) / name, overlay(input_image(path, preprocessing), anomaly_map, low, high))


def write_scores(out: str | Path, names: list[str], scores: np.ndarray, threshold: float) -> int:
    """CSV of path, score, flag (anomalous when score > threshold); returns how many are flagged."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "score", "flag"])
    flagged = 0
    for name, score in zip(names, scores):
        anomalous = bool(score > threshold)
        flagged += anomalous
        writer.writerow([name, repr(float(score)), "anomalous" if anomalous else "normal"])
    write_text(out, buffer.getvalue())
    return flagged


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--head", "head_path", required=True, type=click.Path(dir_okay=False),
              help="A head file written by --save-heads of python -m stages.knn, stages.plume or stages.anomem "
                   "(DIR/<class>.head).")
@click.option("--images", "images_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder of images to score (searched recursively; jpg, png, bmp, gif, tif, webp), turned into "
                   "features with the backbone, weights and preprocessing the head's training cache used.")
@click.option("--features", "features_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Or an HDF5 file of features made the same way: /features (N, D), optional /paths (N,) and "
                   "optional attrs metadata (JSON) / backbone, checked against the head's.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="CSV to write: path, score, flag (anomalous or normal at the threshold).")
@click.option("--maps", "maps_dir", default=None, type=click.Path(), metavar="DIR",
              help="With --images and a head that localises (patchcore, padim): also write into this folder one PNG "
                   "per scored image, its anomaly map over the image as the backbone saw it (resized, cropped), "
                   "named by the image's path under --images made a safe file name, plus .png. Colours run "
                   "black, purple, red, orange, pale yellow from the 1st to the 99.9th percentile of all the map "
                   "values of this run (printed): one scale for every image, so brighter means more anomalous "
                   "than the rest of this run's pixels, not above the threshold (normal images alone still show "
                   "bright spots). The CSV is unchanged.")
@click.option("--threshold-quantile", default=None, type=click.FloatRange(0, 1),
              help="Flag at this quantile of the head's training scores instead of the one chosen when it "
                   "was saved (default: the saved threshold).")
@click.option("--calibrate", "calibration_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder of normal images the head was not trained on: the threshold is taken at the quantile "
                   "of their scores instead of the training scores' (which run low for PLUME and AnoMem, whose "
                   "training scores are of the images they were fitted on).")
@click.option("--device", default="auto", show_default=True, help="auto (GPU if there is one), cpu, cuda, cuda:<i>.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="Images per forward pass.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(0, 64),
              help="Processes decoding and resizing images beside the forward pass (0: in this process).")
@click.option("--skip-bad", is_flag=True,
              help="Leave image files that cannot be decoded out of the scores (listed on stderr) instead of "
                   "stopping.")
@click.option("--weights", "weights_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="The backbone weights file the training cache was made with, if it was not the default "
                   "(checked against the SHA-256 the head records).")
@click.option("--image-size", default=None, type=click.IntRange(16, 1024),
              help="Side of the square backbone input, in pixels, that the images of the head's training features "
                   "were prepared at: needed with --images or --calibrate only for a head whose training cache "
                   "records no preprocessing (features imported from HDF5 without it); otherwise the record is "
                   "used, and an option that contradicts it is refused. Likewise --resize, --interpolation and "
                   "--normalisation.")
@click.option("--resize", default=None, type=click.Choice(RESIZE_MODES),
              help="resize: straight to the image size; resize_crop: short side to size*256/224, then centre crop "
                   "(see --image-size).")
@click.option("--interpolation", default=None, type=click.Choice(INTERPOLATION_NAMES),
              help="Resampling filter of the resize (see --image-size).")
@click.option("--normalisation", default=None, type=click.Choice((AUTO, *NORMALISATION_NAMES)),
              help="auto: the backbone's own (inception for EfficientNet-Lite, imagenet for torchvision's); imagenet; "
                   "inception; none (see --image-size).")
@verbosity_options
def main(head_path, images_dir, features_file, out_path, maps_dir, threshold_quantile, calibration_dir, device,
         batch_size, workers, skip_bad, weights_file, image_size, resize, interpolation, normalisation):
    """Score images or features with a saved head and flag those above its threshold."""
    if (images_dir is None) == (features_file is None):
        raise PipelineError("give exactly one of --images FOLDER and --features FILE.h5.")
    given = {"image_size": image_size, "resize": resize, "interpolation": interpolation,
             "normalisation": normalisation}
    if images_dir is None and calibration_dir is None and any(value is not None for value in given.values()):
        named = [PREPROCESSING_OPTIONS[key] for key, value in given.items() if value is not None]
        raise PipelineError(f"{', '.join(named)} (how images are prepared) {'goes' if len(named) == 1 else 'go'} with "
                            f"--images or --calibrate, not with --features alone (a feature file's recorded "
                            f"preprocessing is checked against the head's).")
    if maps_dir is not None and images_dir is None:
        raise PipelineError("--maps goes with --images: anomaly maps are made from the images' feature maps, which "
                            "a --features file does not carry.")
    check_outputs(files={"--out": out_path}, folders={"--maps": maps_dir},
                  inputs={"--head": head_path, "--images": images_dir, "--features": features_file,
                          "--calibrate": calibration_dir, "--weights": weights_file})
    device_ = resolve_device(device)
    from pipeline.heads.loading import load_head

    saved = load_head(head_path, device=str(device_))
    if maps_dir is not None and not saved.head.localises:
        raise PipelineError(f"--maps needs a head that localises ({', '.join(LOCALISING_HEADS)}); the {saved.kind} "
                            f"head {head_path} scores whole images and makes no anomaly maps.")

    if features_file is not None and saved.multi_scale:
        raise PipelineError(f"the {saved.kind} head {head_path} also needs feature maps (intermediate or trunk "
                            f"maps), which a --features file does not carry; score --images instead.")
    # Before any image is read: how they become backbone inputs, refused if it is not known.
    preprocessing = image_preprocessing(saved, given) if images_dir or calibration_dir else None

    def readable(folder: str | None) -> list[Path]:
        if folder is None:
            return []
        found, refused = find_images(folder)
        paths = readable_images(found, skip_bad, workers, refused)
        if not paths:
            raise PipelineError(f"none of the images under {folder} can be read.")
        return paths

    # The images to score and the calibration images go through the backbone in one pass.
    paths, calibration = readable(images_dir), readable(calibration_dir)
    if paths or calibration:
        features, maps = image_features(saved, paths + calibration, device_, batch_size, weights_file, workers,
                                        preprocessing)
        image_scores = saved.score(features, maps)
        scores, reference = image_scores[:len(paths)], image_scores[len(paths):]
        if maps_dir is not None:  # of the scored images only, before anything is written
            anomaly_maps = saved.anomaly_maps(features[:len(paths)],
                                              {name: part[:len(paths)] for name, part in maps.items()},
                                              preprocessing.image_size)
            low, high = map_range(anomaly_maps)
    if images_dir is not None:
        names, what = [str(p) for p in paths], "images"
    else:
        names, features = read_feature_file(saved, features_file)
        scores, what = saved.score(features, {}), "feature rows"
    quantile = saved.threshold_quantile if threshold_quantile is None else threshold_quantile
    if calibration_dir is not None:
        threshold = float(np.quantile(reference, quantile))
        rule = f"{len(reference)} calibration images' scores (normal images under {calibration_dir})"
    else:
        threshold = saved.threshold if threshold_quantile is None else saved.threshold_at(threshold_quantile)
        rule = f"{saved.kind} head's {len(saved.train_scores)} training scores"
    if maps_dir is not None:
        write_anomaly_maps(maps_dir, paths, images_dir, anomaly_maps, preprocessing, low, high)
    flagged = write_scores(out_path, names, scores, threshold)
    click.echo(f"{len(names)} {what} scored, {flagged} flagged anomalous: score > threshold {threshold:.6g}, the "
               f"{quantile:g}-quantile of the {rule} (class {saved.class_name}); wrote {out_path}")
    if maps_dir is not None:
        click.echo(f"wrote {len(paths)} anomaly maps over their images to {maps_dir} (colours from {low:.6g} to "
                   f"{high:.6g}: the 1st and 99.9th percentiles of this run's map values)")


if __name__ == "__main__":
    main()
