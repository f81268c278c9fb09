"""End to end: kNN for every class from one feature cache vs recomputing features per class.

    python benchmarks/end_to_end.py --data-dir data/cifar10-jpg --train-per-class 100 --test-per-class 100

PANDA's code extracts, for each normal class, the features of that class's training
images and of the whole test set, then runs kNN. With a cache, all images are extracted
once and every class is scored from it. Both run here on the same image subset, backbone
(EfficientNet-Lite0) and image size; the script prints both wall times, their ratio, and
the mean AUROC of each (they differ slightly: the plain path resizes with PIL).
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
@click.option("--train-per-class", default=100, show_default=True)
@click.option("--test-per-class", default=100, show_default=True)
@click.option("--image-size", default=64, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
def main(data_dir: str, train_per_class: int, test_per_class: int, image_size: int, batch_size: int) -> None:
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from pipeline.backbones import load_backbone
    from pipeline.extract.datasets import image_folder_subset, load_dataset
    from pipeline.evaluate import evaluate_one_vs_all
    from pipeline.extract.extraction import extract
    from pipeline.heads.knn.head import KNNHead
    from pipeline.heads.knn.engine import knn_scores
    from pipeline.metrics import detection_metrics
    from pipeline.extract.preprocess import Preprocessing

    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    folder = image_folder_subset(data_dir, work / "images", train_per_class, test_per_class)

    start = time.perf_counter()
    cache = extract(load_dataset("imagefolder", folder), "efficientnet_lite0", Preprocessing(image_size=image_size),
                    work / "cache.zarr", batch_size=batch_size, workers=1)
    results = evaluate_one_vs_all(cache, lambda: KNNHead(k=2), list(range(len(cache.classes))))
    cached_time = time.perf_counter() - start
    cached_auroc = np.mean([r["metrics"]["auroc"] for r in results.values()])

    start = time.perf_counter()
    model, _ = load_backbone("efficientnet_lite0", image_size)
    transform = T.Compose([T.Resize((image_size, image_size)), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    train_set, test_set = ImageFolder(str(folder / "train"), transform), ImageFolder(str(folder / "test"), transform)

    def features(dataset) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model(x)["pooled"].numpy()
                                   for x, _ in DataLoader(dataset, batch_size=batch_size, num_workers=1)])

    aurocs = []
    for c in range(len(train_set.classes)):
        gallery = features(Subset(train_set, [i for i, t in enumerate(train_set.targets) if t == c]))
        test = features(test_set)
        scores = knn_scores(gallery, test, k=2)
        aurocs.append(detection_metrics(np.array(test_set.targets) != c, scores)["auroc"])
    recompute_time = time.perf_counter() - start

    n_train, n_test = len(train_set), len(test_set)
    print(f"{len(train_set.classes)} classes, {n_train} train + {n_test} test images, EfficientNet-Lite0, "
          f"{image_size}x{image_size}, kNN k=2")
    print(f"cache once, score all classes:   {cached_time:7.1f} s   mean AUROC {100 * cached_auroc:.2f}")
    print(f"recompute per class (PANDA):     {recompute_time:7.1f} s   mean AUROC {100 * np.mean(aurocs):.2f}")
    print(f"speed-up of the cache path: {recompute_time / cached_time:.2f}x")


if __name__ == "__main__":
    main()
