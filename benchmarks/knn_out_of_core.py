"""Peak memory of out-of-core kNN (Dask over the cache chunks) on a gallery larger than a budget.

    python benchmarks/knn_out_of_core.py [--rows 2000000] [--dim 256] [--budget-gb 1] [--workdir /tmp/knn_ooc]

Writes a synthetic feature cache chunk by chunk (train = the gallery, float16, one class; test =
queries: half near gallery points, half not), then measures, each in a fresh child process with
its peak resident memory read from the kernel (wait4 ru_maxrss):

- out of core: ``KNNHead`` fitted on ``FeatureCache.dask_rows`` (one Dask task per chunk, tree
  merge of the per-chunk top-k), the path of ``python -m stages.knn --out-of-core``;
- the stage itself: ``python -m stages.knn --out-of-core`` (metrics file only);
- in memory, for comparison: the whole gallery loaded as NumPy float32, then ``knn_scores``.

Checks: out-of-core scores against the in-memory ones on the full gallery, and against an
in-memory computation on a 200,000-row subset (``knn_scores`` vs ``knn_scores_dask``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

CHILD = r"""
import sys, time
import numpy as np
from pipeline.store.cache import FeatureCache
from pipeline.heads.knn.head import KNNHead
from pipeline.heads.knn.engine import knn_scores
mode, path, save = sys.argv[1:4]
cache = FeatureCache.open(path)
queries = cache.features("test")
import resource
# Peak resident memory before the kNN: the interpreter, torch, dask and the queries.
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
started = time.perf_counter()
if mode == "out-of-core":
    scores = KNNHead(k=2, threshold_quantile=None).fit(cache.dask_rows("train")).score_samples(queries)
else:
    scores = knn_scores(cache.features("train"), queries, k=2)
print(f"{time.perf_counter() - started:.1f} {before:.3f}")
np.save(save, scores)
"""


def measure_rss(command: list[str]) -> tuple[float, float, str]:
    """Run ``command`` as a child and read its peak resident memory from wait4."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read().strip()
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{text}\n{err.read()}")
    return elapsed, usage.ru_maxrss * 1024 / 1e9, text  # ru_maxrss is in KiB on Linux


def make_cache(path: Path, rows: int, dim: int, queries: int, chunk_rows: int):
    from pipeline.store.cache import ArraySpec, FeatureCache

    specs = [ArraySpec("features", (dim,), "float16"), ArraySpec("labels", (), "int64")]
    metadata = {"dataset": {"name": "synthetic-gallery", "classes": ["normal", "anomaly"], "n_train": rows,
                            "n_test": queries},
                "backbone": {"name": "none"}, "preprocessing": {"image_size": 0}}
    cache = FeatureCache.create(path, metadata, {"train": specs, "test": specs}, {"train": rows, "test": queries},
                                chunk_rows=chunk_rows)
    rng = np.random.default_rng(0)
    for chunk, s in enumerate(cache.chunk_slices("train")):
        block = rng.standard_normal((s.stop - s.start, dim), dtype=np.float32).astype(np.float16)
        cache.write_chunk("train", chunk, {"features": block, "labels": np.zeros(len(block), np.int64)})
    # Queries: half are gallery rows plus a little noise (normal), half are shifted (anomalies).
    gallery_rows = np.sort(rng.choice(rows, queries // 2, replace=False))
    near = cache.read("train", rows=gallery_rows).astype(np.float32)
    near += 0.3 * rng.standard_normal(near.shape, dtype=np.float32)
    far = rng.standard_normal((queries - len(near), dim), dtype=np.float32) * 1.2
    test = np.concatenate([near, far]).astype(np.float16)
    labels = np.r_[np.zeros(len(near), np.int64), np.ones(len(far), np.int64)]
    for chunk, s in enumerate(cache.chunk_slices("test")):
        cache.write_chunk("test", chunk, {"features": test[s], "labels": labels[s]})
    cache.mark_complete()
    return cache


@click.command()
@click.option("--rows", default=2_000_000, show_default=True)
@click.option("--dim", default=256, show_default=True)
@click.option("--queries", default=1000, show_default=True)
@click.option("--chunk-rows", default=16384, show_default=True)
@click.option("--budget-gb", default=1.0, show_default=True, help="Peak resident memory the out-of-core run must stay under.")
@click.option("--subset", default=200_000, show_default=True, help="Gallery rows of the in-memory subset check.")
@click.option("--workdir", default="/tmp/knn_ooc", show_default=True, type=click.Path(file_okay=False))
@click.option("--skip-in-memory", is_flag=True, help="Do not run the full in-memory comparison (it needs ~3.5 GB).")
def main(rows, dim, queries, chunk_rows, budget_gb, subset, workdir, skip_in_memory):
    from pipeline.heads.knn.engine import knn_scores, knn_scores_dask

    work = Path(workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    path = work / "gallery.zarr"
    started = time.perf_counter()
    cache = make_cache(path, rows, dim, queries, chunk_rows)
    on_disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9
    print(f"gallery: {rows:,} x {dim} float16 = {rows * dim * 2 / 1e9:.2f} GB of features "
          f"({rows * dim * 4 / 1e9:.2f} GB as the float32 distances are computed in; {on_disk:.2f} GB on disk, "
          f"{len(cache.chunk_slices('train'))} chunks of {chunk_rows} rows), written in "
          f"{time.perf_counter() - started:.0f} s; {queries} queries, k = 2")
    print(f"memory budget: {budget_gb:.2f} GB peak resident set (whole process: Python, torch, dask included)")

    py = sys.executable
    t_ooc, rss_ooc, out = measure_rss([py, "-c", CHILD, "out-of-core", str(path), str(work / "ooc.npy")])
    seconds, before = out.split()
    print(f"peak RSS of the child before the kNN (Python, torch, dask, queries loaded): {before} GB")
    print(f"out of core (KNNHead on FeatureCache.dask_rows, Dask threads): peak RSS {rss_ooc:.3f} GB "
          f"({rss_ooc / budget_gb:.2f} of the budget; gallery = {rows * dim * 2 / 1e9 / budget_gb:.1f}x the budget "
          f"in float16, {rows * dim * 4 / 1e9 / budget_gb:.1f}x in float32), kNN {seconds} s, wall {t_ooc:.1f} s: "
          f"{'WITHIN' if rss_ooc <= budget_gb else 'OVER'} budget")
    t_stage, rss_stage, out = measure_rss([py, "-m", "stages.knn", "--cache", str(path), "--classes", "0",
                                           "--device", "cpu", "--out-of-core", "--metrics", str(work / "stage.json")])
    print(f"python -m stages.knn --out-of-core: peak RSS {rss_stage:.3f} GB, wall {t_stage:.1f} s: "
          f"{'WITHIN' if rss_stage <= budget_gb else 'OVER'} budget; {out.splitlines()[-1]}")
    ooc = np.load(work / "ooc.npy")

    # Subset check: in memory against Dask on the first `subset` gallery rows, in this process.
    queries_np = cache.features("test")
    part = cache.features("train", slice(0, subset))
    exact = knn_scores(part, queries_np, k=2)
    dasked = knn_scores_dask(cache.dask_rows("train", rows=slice(0, subset)), queries_np, k=2)
    rel = float(np.max(np.abs(dasked - exact) / np.maximum(np.abs(exact), 1e-12)))
    print(f"subset check ({subset:,} gallery rows): Dask out-of-core vs in-memory knn_scores: max relative "
          f"difference {rel:.2e}, {'identical' if np.array_equal(dasked, exact) else 'not bit-identical'}")
    del part

    if not skip_in_memory:
        t_mem, rss_mem, out = measure_rss([py, "-c", CHILD, "in-memory", str(path), str(work / "mem.npy")])
        mem = np.load(work / "mem.npy")
        rel = float(np.max(np.abs(ooc - mem) / np.maximum(np.abs(mem), 1e-12)))
        print(f"in memory (whole gallery as NumPy float32, knn_scores), for comparison: peak RSS {rss_mem:.3f} GB, "
              f"kNN {out.split()[0]} s, wall {t_mem:.1f} s")
        print(f"full gallery: out-of-core vs in-memory scores: max relative difference {rel:.2e}, "
              f"{'identical' if np.array_equal(ooc, mem) else 'not bit-identical'}; "
              f"peak RSS ratio out-of-core / in-memory {rss_ooc / rss_mem:.2f}; kNN time ratio "
              f"{float(seconds) / float(out.split()[0]):.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
