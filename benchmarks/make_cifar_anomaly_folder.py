"""Arrange the CIFAR-10 JPEG copy as an anomaly folder (the MVTec AD / anomalib layout), for the
per-defect-type table of every head on real images.

    python benchmarks/make_cifar_anomaly_folder.py --source data/cifar10-jpg --out data/cifar10-anomaly

Makes, by default from every image of the chosen classes (5,000 training and 1,000 test images
per CIFAR-10 class)::

    OUT/train/good/            the normal class's training images (airplane)
    OUT/test/good/             the normal class's test images
    OUT/test/<defect type>/    the test images of each "defect" class (automobile, bird, cat)

``--train-per-class`` and ``--test-per-class`` take the first N images of each class by file
name instead (a stated, reproducible subset). The entries are links to the source images
(``--copy``: copies). The folder is built beside OUT and renamed into place when complete, so
an interrupted run leaves no half-made folder. Then, as the README's "Your own images" says::

    python -m pipeline.extract --dataset anomaly_folder --data-dir data/cifar10-anomaly
    python -m stages.knn --cache cache/anomaly_folder_efficientnet_lite0_224.zarr
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from pipeline.errors import PipelineError
from pipeline.extract.listing import list_images


def first_images(folder: Path, count: int | None) -> list[Path]:
    """The first ``count`` (None: all) images of ``folder`` by file name."""
    files, refused = list_images(folder)
    if refused:
        raise PipelineError(f"{folder} holds entries that cannot be read: "
                            f"{'; '.join(f'{p} ({r})' for p, r in refused[:5])}.")
    if not files:
        raise PipelineError(f"no images in {folder}.")
    return [Path(f) for f in sorted(files)[:count]]


def make_anomaly_folder(source: Path, out: Path, normal: str, defects: list[str], train_per_class: int | None,
                        test_per_class: int | None, normal_folder: str = "good", copy: bool = False) -> dict:
    """Lay out ``out`` from the class folders of ``source`` (``train/<class>/``, ``test/<class>/``);
    returns the number of images per folder of ``out``."""
    if normal in defects:
        raise PipelineError(f"{normal} is the normal class and cannot also be a defect type.")
    for split, name in [("train", normal), ("test", normal), *(("test", d) for d in defects)]:
        if not (source / split / name).is_dir():
            raise PipelineError(f"{source / split / name} does not exist: --source must hold train/<class>/ and "
                                f"test/<class>/ (the CIFAR-10 JPEG copy does).")
    if os.path.lexists(out):
        raise PipelineError(f"{out} exists already; remove it or choose another --out.")
    plan = {f"train/{normal_folder}": first_images(source / "train" / normal, train_per_class),
            f"test/{normal_folder}": first_images(source / "test" / normal, test_per_class),
            **{f"test/{d}": first_images(source / "test" / d, test_per_class) for d in defects}}
    building = out.with_name(out.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)  # what an interrupted run left
    for folder, images in plan.items():
        (building / folder).mkdir(parents=True)
        for image in images:
            target = building / folder / image.name
            if copy:
                shutil.copyfile(image, target)
            else:
                target.symlink_to(image.resolve())
    os.replace(building, out)
    return {folder: len(images) for folder, images in plan.items()}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--source", default="data/cifar10-jpg", show_default=True, type=click.Path(file_okay=False),
              help="The CIFAR-10 JPEG copy: train/<class>/*.jpg and test/<class>/*.jpg.")
@click.option("--out", default="data/cifar10-anomaly", show_default=True, type=click.Path(file_okay=False),
              help="The anomaly folder to make (must not exist).")
@click.option("--normal", default="airplane", show_default=True, help="The class whose images are normal.")
@click.option("--defects", default="automobile,bird,cat", show_default=True,
              help="Comma-separated classes whose test images are the anomalies, one defect type each.")
@click.option("--normal-folder", default="good", show_default=True,
              help="The normal images' folder name in train/ and test/ (params.yaml's dataset.normal).")
@click.option("--train-per-class", default=None, type=click.IntRange(1),
              help="The first N training images of the normal class by name (default: all).")
@click.option("--test-per-class", default=None, type=click.IntRange(1),
              help="The first N test images of each class by name (default: all).")
@click.option("--copy", is_flag=True, help="Copy the images instead of linking to them.")
def main(source, out, normal, defects, normal_folder, train_per_class, test_per_class, copy):
    """Make an anomaly folder from CIFAR-10: one class normal, others as defect types."""
    counts = make_anomaly_folder(Path(source), Path(out), normal, [d.strip() for d in defects.split(",") if d.strip()],
                                 train_per_class, test_per_class, normal_folder, copy)
    click.echo(f"wrote {out} ({'copies' if copy else 'links'}): "
               + ", ".join(f"{folder} {count}" for folder, count in counts.items()))


if __name__ == "__main__":
    main()
