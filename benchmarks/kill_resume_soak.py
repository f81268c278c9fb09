"""Kill-and-resume soak test of extraction.

    python benchmarks/kill_resume_soak.py --data-dir data/cifar10-jpg --per-class 400 --image-size 128 --kills 20

Builds an image folder of the first PER_CLASS training and PER_CLASS/3 test images of each
class (symlinks), extracts it once without interruption (the reference), then starts the
same extraction again and again, killing it with SIGKILL at random moments, KILLS times,
and finally lets it finish. Reports the number of kills, whether the final arrays are
bit-identical to the reference, whether `verify` finds every chunk intact, and the extra
wall time the interruptions cost.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np


@click.command()
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="An image folder (train/<class>/*, test/<class>/*), e.g. the CIFAR-10 JPEG copy.")
@click.option("--per-class", default=300, show_default=True)
@click.option("--kills", default=20, show_default=True)
@click.option("--image-size", default=32, show_default=True)
@click.option("--chunk-rows", default=128, show_default=True)
@click.option("--min-delay", default=2.0, show_default=True, help="Shortest time before a kill, seconds.")
@click.option("--max-delay", default=12.0, show_default=True, help="Longest time before a kill, seconds.")
@click.option("--seed", default=0, show_default=True)
def main(data_dir: str, per_class: int, kills: int, image_size: int, chunk_rows: int, min_delay: float,
         max_delay: float, seed: int) -> None:
    from pipeline.extract.datasets import image_folder_subset
    from pipeline.store.cache import FeatureCache

    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    folder = image_folder_subset(data_dir, work / "images", per_class, max(1, per_class // 3))
    env = {**os.environ, "PIPELINE_PROGRESS": "0"}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "pipeline.extract", "--dataset", "imagefolder", "--data-dir", str(folder),
                "--image-size", str(image_size), "--chunk-rows", str(chunk_rows), "--batch-size", "32",
                "--workers", "1", "--maps", "intermediate", "--out", str(out)]

    start = time.perf_counter()
    subprocess.run(command(work / "reference.zarr"), check=True, env=env, capture_output=True)
    reference_time = time.perf_counter() - start
    print(f"reference run: {reference_time:.1f} s")

    out = work / "soak.zarr"
    killed, soak_time = 0, 0.0
    while killed < kills:
        start = time.perf_counter()
        process = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=rng.uniform(min_delay, max_delay))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed += 1
        soak_time += time.perf_counter() - start
        done = "-"
        if out.exists():
            try:
                cache = FeatureCache.open(out, require_complete=False)
                done = f"{sum(len(cache.done_chunks(s)) for s in cache.splits)}/" \
                       f"{sum(len(cache.chunk_slices(s)) for s in cache.splits)} chunks"
            except Exception as error:  # the soak reports what it finds, it does not stop
                done = f"unreadable ({error})"
        status = "killed" if process.returncode == -signal.SIGKILL else f"exited {process.returncode}"
        print(f"run {killed:2d}: {status} after {time.perf_counter() - start:5.1f} s, {done}")
        if process.returncode == 0:
            break
    start = time.perf_counter()
    final = subprocess.run(command(out), env=env, capture_output=True, text=True)
    soak_time += time.perf_counter() - start
    print(f"final run: exit {final.returncode}: {final.stdout.strip().splitlines()[-1] if final.stdout else ''}")

    reference, resumed = FeatureCache.open(work / "reference.zarr"), FeatureCache.open(out)
    identical = all(np.array_equal(reference.read(s, n), resumed.read(s, n))
                    for s in reference.splits for n in reference.array_names(s))
    problems = resumed.verify()
    print(f"kills: {killed}; images: {reference.size('train') + reference.size('test')}; "
          f"arrays bit-identical to the uninterrupted run: {identical}; verify problems: {len(problems)}")
    print(f"wall time: uninterrupted {reference_time:.1f} s, with kills {soak_time:.1f} s "
          f"(extra {soak_time - reference_time:.1f} s, {soak_time / reference_time:.2f}x)")
    shutil.rmtree(work)
    sys.exit(0 if identical and not problems else 1)


if __name__ == "__main__":
    main()
