"""Does EfficientNet-Lite0's own input scaling help kNN? ImageNet mean/std vs (x - 0.5) / 0.5.

    python benchmarks/lite_normalisation.py   # needs data/cifar10-jpg (the offline CIFAR-10 copy)

Extracts the first 150 training and 100 test images of each CIFAR-10 class at 224x224 with
both normalisations and prints kNN (k = 2) one-vs-all AUROC per class and the mean.
"""
import tempfile, numpy as np
from pathlib import Path
from pipeline.extract.datasets import image_folder_subset, load_dataset
from pipeline.evaluate import evaluate_one_vs_all
from pipeline.extract.extraction import extract
from pipeline.heads.knn.head import KNNHead
from pipeline.extract.preprocess import Preprocessing
work = Path(tempfile.mkdtemp())
ds = load_dataset("imagefolder", image_folder_subset("data/cifar10-jpg", work / "img", 150, 100))
for norm in ("imagenet", "inception"):
    cache = extract(ds, "efficientnet_lite0", Preprocessing(image_size=224, normalisation=norm), work / f"{norm}.zarr", workers=1)
    r = evaluate_one_vs_all(cache, lambda: KNNHead(k=2), list(range(10)))
    a = {n: round(100 * v["metrics"]["auroc"], 1) for n, v in r.items()}
    print(norm, "mean", round(float(np.mean(list(a.values()))), 2), a, flush=True)
