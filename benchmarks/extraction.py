"""Extraction throughput: pipeline.extract vs a plain papers-style loop vs the bare forward pass.

    python benchmarks/extraction.py --data-dir data/cifar10-jpg --images 512 --image-size 224

All three run in this process, on the same images, backbone (EfficientNet-Lite0), image
size and batch size:
- bare forward: the backbone on random tensors already in memory (the ceiling);
- plain loop: torchvision ImageFolder with PIL transforms, a DataLoader, the forward pass,
  features collected in a list and np.save'd at the end (what the papers' code does);
- pipeline.extract: the project's extraction into a Zarr cache.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch


@click.command()
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--images", default=512, show_default=True)
@click.option("--image-size", default=224, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--workers", default=1, show_default=True)
def main(data_dir: str, images: int, image_size: int, batch_size: int, workers: int) -> None:
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from pipeline.backbones import load_backbone
    from pipeline.extract.extraction import extract
    from pipeline.extract.datasets import image_folder_subset, load_dataset
    from pipeline.extract.preprocess import Preprocessing

    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    per_class = max(1, images // (2 * len([p for p in (Path(data_dir) / "train").iterdir() if p.is_dir()])))
    folder = image_folder_subset(data_dir, work / "images", per_class, per_class)
    n = sum(1 for _ in folder.rglob("*.jpg"))
    print(f"{n} images, EfficientNet-Lite0, {image_size}x{image_size}, batch {batch_size}, "
          f"{workers} loader workers, torch threads {torch.get_num_threads()}")
    model, _ = load_backbone("efficientnet_lite0", image_size)

    # 1. bare forward on random tensors: the ceiling.
    plain_model = model  # the same modules, default (contiguous) memory format for the plain loop
    fast_model = load_backbone("efficientnet_lite0", image_size)[0].to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fast_model(x)
        start = time.perf_counter()
        for _ in range(max(1, n // batch_size)):
            fast_model(x)
        bare = max(1, n // batch_size) * batch_size / (time.perf_counter() - start)

    # 2. the plain loop of the papers' code.
    transform = T.Compose([T.Resize((image_size, image_size)), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    features = []
    start = time.perf_counter()
    loader = DataLoader(ImageFolder(str(folder / "train"), transform), batch_size=batch_size, num_workers=workers)
    loader_test = DataLoader(ImageFolder(str(folder / "test"), transform), batch_size=batch_size, num_workers=workers)
    with torch.no_grad():
        for part in (loader, loader_test):
            for batch, _ in part:
                features.append(plain_model(batch)["pooled"].numpy())
    np.save(work / "plain.npy", np.concatenate(features))
    plain = n / (time.perf_counter() - start)

    # 3. pipeline.extract.
    start = time.perf_counter()
    extract(load_dataset("imagefolder", folder), "efficientnet_lite0", Preprocessing(image_size=image_size),
            work / "cache.zarr", batch_size=batch_size, workers=workers)
    ours = n / (time.perf_counter() - start)

    print(f"bare forward     {bare:7.1f} images/s")
    print(f"plain loop       {plain:7.1f} images/s")
    print(f"pipeline.extract {ours:7.1f} images/s")
    print(f"pipeline.extract / plain loop:   {ours / plain:.2f}x   (target >= 1.3)")
    print(f"pipeline.extract / bare forward: {ours / bare:.2f}    (target >= 0.80)")


if __name__ == "__main__":
    main()
