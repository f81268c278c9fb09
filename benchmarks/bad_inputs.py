"""Every bad input we know of, run through the real commands: what does the user see?

    python benchmarks/bad_inputs.py > bad_inputs.md

Builds each situation in a temporary folder, runs the command as a user would (a fresh
process), and prints a Markdown table: the input, the command, its exit status, whether a
traceback was printed, and the first line of its message. The full-disk case mounts a
small tmpfs and needs root; it is skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

ENV = {**os.environ, "PIPELINE_PROGRESS": "0"}


def run(args: list[str], cwd: Path) -> tuple[int, str, str]:
    result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, env=ENV)
    return result.returncode, result.stdout, result.stderr


def images(root: Path, per_class: int = 3, classes=("a", "b")) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / split / c / f"{i}.jpg")
    return root


def h5(path: Path, train_features: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f["train/features"], f["train/labels"] = train_features, np.arange(len(train_features)) % 2
        f["test/features"], f["test/labels"] = np.ones((4, 3), np.float32), np.arange(4) % 2
    return path


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    extract = ["pipeline.extract", "--image-size", "32"]
    rows = []

    def case(name: str, args: list[str], setup=None) -> None:
        if setup is not None:
            setup()
        code, out, err = run(args, repo)
        text = (err.strip() or out.strip()).splitlines()
        message = next((line for line in reversed(text) if line.startswith("Error")), text[-1] if text else "")
        shown = " ".join(a if len(a) < 40 else "…/" + Path(a).name for a in args)
        rows.append((name, f"`python -m {shown}`", code, "Traceback" in err, message.replace("|", "\\|")))
        print(f"done: {name} (exit {code})", file=sys.stderr)

    good = images(work / "good")
    cache = work / "good.zarr"
    run([*extract, "--dataset", "imagefolder", "--data-dir", str(good), "--out", str(cache)], repo)

    broken = images(work / "broken")
    data = (broken / "train/a/1.jpg").read_bytes()
    (broken / "train/a/1.jpg").write_bytes(data[: len(data) // 3])
    (broken / "test/b/notes.png").write_text("not an image")
    case("truncated JPEG and a text file named .png", [*extract, "--dataset", "imagefolder", "--data-dir", str(broken),
                                                       "--out", str(work / "b.zarr")])
    case("the same with --skip-bad", [*extract, "--dataset", "imagefolder", "--data-dir", str(broken), "--skip-bad",
                                      "--out", str(work / "b.zarr")])
    empty = images(work / "empty")
    for f in (empty / "train" / "b").iterdir():
        f.unlink()
    case("empty class folder", [*extract, "--dataset", "imagefolder", "--data-dir", str(empty)])
    mismatch = images(work / "mismatch")
    images(mismatch, classes=("c",)).joinpath("test", "c")
    for f in (mismatch / "test" / "c").iterdir():
        f.unlink()
    (mismatch / "test" / "c").rmdir()
    case("class folder only in train/", [*extract, "--dataset", "imagefolder", "--data-dir", str(mismatch)])
    case("image folder without test/", [*extract, "--dataset", "imagefolder", "--data-dir", str(good / "train")])
    case("dataset not downloaded, download off", [*extract, "--dataset", "cifar10", "--data-dir", str(work / "none")])
    case("torchvision weights not available offline", [*extract, "--backbone", "resnet50", "--dataset", "digits"])
    case("unknown dataset", [*extract, "--dataset", "imagenet22k"])
    case("unknown backbone", [*extract, "--backbone", "resnet49"])
    case("image size out of range", ["pipeline.extract", "--image-size", "8"])
    case("existing cache made with other settings", [*extract, "--dataset", "imagefolder", "--data-dir", str(good),
                                                     "--normalisation", "inception", "--out", str(cache)])
    case("unknown class name", ["stages.knn", "--cache", str(cache), "--classes", "zebra"])
    case("normal class with fewer training images than k", ["stages.knn", "--cache", str(cache), "--k", "5"])
    case("k out of range", ["stages.knn", "--cache", str(cache), "--k", "0"])
    case("head parameters disagree with the cache", ["stages.knn", "--cache", str(cache),
                                                     "--expect", "preprocessing.image_size=224"])
    case("no cache at the path", ["stages.knn", "--cache", str(work / "missing.zarr")])

    import shutil

    from pipeline.store.cache import FeatureCache

    incomplete = work / "incomplete.zarr"
    shutil.copytree(cache, incomplete)
    FeatureCache.open(incomplete).set_aside("train", {0})
    case("incomplete cache (interrupted extraction)", ["stages.knn", "--cache", str(incomplete)])
    damaged = work / "damaged.zarr"
    shutil.copytree(cache, damaged)
    chunk = damaged / "train" / "features" / "c" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    case("damaged chunk file", ["stages.knn", "--cache", str(damaged)])
    case("verify on the damaged cache", ["pipeline.cache", "verify", str(damaged)])

    holder = subprocess.Popen([sys.executable, "-c", "import time\nfrom pipeline.store.cache import writer_lock\n"
                               f"with writer_lock({str(work / 'busy.zarr')!r}):\n    print('x', flush=True)\n"
                               "    time.sleep(120)"], cwd=repo, stdout=subprocess.PIPE, text=True, env=ENV)
    holder.stdout.readline()
    case("second extraction on a cache being written", [*extract, "--dataset", "imagefolder", "--data-dir", str(good),
                                                        "--out", str(work / "busy.zarr")])
    holder.kill()

    rng = np.random.default_rng(0)
    nan = rng.normal(size=(8, 3)).astype(np.float32)
    nan[3, 1] = np.nan
    case("HDF5 import with NaN", ["pipeline.cache", "import-hdf5", str(h5(work / "nan.h5", nan)), str(work / "h1.zarr")])
    case("HDF5 import with 3-D features", ["pipeline.cache", "import-hdf5",
                                           str(h5(work / "shape.h5", np.ones((8, 3, 2), np.float32))),
                                           str(work / "h2.zarr")])
    case("HDF5 import with integer features", ["pipeline.cache", "import-hdf5",
                                               str(h5(work / "int.h5", np.ones((8, 3), np.int32))),
                                               str(work / "h3.zarr")])
    (work / "not.h5").write_text("hello")
    case("HDF5 import of a non-HDF5 file", ["pipeline.cache", "import-hdf5", str(work / "not.h5"), str(work / "h4.zarr")])

    tiny = work / "tiny"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(tiny)], capture_output=True).returncode == 0:
        try:
            digits = ["pipeline.extract", "--dataset", "digits", "--image-size", "32", "--chunk-rows", "64",
                      "--out", str(tiny / "digits.zarr")]
            case("disk fills up mid-run (400 kB tmpfs)", digits)
            # Room is made (the mount is enlarged) and the same command resumes.
            subprocess.run(["mount", "-o", "remount,size=50m", str(tiny)], check=True)
            case("the same command after freeing space", digits)
        finally:
            time.sleep(1)
            subprocess.run(["umount", str(tiny)])
    print("| bad input | command | exit | traceback | what the user sees (last error line) |")
    print("|---|---|---|---|---|")
    for name, command, code, traceback, message in rows:
        print(f"| {name} | {command} | {code} | {'yes' if traceback else 'no'} | {message} |")


if __name__ == "__main__":
    main()
