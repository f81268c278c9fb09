"""Cost of an image folder's identity check: content hashes vs mtime+size vs the old path+size.

    python benchmarks/dataset_digest.py --data-dir data/cifar10-jpg --files 10000

Copies FILES images of the CIFAR-10 JPEG copy (80% train, 20% test, the same number per
class) into a temporary image folder, then times, in interleaved rounds, three digests of its
file list (train then test, as the image-folder dataset lists them):
- path+size: each file's relative path and size (one stat per file; what the cache recorded
  before, blind to an image edited in place with the same size);
- mtime+size: the same plus the modification time in nanoseconds (blind to edits that keep
  the time stamp, such as cp -p or rsync -t, and changed by a mere copy to another machine);
- content: pipeline.extract.datasets.files_digest, the BLAKE2b of every file's bytes in
  DIGEST_THREADS threads (what the cache records now), and the same in one thread.
Each runs with the files in the page cache (warm) and after every file was dropped from it
with posix_fadvise(DONTNEED) (cold; a virtual machine's host may still cache them). For
scale, decoding every file, which every extraction does once (here as the decode check that
--skip-bad makes first, pipeline.extract.datasets.unreadable_images, in this process), runs
once, warm.
Prints medians of each digest's time and files/s, and the median over rounds of its time
over path+size's in the same round.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import click


def copy_images(source: Path, target: Path, files: int) -> Path:
    """An image folder of real copies (not links) of the first images of each class of ``source``."""
    classes = sorted(p.name for p in (source / "train").iterdir() if p.is_dir())
    per_split = {"train": files * 8 // 10 // len(classes), "test": files * 2 // 10 // len(classes)}
    for split, count in per_split.items():
        for name in classes:
            (target / split / name).mkdir(parents=True)
            for image in sorted((source / split / name).iterdir())[:count]:
                shutil.copyfile(image, target / split / name / image.name)
    return target


def path_and_size(paths: list[str], root: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{os.path.relpath(path, root)}\0{os.path.getsize(path)}\n".encode())
    return digest.hexdigest()


def mtime_and_size(paths: list[str], root: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def drop_from_page_cache(paths: list[str]) -> None:
    for path in paths:
        handle = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(handle, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(handle)


@click.command()
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The CIFAR-10 JPEG copy (train/<class>/*.jpg, test/<class>/*.jpg).")
@click.option("--files", default=10000, show_default=True, help="Images in the folder (80% train, 20% test).")
@click.option("--rounds", default=7, show_default=True, help="Interleaved rounds, in a new random order each.")
def main(data_dir: str, files: int, rounds: int) -> None:
    from pipeline.extract.datasets import DIGEST_THREADS, files_digest, load_dataset, unreadable_images

    with tempfile.TemporaryDirectory(prefix="digest-bench-") as work:
        root = copy_images(Path(data_dir), Path(work) / "images", files)
        dataset = load_dataset("imagefolder", root)
        paths = dataset.train.images.paths + dataset.test.images.paths
        megabytes = sum(os.path.getsize(p) for p in paths) / 1e6
        methods = {
            "path+size": lambda: path_and_size(paths, root),
            "mtime+size": lambda: mtime_and_size(paths, root),
            f"content, {DIGEST_THREADS} threads": lambda: files_digest(paths, root),
            "content, 1 thread": lambda: files_digest(paths, root, threads=1),
        }
        assert methods[f"content, {DIGEST_THREADS} threads"]() == dataset.identity["content_sha256"]
        times = {(name, cache): [] for name in methods for cache in ("warm", "cold")}
        rng = random.Random(0)
        for _ in range(rounds):
            order = list(times)
            rng.shuffle(order)
            for name, cache in order:
                if cache == "cold":
                    drop_from_page_cache(paths)
                else:
                    methods[name]()  # the files' pages (and the directory entries) in memory
                start = time.perf_counter()
                methods[name]()
                times[name, cache].append(time.perf_counter() - start)
        start = time.perf_counter()
        unreadable_images(dataset.train.images)
        unreadable_images(dataset.test.images)
        decode = time.perf_counter() - start

    print(f"{len(paths)} files ({megabytes:.1f} MB) of the CIFAR-10 JPEG copy, {rounds} interleaved rounds, "
          f"{os.cpu_count()} CPU cores; medians")
    for cache in ("warm", "cold"):
        print(f"{cache} page cache:")
        for name in methods:
            median = statistics.median(times[name, cache])
            ratios = [t / base for t, base in zip(times[name, cache], times["path+size", cache])]
            print(f"  {name:22s} {median * 1e3:8.1f} ms  {len(paths) / median:9.0f} files/s  "
                  f"{statistics.median(ratios):5.1f}x path+size (range {min(ratios):.1f}-{max(ratios):.1f})")
    print(f"for scale: decoding every file, as every extraction does (unreadable_images, warm, 0 workers) "
          f"{decode * 1e3:.0f} ms, {len(paths) / decode:.0f} files/s")


if __name__ == "__main__":
    main()
