"""Exact bfloat16 kNN (``precision="bfloat16"``) vs the float32 engine vs faiss IndexFlatL2.

    python benchmarks/knn_reduced_precision.py --cache cache/cifar10_efficientnet_lite0_224.zarr \
        [--normal-class all|NAME] [--queries 10000] [--k 2] [--repeats 5] [--out results/bench_knn_bf16.txt]
    python benchmarks/knn_reduced_precision.py --random [--gallery 50000] [--dim 1280] [--queries 10000] ...

Gallery: the cache's training rows (all of them, or one class's with ``--normal-class``);
queries: its first ``--queries`` test rows. ``--random``: non-negative Gaussian rows (like
post-ReLU pooled features, as in benchmarks/knn_engine.py). Both can be given; each data set
is measured in turn.

All timings are taken in this one process on the same data, in interleaved rounds, a new
order each round (this shared machine's speed drifts). Reported: each method's median time,
the median over rounds of faiss's time / the bfloat16 path's time in the same round (with the
range), the same for the float32 engine, how many queries each pass of the bfloat16 path
answered (the first screen's share is the fraction certified), and whether its top-k is the
exact one for every query. The reference for that is computed here independently: float64
distances to all gallery rows (a float64 matrix product on centred rows) pick each query's
k + 8 nearest, whose distances are then recomputed as sum((q - g)^2) in float64 and the k
smallest kept. Also shown: how far the float32 engine's and faiss's distances are from the
exact ones, and for how many queries faiss's neighbours differ (all at near-ties within
float32 rounding when it is working correctly). Needs ``pip install -e '.[bench]'`` for faiss.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import torch


def exact_reference(gallery: np.ndarray, queries: np.ndarray, k: int,
                    block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float32 squared distances, indices) of the exact k nearest, computed without the screen,
    and whether the k-th distance ties with the (k+1)-th (then either row may be named)."""
    from pipeline.heads.knn.reduced import exact_distances

    g, q = torch.from_numpy(gallery), torch.from_numpy(queries)
    mean = g.double().mean(0)
    centred_q = q.double() - mean
    q_norms = (centred_q ** 2).sum(1, keepdim=True)
    extra = min(len(gallery), k + 8)
    best = torch.full((len(q), extra), float("inf"), dtype=torch.float64)
    best_index = torch.zeros((len(q), extra), dtype=torch.long)
    for s in range(0, len(g), block):
        rows = g[s:s + block].double() - mean
        approx = q_norms + (rows ** 2).sum(1)[None] - 2 * centred_q @ rows.T
        merged = torch.cat([best, approx], 1)
        index = torch.cat([best_index, torch.arange(s, s + len(rows)).expand(len(q), -1)], 1)
        best, where = torch.topk(merged, extra, dim=1, largest=False)
        best_index = index.gather(1, where)
    query_rows = torch.arange(len(q)).repeat_interleave(extra)
    exact = exact_distances(g, q, query_rows, best_index.reshape(-1)).reshape(len(q), extra)
    values, where = torch.topk(exact, min(extra, k + 1), dim=1, largest=False)
    tied = values[:, k - 1] == values[:, k] if values.shape[1] > k else torch.zeros(len(q), dtype=torch.bool)
    return values[:, :k].float().numpy(), best_index.gather(1, where[:, :k]).numpy(), tied.numpy()


def load_cache(path: str, normal_class: str, queries: int) -> tuple[np.ndarray, np.ndarray, str]:
    from pipeline.store.cache import FeatureCache

    cache = FeatureCache.open(path)
    if normal_class == "all":
        gallery, label = cache.features("train"), "all training rows"
    else:
        names = cache.classes
        if normal_class not in names:
            raise click.BadParameter(f"{normal_class!r} is not a class of the cache ({', '.join(names)})")
        rows = np.flatnonzero(cache.labels("train") == names.index(normal_class))
        gallery, label = cache.features("train", rows), f"training rows of class {normal_class}"
    test = cache.features("test", slice(0, queries))
    return gallery, test, f"{path}: gallery {label}"


def measure(name: str, gallery: np.ndarray, queries: np.ndarray, k: int, repeats: int, echo) -> None:
    import faiss

    from pipeline.heads.knn.engine import knn_certified, knn_distances

    echo(f"\n== {name}: gallery {gallery.shape[0]} x {gallery.shape[1]}, {len(queries)} queries, k = {k}, "
         f"torch threads {torch.get_num_threads()}, faiss threads {faiss.omp_get_max_threads()}")

    def with_faiss():
        index = faiss.IndexFlatL2(gallery.shape[1])
        index.add(gallery)
        return index.search(queries, k)

    methods = {"faiss IndexFlatL2": with_faiss,
               "float32 engine": lambda: knn_distances(gallery, queries, k=k),
               "bfloat16, exact": lambda: knn_certified(gallery, queries, k=k)}
    outputs = {name: fn() for name, fn in methods.items()}  # warm up
    times: dict[str, list[float]] = {name: [] for name in methods}
    order = np.random.default_rng(1)
    for _ in range(repeats):
        for index in order.permutation(len(methods)):
            method = list(methods)[index]
            start = time.perf_counter()
            outputs[method] = methods[method]()
            times[method].append(time.perf_counter() - start)
    new = np.array(times["bfloat16, exact"])
    echo(f"{repeats} interleaved rounds: median time; faiss's time / this method's time in the same round")
    faiss_times = np.array(times["faiss IndexFlatL2"])
    for method, seconds in times.items():
        ratio = faiss_times / np.array(seconds)
        echo(f"  {method:20s} {np.median(seconds):8.3f} s   faiss / it: median {np.median(ratio):5.2f} "
             f"(range {ratio.min():.2f}-{ratio.max():.2f})")
    echo(f"  float32 engine time / bfloat16 time: median {np.median(np.array(times['float32 engine']) / new):.2f}")

    result = outputs["bfloat16, exact"]
    passes = result.passes()
    echo(f"bfloat16 path, queries answered by each pass: {passes}; certified by the first screen "
         f"{passes['bfloat16 screen'] / len(queries):.4f}, by the bfloat16 screens {result.certified_fraction:.4f}")

    reference, reference_index, tied = exact_reference(gallery, queries, k)
    same_values = np.array_equal(result.distances.view(np.int32), reference.view(np.int32))
    same_sets = np.array([set(a) == set(b) for a, b in zip(result.indices, reference_index)])
    # Exact ties at the k-th place may name either row: then the sets can differ, the values cannot.
    echo(f"top-k identical to the exact one for every query: {same_values and bool(np.all(same_sets | tied))} "
         f"(distances bit-identical {same_values}; neighbour sets equal for {same_sets.sum()} of {len(queries)} "
         f"queries, {np.sum(~same_sets & tied)} of the others at exact ties)")
    engine = outputs["float32 engine"]
    relative = np.abs(engine.astype(np.float64) - reference) / np.maximum(reference, 1e-30)
    echo(f"float32 engine vs exact distances: max relative difference {relative.max():.2e}")
    faiss_distances, faiss_index = outputs["faiss IndexFlatL2"]
    faiss_same = np.array([set(a) == set(b) for a, b in zip(faiss_index, reference_index)])
    faiss_relative = np.abs(faiss_distances.astype(np.float64) - reference) / np.maximum(reference, 1e-30)
    echo(f"faiss vs exact: neighbour sets equal for {faiss_same.sum()} of {len(queries)} queries; distances' max "
         f"relative difference {faiss_relative.max():.2e}")


@click.command()
@click.option("--cache", "cache_path", help="Feature cache: gallery = its training rows, queries = its test rows.")
@click.option("--normal-class", default="all", show_default=True,
              help="With --cache: the gallery is this class's training rows ('all': every training row).")
@click.option("--random", "use_random", is_flag=True, help="Also (or only) random non-negative Gaussian rows.")
@click.option("--gallery", "gallery_rows", default=50000, show_default=True, help="With --random: gallery rows.")
@click.option("--dim", default=1280, show_default=True, help="With --random: dimensions.")
@click.option("--queries", default=10000, show_default=True, help="Queries (test rows, or random rows).")
@click.option("--k", default=2, show_default=True)
@click.option("--repeats", default=5, show_default=True, help="Interleaved rounds.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the report to this text file.")
def main(cache_path, normal_class, use_random, gallery_rows, dim, queries, k, repeats, out) -> None:
    if not cache_path and not use_random:
        raise click.UsageError("give --cache PATH, --random, or both.")
    lines: list[str] = []

    def echo(line: str) -> None:
        click.echo(line)
        lines.append(line)

    if cache_path:
        gallery, test, name = load_cache(cache_path, normal_class, queries)
        measure(name, gallery, test, k, repeats, echo)
    if use_random:
        rng = np.random.default_rng(0)
        gallery = np.abs(rng.normal(size=(gallery_rows, dim))).astype(np.float32)
        test = np.abs(rng.normal(size=(queries, dim))).astype(np.float32)
        measure("random |N(0, 1)| rows", gallery, test, k, repeats, echo)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("\n".join(lines).lstrip("\n") + "\n")


if __name__ == "__main__":
    main()
