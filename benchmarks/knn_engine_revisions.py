"""The kNN engine of another git revision vs this checkout's, and faiss, in one process.

    python benchmarks/knn_engine_revisions.py --old 1cb1a3d [--gallery 5000] [--queries 10000] [--dim 2048]

For changes to the kNN engine (pipeline/heads/knn/engine.py, formerly pipeline/knn.py): loads that file as it was at ``--old`` (with ``git show``)
beside the current one, runs both and faiss ``IndexFlatL2`` on the same random data in
shuffled interleaved rounds, and prints each one's median time and the median over rounds of
its time / the current engine's time in the same round, with the range. Checks that both
engines' scores agree with faiss to 1e-4 relative.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


# The engine's file now, and before the heads moved into packages.
ENGINE_PATHS = ("pipeline/heads/knn/engine.py", "pipeline/knn.py")


def module_at(revision: str):
    for path in ENGINE_PATHS:
        source = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=ROOT, capture_output=True, text=True)
        if not source.returncode:
            break
    if source.returncode:
        raise click.ClickException(f"git show {revision}:{path} failed: {source.stderr.strip()}")
    file = Path(tempfile.mkdtemp()) / f"knn_{revision}.py"
    file.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location(f"knn_{revision}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@click.command()
@click.option("--old", required=True, help="Git revision whose kNN engine is the baseline.")
@click.option("--gallery", default=5000, show_default=True)
@click.option("--queries", default=10000, show_default=True)
@click.option("--dim", default=2048, show_default=True)
@click.option("--k", default=2, show_default=True)
@click.option("--repeats", default=12, show_default=True, help="Interleaved rounds.")
def main(old: str, gallery: int, queries: int, dim: int, k: int, repeats: int) -> None:
    import faiss

    sys.path.insert(0, str(ROOT))
    from pipeline.heads.knn.engine import knn_scores

    previous = module_at(old)
    rng = np.random.default_rng(0)
    g = np.abs(rng.normal(size=(gallery, dim))).astype(np.float32)
    q = np.abs(rng.normal(size=(queries, dim))).astype(np.float32)

    def with_faiss():
        index = faiss.IndexFlatL2(dim)
        index.add(g)
        return index.search(q, k)[0].sum(1)

    methods = [(f"engine at {old}", lambda: previous.knn_scores(g, q, k=k)),
               ("engine now", lambda: knn_scores(g, q, k=k)), ("faiss IndexFlatL2", with_faiss)]
    outputs = {name: fn() for name, fn in methods}  # warm up
    for name in outputs:
        relative = np.abs(outputs[name] - outputs["faiss IndexFlatL2"]) / outputs["faiss IndexFlatL2"]
        if relative.max() > 1e-4:
            raise click.ClickException(f"{name}: scores differ from faiss by {relative.max():.2e} relative")
    times: dict[str, list[float]] = {name: [] for name, _ in methods}
    order = np.random.default_rng(1)
    for _ in range(repeats):
        for index in order.permutation(len(methods)):
            name, fn = methods[index]
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    now = np.array(times["engine now"])
    print(f"gallery {gallery} x {dim}, {queries} queries, k = {k}; {repeats} shuffled interleaved rounds; "
          f"scores of both engines within 1e-4 of faiss")
    for name, seconds in times.items():
        ratio = np.array(seconds) / now
        print(f"{name:22s} {np.median(seconds) * 1000:8.1f} ms   its time / engine now: median {np.median(ratio):.3f} "
              f"(range {ratio.min():.2f}-{ratio.max():.2f})")


if __name__ == "__main__":
    main()
