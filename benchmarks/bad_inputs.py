"""Every bad input we know of, run through the real commands: what does the user see?

    python benchmarks/bad_inputs.py > bad_inputs.md

Builds each situation in a temporary folder, runs the command as a user would (a fresh
process), and prints a Markdown table: the input, the command, its exit status, whether a
traceback was printed, and the first line of its message. The full-disk case mounts a
small tmpfs and the read-only case bind-mounts a folder read-only in a mount namespace of its
own (unshare); both need root and are skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

ENV = {**os.environ, "PIPELINE_PROGRESS": "0"}


def run(args: list[str], cwd: Path, env: dict | None = None) -> tuple[int, str, str]:
    result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                            env={**ENV, **(env or {})})
    return result.returncode, result.stdout, result.stderr


def images(root: Path, per_class: int = 3, classes=("a", "b")) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / split / c / f"{i}.jpg")
    return root


def h5(path: Path, train_features: np.ndarray, **attrs) -> Path:
    with h5py.File(path, "w") as f:
        f["train/features"], f["train/labels"] = train_features, np.arange(len(train_features)) % 2
        f["test/features"], f["test/labels"] = np.ones((4, 3), np.float32), np.arange(4) % 2
        for key, value in attrs.items():
            f.attrs[key] = value
    return path


def classes_h5(path: Path, classes: list[str]) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for split, n in (("train", 6 * len(classes)), ("test", 4 * len(classes))):
            f[f"{split}/features"] = rng.normal(size=(n, 5)).astype(np.float32)
            f[f"{split}/labels"] = np.arange(n) % len(classes)
        f.attrs["classes"] = json.dumps(classes)
    return path


def edit_attributes(cache: Path, change) -> Path:
    node = json.loads((cache / "zarr.json").read_text())
    change(node["attributes"])
    (cache / "zarr.json").write_text(json.dumps(node, indent=2))
    return cache


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    # --map-grid 2: the stride-16 map of EfficientNet-Lite is 2x2 at 32 px, and a grid larger than the map is refused.
    extract = ["pipeline.extract", "--image-size", "32", "--map-grid", "2"]
    rows = []

    def case(name: str, args: list[str], setup=None, env: dict | None = None) -> None:
        if setup is not None:
            setup()
        record(name, args, *run(args, repo, env))

    def record(name: str, args: list[str], code: int, out: str, err: str) -> None:
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
    # The cache above was made with the default normalisation (auto: inception for EfficientNet-Lite).
    case("existing cache made with other settings", [*extract, "--dataset", "imagefolder", "--data-dir", str(good),
                                                     "--normalisation", "imagenet", "--out", str(cache)])
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
    # Early in the chunk, among the rows written: its second half holds only the fill value of
    # rows past the split's end (6 images in a 1024-row chunk), which nothing reads.
    raw[len(raw) // 8] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    case("damaged chunk file", ["stages.knn", "--cache", str(damaged)])
    case("verify on the damaged cache", ["pipeline.cache", "verify", str(damaged)])

    holder = subprocess.Popen([sys.executable, "-c", "import time\nfrom pipeline.store.locks import writer_lock\n"
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

    case("HDF5 import with a repeated class name", ["pipeline.cache", "import-hdf5",
                                                     str(classes_h5(work / "dup.h5", ["a", "a"])), str(work / "h5.zarr")])
    case("HDF5 import with an empty class name", ["pipeline.cache", "import-hdf5",
                                                   str(classes_h5(work / "blank.h5", ["a", " "])), str(work / "h6.zarr")])
    case("HDF5 import, classes attribute not JSON", ["pipeline.cache", "import-hdf5",
                                                      str(h5(work / "cj.h5", np.ones((8, 3), np.float32), classes="a, b")),
                                                      str(work / "h7.zarr")])
    case("HDF5 import, metadata attribute not a JSON object", ["pipeline.cache", "import-hdf5",
                                                                str(h5(work / "mj.h5", np.ones((8, 3), np.float32),
                                                                       metadata="[1, 2]")), str(work / "h8.zarr")])
    case("HDF5 import, features too large for float32", ["pipeline.cache", "import-hdf5",
                                                          str(h5(work / "big.h5", np.full((8, 3), 1e300))),
                                                          str(work / "h9.zarr")])
    paths = classes_h5(work / "paths.h5", ["../../x", "good part", "good_part", "a/b"])
    run(["pipeline.cache", "import-hdf5", str(paths), str(work / "paths.zarr")], repo)
    case("class names '../../x', 'good part', 'good_part', 'a/b' (plots and heads stay in their folders)",
         ["stages.knn", "--cache", str(work / "paths.zarr"), "--k", "2", "--metrics", str(work / "paths.json"),
          "--plots", str(work / "paths_plots"), "--save-heads", str(work / "paths_heads")])

    edited = edit_attributes(shutil.copytree(cache, work / "edited.zarr"),
                             lambda a: a["metadata"]["dataset"].update(classes=["b", "a"]))
    case("class list edited in zarr.json: verify", ["pipeline.cache", "verify", str(edited)])
    case("class list edited in zarr.json: a head", ["stages.knn", "--cache", str(edited)])
    case("zarr.json chunk_rows edited to text", ["stages.knn", "--cache", str(edit_attributes(
        shutil.copytree(cache, work / "rows.zarr"), lambda a: a.update(chunk_rows="1024")))])
    case("cache made before the metadata checksum: verify", ["pipeline.cache", "verify", str(edit_attributes(
        shutil.copytree(cache, work / "legacy.zarr"), lambda a: a.pop("metadata_sha256")))])
    (work / "a_folder").mkdir()
    case("--metrics is a folder", ["stages.knn", "--cache", str(cache), "--metrics", str(work / "a_folder")])
    case("--classes names no class", ["stages.knn", "--cache", str(cache), "--classes", ","])
    case("--expect value that is not YAML", ["stages.knn", "--cache", str(cache), "--expect", "backbone.name=[x"])

    # The anomaly folder as people lay it out: anomalib's mask folders (mask/, masks/), masks of
    # training images, what lies beside train/ and test/.
    def anomaly_folder(root: Path) -> Path:
        images(root, classes=("good",))
        images(root / "defects", classes=("crack",))
        shutil.move(str(root / "defects" / "test" / "crack"), str(root / "test" / "crack"))
        shutil.rmtree(root / "defects")
        return root

    def masks(folder: Path, names: list[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(np.zeros((24, 24), np.uint8)).save(folder / name)

    anomalib = anomaly_folder(work / "anomalib")
    masks(anomalib / "mask" / "crack", ["0.png", "1.png"])
    masks(anomalib / "test" / "masks" / "crack", ["2_mask.png"])
    case("anomaly folder, masks in mask/<defect>/ and test/masks/<defect>/ (anomalib's layout)",
         [*extract, "--dataset", "anomaly_folder", "--data-dir", str(anomalib), "--views", "0",
          "--out", str(work / "anomalib.zarr")])
    loose_masks = anomaly_folder(work / "loose_masks")
    shutil.copytree(loose_masks / "test" / "crack", loose_masks / "test" / "mask")
    case("anomaly folder, a defect type named mask/ (a mask folder's name: images lying directly in it)",
         [*extract, "--dataset", "anomaly_folder", "--data-dir", str(loose_masks), "--views", "0",
          "--out", str(work / "loose_masks.zarr")])
    train_masks = anomaly_folder(work / "train_masks")
    masks(train_masks / "train" / "ground_truth" / "good", ["0.png"])
    masks(train_masks / "train" / "good" / "masks", ["0.png"])
    case("anomaly folder, masks of training images in train/ground_truth/ and train/good/masks/",
         [*extract, "--dataset", "anomaly_folder", "--data-dir", str(train_masks), "--views", "0",
          "--out", str(work / "train_masks.zarr")])
    beside = anomaly_folder(work / "beside")
    shutil.copy(beside / "train" / "good" / "0.jpg", beside / "stray.jpg")
    shutil.copytree(beside / "train", beside / "validation")
    (beside / "readme.txt").write_text("about the dataset")
    case("anomaly folder, an image and a validation/ folder beside train/ and test/",
         [*extract, "--dataset", "anomaly_folder", "--data-dir", str(beside), "--views", "0",
          "--out", str(work / "beside.zarr")])

    # Links in image folders: to files followed, to folders never; broken or looping ones refused.
    loop = images(work / "loop")
    (loop / "train" / "a" / "up").symlink_to("..")
    case("link loop in a class folder (train/a/up -> ..)", [*extract, "--dataset", "imagefolder", "--data-dir",
                                                            str(loop), "--out", str(work / "loop.zarr")])
    case("the same with --skip-bad", [*extract, "--dataset", "imagefolder", "--data-dir", str(loop), "--skip-bad",
                                      "--out", str(work / "loop.zarr")])
    broken_link = images(work / "broken_link")
    (broken_link / "train" / "a" / "gone.jpg").symlink_to("nowhere.jpg")
    (broken_link / "train" / "b" / "self.jpg").symlink_to("self.jpg")
    (broken_link / "train" / "b" / "linked.jpg").symlink_to(good / "test" / "a" / "0.jpg")
    case("broken link and self link (and a link to a file, followed)",
         [*extract, "--dataset", "imagefolder", "--data-dir", str(broken_link), "--out", str(work / "bl.zarr")])
    run(["stages.knn", "--cache", str(cache), "--k", "2", "--metrics", str(work / "k.json"),
         "--save-heads", str(work / "heads")], repo)
    to_score = work / "to_score"
    to_score.mkdir()
    for i in range(2):
        shutil.copy(good / "test" / "a" / f"{i}.jpg", to_score / f"{i}.jpg")
    (to_score / "again").symlink_to(".")
    (to_score / "gone.jpg").symlink_to("nowhere.jpg")
    case("scoring a folder with a link loop and a broken link", ["stages.score", "--head", str(work / "heads" / "a.head"),
                                                                 "--images", str(to_score),
                                                                 "--out", str(work / "s.csv")])
    case("the same with --skip-bad", ["stages.score", "--head", str(work / "heads" / "a.head"), "--images",
                                      str(to_score), "--out", str(work / "s.csv"), "--skip-bad"])

    # params.yaml checked against the declared parameters (FFAD_PARAMS: a copy with one change).
    import yaml

    def params_with(name: str, change) -> dict:
        data = yaml.safe_load((repo / "params.yaml").read_text())
        change(data)
        (work / name).write_text(yaml.safe_dump(data))
        return {"FFAD_PARAMS": str(work / name)}

    for name, change in (("misspelt key knn.kk", lambda d: d["knn"].update(kk=2)),
                         ("k: true", lambda d: d["knn"].update(k=True)),
                         ("k: 2.7", lambda d: d["knn"].update(k=2.7)),
                         ("k: null", lambda d: d["knn"].update(k=None)),
                         ("unknown section knnn", lambda d: d.update(knnn={"k": 2}))):
        case(f"params.yaml {name}", ["stages.knn", "--cache", str(cache), "--metrics", str(work / "p.json")],
             env=params_with("p.yaml", change))
    case("params.yaml preprocess.image_size: 32.9", [*extract, "--out", str(work / "p.zarr")],
         env=params_with("p.yaml", lambda d: d["preprocess"].update(image_size=32.9)))
    case("FFAD_PARAMS names a missing file", ["stages.knn", "--cache", str(cache)],
         env={"FFAD_PARAMS": str(work / "nothing.yaml")})
    case("FFAD_PARAMS names a folder", ["stages.knn", "--cache", str(cache)], env={"FFAD_PARAMS": str(work)})

    # Outputs never written over what the command reads.
    head = work / "heads" / "a.head"
    case("score --out is the head file", ["stages.score", "--head", str(head), "--images", str(to_score),
                                          "--out", str(head)])
    (work / "head_link.csv").symlink_to(head)
    case("score --out is a link to the head file", ["stages.score", "--head", str(head), "--images", str(to_score),
                                                    "--out", str(work / "head_link.csv")])
    case("knn --metrics inside the cache", ["stages.knn", "--cache", str(cache), "--metrics",
                                            str(cache / "train" / "m.json")])
    case("knn --plots is the cache", ["stages.knn", "--cache", str(cache), "--plots", str(cache)])
    case("export-hdf5 onto the cache's zarr.json", ["pipeline.cache", "export-hdf5", str(cache),
                                                    str(cache / "zarr.json")])

    # Saved heads checked like caches: a checksum of state and description, a schema for the rest.
    flipped = work / "flipped.head"
    raw = bytearray(head.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    flipped.write_bytes(bytes(raw))
    truncated = work / "truncated.head"
    truncated.write_bytes(head.read_bytes()[: len(raw) // 2])
    (work / "text.head").write_text("not a head")
    for name, path in (("one bit flipped in a head file", flipped), ("a truncated head file", truncated),
                       ("a text file named .head", work / "text.head")):
        case(name, ["stages.score", "--head", str(path), "--images", str(to_score), "--out", str(work / "h.csv")])

    # Bounded inputs: a decompression bomb, rows an HDF5 file declares but does not hold, a map
    # grid larger than the map.
    import io
    import tarfile

    bomb = work / "bomb"
    bomb.mkdir()
    with tarfile.open(bomb / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, size in (("batches.meta", 10), ("data_batch_1", 4 << 20)):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    case("CIFAR-10 archive that unpacks to 4 MiB of zeros (a decompression bomb)",
         [*extract, "--dataset", "cifar10", "--data-dir", str(bomb), "--out", str(work / "bomb.zarr")])
    with h5py.File(work / "sparse.h5", "w") as f:
        f.create_dataset("train/features", shape=(100_000, 3), dtype="f4", chunks=(1000, 3))[:8] = 1.0
        f["train/labels"] = np.zeros(100_000, np.int64)
        f["test/features"], f["test/labels"] = np.ones((4, 3), np.float32), np.arange(4) % 2
    case("HDF5 import declaring 100,000 rows, 8 written", ["pipeline.cache", "import-hdf5", str(work / "sparse.h5"),
                                                           str(work / "sparse.zarr")])
    # --download true: what torchvision's download_url fetches is unpacked by the project, bounded.
    # No network here, so a wrapper puts a copy of a local bomb in place of the download (the
    # real download is not exercised), then runs python -m pipeline.extract.
    offline = work / "offline"
    (offline / "served").mkdir(parents=True)
    with tarfile.open(offline / "served" / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, size in (("batches.meta", 10), ("data_batch_1", 16 << 20)):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    (offline / "extract_offline.py").write_text(
        "import runpy, shutil\nfrom pathlib import Path\nimport torchvision.datasets.utils as utils\n\n\n"
        "def download_url(url, root, filename=None, md5=None, max_redirect_hops=3):\n"
        "    filename = filename or Path(url).name\n"
        "    Path(root).mkdir(parents=True, exist_ok=True)\n"
        "    shutil.copyfile(Path(__file__).parent / 'served' / filename, Path(root) / filename)\n\n\n"
        "utils.download_url = download_url\n"
        "runpy.run_module('pipeline.extract', run_name='__main__', alter_sys=True)\n")
    case("--download true, the download a CIFAR-10 archive unpacking to 16 MiB of zeros (served locally)",
         ["extract_offline", *extract[1:], "--dataset", "cifar10", "--download", "true", "--data-dir",
          str(work / "downloaded"), "--out", str(work / "downloaded.zarr")], env={"PYTHONPATH": str(offline)})
    case("--map-grid 3 on a 2x2 map (larger than the map, under twice its side)",
         [*extract, "--dataset", "synthetic", "--maps", "intermediate", "--map-grid", "3", "--out",
          str(work / "grid3.zarr")])
    case("--map-grid 64 on a 2x2 map", [*extract, "--dataset", "synthetic", "--maps", "intermediate", "--map-grid", "64",
                                        "--out", str(work / "grid.zarr")])

    shared = work / "read_only"
    shared.mkdir()
    shutil.copytree(cache, shared / "good.zarr")
    mount = f"mount --bind -o ro {shlex.quote(str(shared))} {shlex.quote(str(shared))}"
    if subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True).returncode == 0:
        def runner(args: list[str], cwd: Path) -> tuple[int, str, str]:
            command = shlex.join([sys.executable, "-m", *args])
            result = subprocess.run(["unshare", "-m", "sh", "-c", f"{mount} && exec {command}"], cwd=cwd,
                                    capture_output=True, text=True, env=ENV)
            return result.returncode, result.stdout, result.stderr

        for name, args in (
                ("a head on a read-only cache folder", ["stages.knn", "--cache", str(shared / "good.zarr"),
                                                        "--metrics", str(work / "ro.json")]),
                ("HDF5 import into a read-only folder", ["pipeline.cache", "import-hdf5",
                                                         str(classes_h5(work / "ro.h5", ["a", "b"])),
                                                         str(shared / "new.zarr")]),
                ("extraction into a read-only folder", [*extract, "--dataset", "imagefolder", "--data-dir", str(good),
                                                        "--out", str(shared / "new.zarr")])):
            record(name, args, *runner(args, repo))

    tiny = work / "tiny"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(tiny)], capture_output=True).returncode == 0:
        try:
            digits = ["pipeline.extract", "--dataset", "digits", "--image-size", "32", "--map-grid", "2",
                      "--chunk-rows", "64", "--out", str(tiny / "digits.zarr")]
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
