"""Extraction below the float32 floor: pipeline.extract in bfloat16 against float32, end to end,
and each against its bare forward pass (does the loader keep up?).

    python benchmarks/extraction_precision.py --data-dir data/cifar10-jpg --images 1000 \
        --out results/bench_extraction_precision.txt

Same images (a subset of the image folder, the same for every run), EfficientNet-Lite0,
image size, batch size; interleaved rounds in one process; the median images/s of each
configuration over the rounds. "bare forward" is the backbone alone on a random batch already in
memory (the ceiling); "pipeline.extract" is the whole command's work: listing, the unreadable-file
check, decoding, resizing, the forward pass and the Zarr writes, into a new cache each time.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch


@click.command()
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--images", default=1000, show_default=True, help="Images in the subset (train + test).")
@click.option("--image-size", default=224, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--workers", default="1", show_default=True, help="Loader workers to try, comma-separated.")
@click.option("--rounds", default=2, show_default=True)
@click.option("--out", default=None, help="Also write the lines printed here to this file.")
def main(data_dir: str, images: int, image_size: int, batch_size: int, workers: str, rounds: int,
         out: str | None) -> None:
    from pipeline.extract.backbones import load_backbone
    from pipeline.extract.datasets import image_folder_subset, load_dataset
    from pipeline.extract.extraction import extract
    from pipeline.extract.loop import PRECISIONS
    from pipeline.extract.preprocess import Preprocessing

    work = Path(tempfile.mkdtemp(prefix="bench-precision-"))
    classes = [p for p in (Path(data_dir) / "train").iterdir() if p.is_dir()]
    per_class = max(1, images // (2 * len(classes)))
    folder = image_folder_subset(data_dir, work / "images", per_class, per_class)
    n = sum(1 for _ in folder.rglob("*.jpg"))
    preprocessing = Preprocessing(image_size=image_size, normalisation="inception")
    loaded = load_backbone("efficientnet_lite0", image_size)
    model = loaded[0].to(memory_format=torch.channels_last)
    batch = torch.randn(batch_size, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    dataset = load_dataset("imagefolder", folder)

    def bare(precision: str) -> float:
        autocast = torch.autocast("cpu", dtype=PRECISIONS[precision] or torch.bfloat16, enabled=precision != "float32")
        steps = max(1, n // batch_size)
        with torch.inference_mode(), autocast:
            model(batch)
            started = time.perf_counter()
            for _ in range(steps):
                model(batch)
        return steps * batch_size / (time.perf_counter() - started)

    def pipeline(precision: str, loader_workers: int) -> float:
        target = work / f"{precision}.zarr"  # the last of each precision is kept, to compare the features
        shutil.rmtree(target, ignore_errors=True)
        started = time.perf_counter()
        extract(dataset, "efficientnet_lite0", preprocessing, target, batch_size=batch_size, workers=loader_workers,
                precision=precision, loaded=loaded)
        return n / (time.perf_counter() - started)

    configs = {f"bare forward {p}": (lambda p=p: bare(p)) for p in ("float32", "bfloat16")}
    for w in (int(x) for x in workers.split(",")):
        for p in ("float32", "bfloat16"):
            configs[f"pipeline.extract {p}, {w} loader worker{'s' if w != 1 else ''}"] = (lambda p=p, w=w: pipeline(p, w))
    rates: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, run in configs.items():
            rates[name].append(run())
    median = {name: statistics.median(values) for name, values in rates.items()}
    lines = [f"{n} JPEG images of {data_dir}, EfficientNet-Lite0, {image_size}x{image_size}, batch {batch_size}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rounds} interleaved rounds (median)"]
    lines += [f"{name:45s} {rate:7.1f} images/s" for name, rate in median.items()]
    for w in (int(x) for x in workers.split(",")):
        suffix = f", {w} loader worker{'s' if w != 1 else ''}"
        fp32, bf16 = median[f"pipeline.extract float32{suffix}"], median[f"pipeline.extract bfloat16{suffix}"]
        lines.append(f"{w} worker(s): bfloat16 / float32 end to end {bf16 / fp32:.2f}x (target >= 2.5); "
                     f"bfloat16 pipeline / its bare forward {bf16 / median['bare forward bfloat16']:.2f}; "
                     f"float32 pipeline / its bare forward {fp32 / median['bare forward float32']:.2f}")
    lines.append(f"bare forward bfloat16 / float32: {median['bare forward bfloat16'] / median['bare forward float32']:.2f}x")
    # How far the bfloat16 features are from the float32 ones (same images, same preprocessing).
    from pipeline.store.cache import FeatureCache

    exact = np.concatenate([FeatureCache.open(work / "float32.zarr").features(s) for s in ("train", "test")])
    half = np.concatenate([FeatureCache.open(work / "bfloat16.zarr").features(s) for s in ("train", "test")])
    relative = np.linalg.norm(half - exact, axis=1) / np.linalg.norm(exact, axis=1)
    cosine = (half * exact).sum(1) / np.linalg.norm(half, axis=1) / np.linalg.norm(exact, axis=1)
    lines.append(f"bfloat16 features vs float32, per image: relative L2 error median {np.median(relative):.2e}, "
                 f"95th percentile {np.quantile(relative, 0.95):.2e}, max {relative.max():.2e}; cosine similarity "
                 f"min {cosine.min():.5f}")
    print("\n".join(lines))
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
