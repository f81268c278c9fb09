"""kNN engine vs faiss IndexFlatL2 vs scikit-learn brute force vs a bare matmul.

    python benchmarks/knn_engine.py [--gallery 5000] [--queries 10000] [--dim 2048] [--k 2]

All timings are taken in this one process on the same random data, in interleaved rounds
(this shared machine's speed drifts over seconds). The script prints each method's median
time and the median, over rounds, of its time / the engine's time in the same round, with
the range; and checks that the scores agree with faiss to 1e-4 relative. The arithmetic
floor is the faster of two bare matrix products of the same shapes: torch.matmul (PyTorch's
BLAS, MKL in the PyPI wheels) and numpy.matmul (NumPy's OpenBLAS). Needs
`pip install -e '.[bench]'` for faiss.
"""

from __future__ import annotations

import time

import click
import numpy as np
import torch


def best_of(repeats: int, fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


@click.command()
@click.option("--gallery", default=5000, show_default=True)
@click.option("--queries", default=10000, show_default=True)
@click.option("--dim", default=2048, show_default=True)
@click.option("--k", default=2, show_default=True)
@click.option("--repeats", default=10, show_default=True, help="Interleaved rounds.")
def main(gallery: int, queries: int, dim: int, k: int, repeats: int) -> None:
    import faiss
    from sklearn.neighbors import NearestNeighbors

    from pipeline.heads.knn.engine import knn_scores

    rng = np.random.default_rng(0)
    # Non-negative, like post-ReLU pooled features.
    g = np.abs(rng.normal(size=(gallery, dim))).astype(np.float32)
    q = np.abs(rng.normal(size=(queries, dim))).astype(np.float32)
    print(f"gallery {gallery} x {dim}, {queries} queries, k = {k}, float32, torch threads "
          f"{torch.get_num_threads()}, faiss threads {faiss.omp_get_max_threads()}")

    def ours():
        return knn_scores(g, q, k=k)

    def with_faiss():
        index = faiss.IndexFlatL2(dim)
        index.add(g)
        distances, _ = index.search(q, k)
        return distances.sum(1)

    def with_sklearn():
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(g)
        distances, _ = nn.kneighbors(q)
        return (distances.astype(np.float64) ** 2).sum(1)

    gt, qt = torch.from_numpy(g), torch.from_numpy(q)

    def bare_torch_matmul():
        return qt @ gt.T

    def bare_numpy_matmul():
        return q @ g.T

    methods = [("project engine", ours), ("faiss IndexFlatL2", with_faiss), ("sklearn brute", with_sklearn),
               ("bare torch.matmul", bare_torch_matmul), ("bare numpy.matmul", bare_numpy_matmul)]
    for _, fn in methods:
        fn()  # warm up
    times: dict[str, list[float]] = {name: [] for name, _ in methods}
    outputs = {}
    order = np.random.default_rng(1)
    for _ in range(repeats):
        # A new order each round: a method must not always follow the same one (a BLAS's threads
        # keep spinning for a while after a call and slow whatever runs next).
        for index in order.permutation(len(methods)):
            name, fn = methods[index]
            seconds, outputs[name] = best_of(1, fn)
            times[name].append(seconds)
    engine = np.array(times["project engine"])
    print(f"{repeats} interleaved rounds; median time, and its time / the engine's time in the same round")
    for name, seconds in times.items():
        ratio = np.array(seconds) / engine
        print(f"{name:20s} {np.median(seconds) * 1000:8.1f} ms   ratio median {np.median(ratio):5.2f} "
              f"(range {ratio.min():.2f}-{ratio.max():.2f})")
    ours_scores, faiss_scores = outputs["project engine"], outputs["faiss IndexFlatL2"]
    relative = np.abs(ours_scores - faiss_scores) / np.abs(faiss_scores)
    print(f"max relative difference to faiss: {relative.max():.2e} ({'OK' if relative.max() <= 1e-4 else 'TOO LARGE'})")
    floor = np.minimum(times["bare torch.matmul"], times["bare numpy.matmul"])
    print(f"engine time / faster bare matmul time, median over rounds: {np.median(engine / floor):.2f}")


if __name__ == "__main__":
    main()
