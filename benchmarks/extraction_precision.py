"""Extraction below the float32 floor: pipeline.extract in bfloat16 (PyTorch autocast) and in
float32 through ONNX Runtime, against PyTorch float32 (today's default), end to end, and each
against its bare forward pass (does the loader keep up?).

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
@click.option("--images", default=4000, show_default=True, help="Images in the subset (train + test).")
@click.option("--image-size", default=224, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--workers", default="1", show_default=True, help="Loader workers to try, comma-separated.")
@click.option("--rounds", default=2, show_default=True)
@click.option("--out", default=None, help="Also write the lines printed here to this file.")
def main(data_dir: str, images: int, image_size: int, batch_size: int, workers: str, rounds: int,
         out: str | None) -> None:
    from pipeline.backbones import load_backbone
    from pipeline.extract.datasets import image_folder_subset, load_dataset
    from pipeline.extract.extraction import extract
    from pipeline.extract.loop import OnnxForward, torch_forward
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

    ways = {"float32": ("float32", "torch"), "bfloat16": ("bfloat16", "torch"), "onnxruntime": ("float32", "onnxruntime")}
    forwards = {name: torch_forward(model, (), torch.device("cpu"), precision) if engine == "torch"
                else OnnxForward(model, ()) for name, (precision, engine) in ways.items()}

    def bare(way: str) -> float:
        steps = max(1, n // batch_size)
        forwards[way](batch)
        started = time.perf_counter()
        for _ in range(steps):
            forwards[way](batch)
        return steps * batch_size / (time.perf_counter() - started)

    def pipeline(way: str, loader_workers: int) -> float:
        target = work / f"{way}.zarr"  # the last of each way is kept, to compare the features
        shutil.rmtree(target, ignore_errors=True)
        precision, engine = ways[way]
        started = time.perf_counter()
        extract(dataset, "efficientnet_lite0", preprocessing, target, batch_size=batch_size, workers=loader_workers,
                precision=precision, engine=engine, loaded=loaded)
        return n / (time.perf_counter() - started)

    configs = {f"bare forward {way}": (lambda way=way: bare(way)) for way in ways}
    for w in (int(x) for x in workers.split(",")):
        for way in ways:
            configs[f"pipeline.extract {way}, {w} loader worker{'s' if w != 1 else ''}"] = (lambda way=way, w=w: pipeline(way, w))
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
        fp32 = median[f"pipeline.extract float32{suffix}"]
        for way in ("bfloat16", "onnxruntime"):
            rate = median[f"pipeline.extract {way}{suffix}"]
            lines.append(f"{w} worker(s): {way} / PyTorch float32 end to end {rate / fp32:.2f}x (target >= 2.5); "
                         f"its pipeline / its bare forward {rate / median[f'bare forward {way}']:.2f}")
        lines.append(f"{w} worker(s): PyTorch float32 pipeline / its bare forward "
                     f"{fp32 / median['bare forward float32']:.2f}")
    for way in ("bfloat16", "onnxruntime"):
        lines.append(f"bare forward {way} / PyTorch float32: "
                     f"{median[f'bare forward {way}'] / median['bare forward float32']:.2f}x")
    # How far the bfloat16 features are from the float32 ones (same images, same preprocessing).
    from pipeline.store.cache import FeatureCache

    exact = np.concatenate([FeatureCache.open(work / "float32.zarr").features(s) for s in ("train", "test")])
    for way in ("bfloat16", "onnxruntime"):
        other = np.concatenate([FeatureCache.open(work / f"{way}.zarr").features(s) for s in ("train", "test")])
        relative = np.linalg.norm(other - exact, axis=1) / np.linalg.norm(exact, axis=1)
        cosine = (other * exact).sum(1) / np.linalg.norm(other, axis=1) / np.linalg.norm(exact, axis=1)
        lines.append(f"{way} features vs PyTorch float32, per image: relative L2 error median "
                     f"{np.median(relative):.2e}, 95th percentile {np.quantile(relative, 0.95):.2e}, max "
                     f"{relative.max():.2e}; cosine similarity min {cosine.min():.7f}")
    print("\n".join(lines))
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
