#!/usr/bin/env bash
# The robustness protocol on CIFAR-10 (docs/robustness.md): every head's SD (clean test set)
# against its SPD (the same fitted head on the 15 corruptions at severity 5, labels unchanged),
# on the CIFAR-10 JPEG copy through EfficientNet-Lite0 at 224x224.
#
#   bash benchmarks/robustness_cifar.sh            # severities 1,3,5, 100 test images per class
#   SEVERITIES=5 PER_CLASS=100 bash benchmarks/robustness_cifar.sh
#
# The cache is the one the CIFAR-10 results pages use (same options, so it is not extracted
# again: only the corrupted test splits are added to it; without it, this extracts it first,
# about 46 + 30 min on 2 cores). The corrupted splits: 15 corruptions x the severities x
# PER_CLASS x 10 test images (CIFAR-10-C's constants: the images are 32x32), corrupted at 32x32,
# then resized like the clean ones. The clean test split stays whole (10,000 images); each
# corrupted split's "clean, same images" AUROC is on the same subset. Writes, under $OUT:
# one metrics file per head (with its shift section), extraction.txt (time and store size of
# the corrupted splits, corruption cost per image) and manifest.json (command, commit, date,
# machine). The robustness table, the heads x corruptions heat map and AUROC against severity
# are in the documentation's results pages: python -m pipeline.docs (dvc repro docs/dvc.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/cifar10-jpg}
C=${CACHE:-cache/cifar10jpg_efficientnet_lite0_224.zarr}
OUT=${OUT:-results/cifar_auto}
SEVERITIES=${SEVERITIES:-1,3,5}
PER_CLASS=${PER_CLASS:-100}
WORKERS=${WORKERS:-2}
mkdir -p "$OUT"

# 1. The corrupted test splits, added to the cache (frost needs: pip install -e '.[corruptions]').
start=$(date +%s)
python -m pipeline.extract --dataset imagefolder --data-dir "$DATA" --backbone efficientnet_lite0 \
    --image-size 224 --maps intermediate --views 2 --views-per-class 2000 --out "$C" --workers "$WORKERS" \
    --corruptions all --severities "$SEVERITIES" --corrupt-per-class "$PER_CLASS"
seconds=$(( $(date +%s) - start ))
python - "$C" "$seconds" "$SEVERITIES" "$DATA" > "$OUT/extraction.txt" <<'EOF'
import sys, time
from pathlib import Path

import numpy as np

from pipeline.extract.corruptions import CORRUPTIONS, corrupt_image
from pipeline.extract.datasets import load_dataset
from pipeline.store.cache import FeatureCache

path, seconds, severities = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cache = FeatureCache.open(path)
splits = [s for s in cache.derived_splits if cache.split_description(s).get("corruption") in CORRUPTIONS]
images = sum(cache.size(s) for s in splits)
size = sum(f.stat().st_size for s in splits for f in (path / s).rglob("*") if f.is_file())
clean = sum(f.stat().st_size for f in (path / "test").rglob("*") if f.is_file())
print(f"{len(splits)} corrupted test splits, {images} images, severities {severities}")
print(f"extraction run: {seconds} s wall (includes any clean extraction this run did), "
      f"{1000 * seconds / max(images, 1):.1f} s per 1,000 corrupted images")
print(f"store size of the corrupted splits: {size / 2**20:.1f} MiB ({size / max(images, 1) / 1024:.1f} KiB per image; "
      f"the clean test split: {clean / 2**20:.1f} MiB for {cache.size('test')} images)")
# The corruption itself, per corruption (the forward pass is the same for all): 200 test images.
test = load_dataset("imagefolder", sys.argv[4]).test
rows = np.linspace(0, len(test.labels) - 1, 200).astype(int)
arrays = [test.images[int(i)].permute(1, 2, 0).numpy().copy() for i in rows]
for name in CORRUPTIONS:
    corrupt_image(arrays[0], 0, name, 5, "cifar10-c")  # frost reads its photographs once
    started = time.perf_counter()
    for i, array in zip(rows, arrays):
        corrupt_image(array, int(i), name, 5, "cifar10-c")
    print(f"  {name:18s} {1000 * (time.perf_counter() - started) / len(rows):7.2f} ms per image (severity 5, one core)")
EOF
cat "$OUT/extraction.txt"

# 2. Every head, fitted once per class, scoring the clean and every corrupted test split.
python -m stages.knn --cache "$C" --shift all --metrics "$OUT/knn.json"
python -m stages.gaussian --cache "$C" --shift all --metrics "$OUT/gaussian.json"
python -m stages.gaussian --cache "$C" --scales multi --shift all --metrics "$OUT/gaussian_multi.json"
for d in ocsvm iforest lof pyod:ECOD pyod:HBOS; do      # pyod: pip install -e '.[pyod]'
    python -m stages.classical --cache "$C" --detector "$d" --shift all --metrics "$OUT/classical_${d/:/_}.json"
done
python -m stages.igd --cache "$C" --shift all --metrics "$OUT/igd.json"
python -m stages.plume --cache "$C" --dim native --epochs 5 --shift all --metrics "$OUT/plume.json"
python -m stages.anomem --cache "$C" --gammas none --shift all --metrics "$OUT/anomem.json"

# 3. What this folder holds and how it was made (the tables: python -m pipeline.docs).
python -m pipeline.manifest write "$OUT" --seconds "$(( $(date +%s) - start ))" \
    --command "SEVERITIES=$SEVERITIES PER_CLASS=$PER_CLASS bash benchmarks/robustness_cifar.sh" \
    --what "Every head on CIFAR-10 (EfficientNet-Lite0 224x224, default preprocessing), scored on the clean test set and on the 15 corruptions at severities $SEVERITIES ($PER_CLASS test images per class): SD against SPD."
