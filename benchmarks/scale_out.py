"""Scale-out measurements, each ratio against a baseline measured in the same run.

1. Sharded extraction: the digits dataset (10 classes, 1,797 images, bundled with
   scikit-learn) through EfficientNet-Lite0 once in one process, then as 2 shards run at the
   same time into another cache; checks the arrays are identical and prints the wall-time ratio.
2. PLUME on the 10 classes of that cache (short training, --dim native): the stage in process,
   then with --scheduler local:2; prints the wall-time ratio and compares the metrics files.

    python benchmarks/scale_out.py [--image-size 96] [--epochs 5] [--workdir /tmp/scale_out]

Every step runs the real commands (python -m pipeline.extract / stages.plume) as subprocesses,
so times include process start-up, model loading and, for local:2, starting the cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np


def run(command: list[str], env: dict | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout.strip()


def compare_arrays(a: Path, b: Path) -> list[str]:
    from pipeline.store.cache import FeatureCache

    first, second = FeatureCache.open(a), FeatureCache.open(b)
    report = []
    for split in first.splits:
        for name in first.array_names(split):
            x, y = first.array(split, name)[:], second.array(split, name)[:]
            same = x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
            report.append(f"  {split}/{name} {x.shape} {x.dtype}: "
                          f"{'identical bytes' if same else f'DIFFERENT (max abs diff {np.abs(x - y).max():.3g})'}")
    problems = second.verify()
    report.append(f"  verify of the sharded cache: {'no problems' if not problems else problems}")
    return report


def flatten(payload: dict) -> dict[str, float]:
    return {f"{cls}.{k}": v for cls, m in payload["per_class"].items() for k, v in m.items()}


@click.command()
@click.option("--image-size", default=96, show_default=True, help="Backbone input size (smaller = faster).")
@click.option("--chunk-rows", default=128, show_default=True, help="Rows per cache chunk (the unit shards share).")
@click.option("--epochs", default=5, show_default=True, help="PLUME epochs per class.")
@click.option("--workdir", default="/tmp/scale_out", show_default=True, type=click.Path(file_okay=False))
def main(image_size: int, chunk_rows: int, epochs: int, workdir: str) -> None:
    work = Path(workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    py = sys.executable
    print(f"machine: {os.cpu_count()} CPU cores, torch threads per process left at their default unless noted")

    # --- 1. sharded extraction -------------------------------------------------------------
    extract = [py, "-m", "pipeline.extract", "--dataset", "digits", "--backbone", "efficientnet_lite0",
               "--image-size", str(image_size), "--chunk-rows", str(chunk_rows), "--batch-size", "64",
               "--workers", "1", "--device", "cpu"]
    single, sharded = work / "single.zarr", work / "sharded.zarr"
    t_single, _ = run([*extract, "--out", str(single)])
    # Two shards at once. On a multi-GPU node each would use its own GPU; here they share the
    # 2 cores, so each gets one torch thread (the single run uses both).
    started = time.perf_counter()
    shards = [subprocess.Popen([*extract, "--out", str(sharded), "--shard", f"{i}/2"], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}) for i in range(2)]
    outputs = [p.communicate() for p in shards]
    t_sharded = time.perf_counter() - started
    if any(p.returncode for p in shards):
        raise SystemExit(f"a shard failed: {outputs}")
    print(f"\n1. extraction of digits (1,797 images) at {image_size}x{image_size}, chunks of {chunk_rows} rows")
    print(f"  one process (2 torch threads): {t_single:.1f} s")
    print(f"  2 shards at once (1 torch thread each): {t_sharded:.1f} s")
    print(f"  ratio sharded / single: {t_sharded / t_single:.2f}")
    for out, _ in outputs:
        print("  " + out.strip().splitlines()[-1])
    print("  arrays, sharded against single run:")
    print("\n".join(compare_arrays(single, sharded)))
    # The same comparison with equal thread counts separates sharding from thread-count rounding.
    single_1t = work / "single_1thread.zarr"
    t_single_1t, _ = run([*extract, "--out", str(single_1t)], env={"OMP_NUM_THREADS": "1"})
    print(f"  one process with 1 torch thread: {t_single_1t:.1f} s; arrays, sharded against it:")
    print("\n".join(compare_arrays(single_1t, sharded)))

    # --- 2. PLUME jobs on a local cluster ------------------------------------------------------
    plume = [py, "-m", "stages.plume", "--cache", str(single), "--epochs", str(epochs), "--dim", "native",
             "--seeds", "1", "--device", "cpu"]
    t_serial, out_serial = run([*plume, "--metrics", str(work / "plume_serial.json")])
    t_local, out_local = run([*plume, "--metrics", str(work / "plume_local2.json"), "--scheduler", "local:2"])
    t_serial_1t, _ = run([*plume, "--metrics", str(work / "plume_serial_1thread.json")], env={"OMP_NUM_THREADS": "1"})
    serial, local, serial_1t = (json.loads((work / f).read_text()) for f in
                                ("plume_serial.json", "plume_local2.json", "plume_serial_1thread.json"))
    print(f"\n2. PLUME (linear/contrastive, lr range test, {epochs} epochs, native 1280-d), 10 classes x 1 seed")
    print(f"  in process (2 torch threads): {t_serial:.1f} s")
    print(f"  --scheduler local:2 (2 worker processes, 1 torch thread each): {t_local:.1f} s")
    print(f"  ratio local:2 / in process: {t_local / t_serial:.2f}")
    print(f"  in process with 1 torch thread: {t_serial_1t:.1f} s")
    for label, other in (("in process (2 threads)", serial), ("in process (1 thread)", serial_1t)):
        a, b = flatten(other), flatten(local)
        diffs = {k: abs(a[k] - b[k]) for k in a}
        equal = sum(d == 0 for d in diffs.values())
        print(f"  metrics of local:2 against {label}: {equal}/{len(diffs)} per-class values identical, "
              f"largest difference {max(diffs.values()):.6f} ({max(diffs, key=diffs.get)}); mean AUROC "
              f"{100 * other['mean']['auroc']:.3f} vs {100 * local['mean']['auroc']:.3f}")
    print("  " + out_serial.splitlines()[-1])
    print("  " + out_local.splitlines()[-1])


if __name__ == "__main__":
    main()
