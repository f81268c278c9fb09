"""float16 vs float32 feature storage: read throughput and the kNN AUROC difference.

    python benchmarks/cache_dtype.py cache/cifar10jpg_efficientnet_lite0_224.zarr

Makes a float16 copy of a float32 cache's pooled features (in a temporary folder), then
reads every training feature of each (best of 3, from a warm page cache) and runs kNN
(k = 2) for every class on each. Prints bytes on disk, read throughput, their ratio and
the per-class AUROC differences.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np


def size_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@click.command()
@click.argument("cache_path", type=click.Path(exists=True, file_okay=False))
def main(cache_path: str) -> None:
    from pipeline.store.cache import ArraySpec, FeatureCache
    from pipeline.evaluate import evaluate_one_vs_all
    from pipeline.heads.knn.head import KNNHead

    source = FeatureCache.open(cache_path)
    work = Path(tempfile.mkdtemp(prefix="bench-dtype-"))
    copies = {}
    for dtype in ("float32", "float16"):
        dim = source.array("train").shape[1]
        specs = [ArraySpec("features", (dim,), dtype), ArraySpec("labels", (), "int64")]
        copy = FeatureCache.create(work / f"{dtype}.zarr", {**source.metadata, "features": {"dtype": dtype}},
                                   {s: specs for s in source.splits}, {s: source.size(s) for s in source.splits},
                                   source.chunk_rows)
        for split in source.splits:
            for chunk, rows in enumerate(source.chunk_slices(split)):
                copy.write_chunk(split, chunk, {"features": source.read_chunk(split, "features", chunk),
                                                "labels": source.read_chunk(split, "labels", chunk)})
        copy.mark_complete()
        copies[dtype] = copy

    report = {}
    for dtype, copy in copies.items():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            features = copy.features("train")
            times.append(time.perf_counter() - start)
        results = evaluate_one_vs_all(copy, lambda: KNNHead(k=2), list(range(len(copy.classes))))
        report[dtype] = {"seconds": min(times), "bytes": size_on_disk(copy.path / "train" / "features"),
                         "values": features.size,
                         "auroc": {name: r["metrics"]["auroc"] for name, r in results.items()}}
    for dtype, r in report.items():
        print(f"{dtype}: {r['bytes'] / 1e6:7.1f} MB on disk, read {r['values'] / r['seconds'] / 1e6:7.1f} M values/s "
              f"({r['seconds'] * 1000:.0f} ms), mean AUROC {100 * np.mean(list(r['auroc'].values())):.3f}")
    print(f"float16 read throughput / float32: {report['float32']['seconds'] / report['float16']['seconds']:.2f}x")
    diffs = {n: 100 * (report["float16"]["auroc"][n] - report["float32"]["auroc"][n]) for n in report["float32"]["auroc"]}
    print("AUROC difference float16 - float32 (points): " + ", ".join(f"{n} {d:+.4f}" for n, d in diffs.items()))


if __name__ == "__main__":
    main()
