"""Image datasets as two labelled splits.

Every loader returns an ``ImageDataset``: class names plus a train and a test
``ImageSplit`` whose items are uint8 tensors (C, H, W). Torchvision does the downloading
and parsing; this module only gives all datasets one shape and one identity record.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pipeline.errors import PipelineError, choice_error
from pipeline.extract.listing import IMAGE_EXTENSIONS, folder_link_reason, list_images

TORCHVISION_DECODES = (".jpg", ".jpeg", ".png", ".gif", ".webp")


class ArrayImages(Sequence):
    """Images held in one uint8 array, (N, H, W) or (N, H, W, C) or (N, C, H, W)."""

    def __init__(self, array: np.ndarray, channels_first: bool = False) -> None:
        self.array = np.ascontiguousarray(array)
        self.channels_first = channels_first

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = torch.from_numpy(self.array[index])
        if image.ndim == 2:
            return image.unsqueeze(0)
        return image if self.channels_first else image.permute(2, 0, 1)


def decode_failure_reason(error: Exception) -> str:
    """Why a file could not be decoded, as the messages give it: the error's type and the first
    line of its message, less the C++ source location torchvision's messages start with."""
    first_line = str(error).splitlines()[0] if str(error) else ""
    message = re.split(r"\.cpp:\d+, ", first_line)[-1]
    return f"{type(error).__name__}: {message}"[:200]


class UnreadableImageError(PipelineError):
    """An image file that cannot be decoded (``FileImages``): its path and why.

    Loaders running in DataLoader workers return it rather than raise it there (a worker's
    exception reaches the main process only as text); ``loop.backbone_batches`` raises it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read the image file {path} ({reason}).")
        self.path, self.reason = path, reason

    def __reduce__(self) -> tuple:  # pickled by its fields, to cross from a worker process
        return type(self), (self.path, self.reason)


class FileImages(Sequence):
    """Images read from files on demand (decoded by torchvision.io, not PIL). A file that
    cannot be decoded raises ``UnreadableImageError``."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        try:
            return decode_image_file(path)
        except Exception as error:  # any decoder error means the file is unusable
            raise UnreadableImageError(path, decode_failure_reason(error)) from error


def decode_image_file(path: str) -> torch.Tensor:
    """The image file ``path`` as an RGB uint8 tensor (3, H, W)."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import pil_to_tensor, to_dtype

    if path.lower().endswith(TORCHVISION_DECODES):
        image = decode_image(path, mode=ImageReadMode.RGB)
    else:  # formats torchvision.io cannot decode (BMP, TIFF): PIL
        from PIL import Image

        with Image.open(path) as pil:
            image = pil_to_tensor(pil.convert("RGB"))
    if image.ndim == 4:  # an animated GIF: its first frame
        image = image[0]
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = to_dtype(image, torch.uint8, scale=True)
    return image


@dataclass
class ImageSplit:
    images: Sequence
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")


@dataclass
class ImageDataset:
    name: str
    classes: list[str]
    train: ImageSplit
    test: ImageSplit
    identity: dict = field(default_factory=dict)
    root: Path | None = None  # where an image folder lives; not recorded, it differs between machines
    # Entries of an image folder that were not listed (a broken or looping link, a link to a
    # folder): (split, path, reason). drop_unreadable reports them with the unreadable images.
    refused: list[tuple[str, str, str]] = field(default_factory=list)

    def split(self, name: str) -> ImageSplit:
        return {"train": self.train, "test": self.test}[name]

    def describe(self) -> dict:
        """What a feature cache records about its dataset."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "n_train": len(self.train.labels),
            "n_test": len(self.test.labels),
            **self.identity,
        }


def _array_digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# --- loaders ---------------------------------------------------------------------------


def load_digits_dataset(data_dir: Path, download: bool) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits, split 50/50 per class with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # Pixel values are 0..16; spread them over 0..255.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=0.5, stratify=bunch.target, random_state=0
    )
    return ImageDataset(
        name="digits",
        classes=[str(c) for c in range(10)],
        train=ImageSplit(ArrayImages(images[train_idx]), bunch.target[train_idx]),
        test=ImageSplit(ArrayImages(images[test_idx]), bunch.target[test_idx]),
        identity={"source": "sklearn.datasets.load_digits", "split": "stratified 50/50, random_state=0",
                  "sha256": _array_digest(images, bunch.target)},
    )


def _torchvision_failure(title: str, data_dir: Path, download: bool, error: Exception) -> PipelineError:
    if download:
        what = f"could not download {title} into {data_dir} ({type(error).__name__}: {error})."
    else:
        what = f"{title} was not found in {data_dir} and downloading is off."
    return PipelineError(
        f"{what} Either run with network access and --download, or put the dataset files "
        f"torchvision expects under --data-dir (for example copied from a machine that has "
        f"downloaded them), or lay the images out as train/<class>/* and test/<class>/* and use "
        f"--dataset imagefolder --data-dir <that folder>."
    )


def _torchvision_call(title: str, data_dir: Path, download: bool, make: Callable, files=None):
    if files is not None:  # decompress what is compressed; without --download, name what is missing
        from pipeline.extract.torchvision_files import files_in_place

        files_in_place(title, files, data_dir, download)
    try:
        return make()
    except PipelineError:
        raise
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ...
        if files is not None and not download:  # the files are there, but unreadable
            from pipeline.extract.torchvision_files import unreadable

            raise unreadable(title, files, error) from error
        raise _torchvision_failure(title, data_dir, download, error) from error


def load_cifar10(data_dir: Path, download: bool) -> ImageDataset:
    from torchvision.datasets import CIFAR10

    from pipeline.extract.torchvision_files import cifar_files

    def make(train: bool):
        return CIFAR10(str(data_dir), train=train, download=download)

    files = cifar_files(CIFAR10, data_dir)
    train = _torchvision_call("CIFAR-10", data_dir, download, lambda: make(True), files)
    test = _torchvision_call("CIFAR-10", data_dir, download, lambda: make(False), files)
    return ImageDataset(
        name="cifar10",
        classes=list(train.classes),
        train=ImageSplit(ArrayImages(train.data), train.targets),
        test=ImageSplit(ArrayImages(test.data), test.targets),
        identity={"source": "torchvision.datasets.CIFAR10", "sha256": _array_digest(train.data, test.data, np.asarray(train.targets), np.asarray(test.targets))},
    )


def load_cifar100_superclasses(data_dir: Path, download: bool) -> ImageDataset:
    """CIFAR-100 with its 20 superclasses as labels, the one-class protocol of the papers."""
    from torchvision.datasets import CIFAR100

    from pipeline.extract.torchvision_files import cifar_files

    def make(train: bool):
        return CIFAR100(str(data_dir), train=train, download=download)

    files = cifar_files(CIFAR100, data_dir)
    train = _torchvision_call("CIFAR-100", data_dir, download, lambda: make(True), files)
    test = _torchvision_call("CIFAR-100", data_dir, download, lambda: make(False), files)
    # torchvision exposes only the fine labels; the coarse ones are in the same pickles.
    folder = Path(data_dir) / CIFAR100.base_folder

    def coarse(filename: str) -> np.ndarray:
        with open(folder / filename, "rb") as handle:
            return np.asarray(pickle.load(handle, encoding="latin1")["coarse_labels"])

    with open(folder / CIFAR100.meta["filename"], "rb") as handle:
        names = pickle.load(handle, encoding="latin1")["coarse_label_names"]
    train_labels, test_labels = coarse(CIFAR100.train_list[0][0]), coarse(CIFAR100.test_list[0][0])
    return ImageDataset(
        name="cifar100",
        classes=list(names),
        train=ImageSplit(ArrayImages(train.data), train_labels),
        test=ImageSplit(ArrayImages(test.data), test_labels),
        identity={"source": "torchvision.datasets.CIFAR100", "labels": "20 superclasses",
                  "sha256": _array_digest(train.data, test.data, train_labels, test_labels)},
    )


def _mnist_like(cls_name: str, title: str, key: str):
    def load(data_dir: Path, download: bool) -> ImageDataset:
        import torchvision.datasets as tvd

        from pipeline.extract.torchvision_files import mnist_files

        cls = getattr(tvd, cls_name)
        files = mnist_files(cls, data_dir)
        train = _torchvision_call(title, data_dir, download, lambda: cls(str(data_dir), train=True, download=download), files)
        test = _torchvision_call(title, data_dir, download, lambda: cls(str(data_dir), train=False, download=download), files)
        return ImageDataset(
            name=key,
            classes=list(train.classes),
            train=ImageSplit(ArrayImages(train.data.numpy()), train.targets.numpy()),
            test=ImageSplit(ArrayImages(test.data.numpy()), test.targets.numpy()),
            identity={"source": f"torchvision.datasets.{cls_name}",
                      "sha256": _array_digest(train.data.numpy(), test.data.numpy(),
                                              train.targets.numpy(), test.targets.numpy())},
        )

    return load


def load_svhn(data_dir: Path, download: bool) -> ImageDataset:
    from torchvision.datasets import SVHN

    from pipeline.extract.torchvision_files import svhn_files

    files = svhn_files(SVHN, data_dir)
    train = _torchvision_call("SVHN", data_dir, download, lambda: SVHN(str(data_dir), split="train", download=download), files)
    test = _torchvision_call("SVHN", data_dir, download, lambda: SVHN(str(data_dir), split="test", download=download), files)
    return ImageDataset(
        name="svhn",
        classes=[str(c) for c in range(10)],
        train=ImageSplit(ArrayImages(train.data, channels_first=True), train.labels),
        test=ImageSplit(ArrayImages(test.data, channels_first=True), test.labels),
        identity={"source": "torchvision.datasets.SVHN",
                  "sha256": _array_digest(train.data, test.data, train.labels, test.labels)},
    )


def _class_folders(root: Path, split: str) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The class folders of ``root/split`` by name, and the links to folders refused there
    (split, path, reason): links to folders are never followed (``listing``)."""
    try:
        entries = sorted(os.scandir(root / split), key=lambda entry: entry.name)
    except OSError as error:
        raise PipelineError(f"cannot read {root / split} ({error.strerror}).") from error
    refused = [(split, entry.path, folder_link_reason(entry.path)) for entry in entries
               if entry.is_symlink() and entry.is_dir()]
    return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)], refused


def _check_class_names(root: Path, classes: list[str]) -> None:
    from pipeline.store.cache import class_names_problem

    problem = class_names_problem(classes)
    if problem:
        raise PipelineError(f"the class folders of {root} (their names are the class names) cannot be used: the list "
                            f"{problem}. Rename the folders.")


def _list_split(root: Path, split: str, classes: list[str], folders: list[str]) -> tuple[ImageSplit, list]:
    """The images of the class folders ``folders`` of ``root/split``, each labelled by its
    folder's index in ``classes``, and the entries refused (split, path, reason). A class
    folder without an image is refused with torchvision's message."""
    paths, labels, empty, refused = [], [], [], []
    for name in folders:
        files, bad = list_images(root / split / name)
        paths += files
        labels += [classes.index(name)] * len(files)
        refused += [(split, path, reason) for path, reason in bad]
        if not files and not bad:
            empty.append(name)
    if empty:  # torchvision's message, which the documentation quotes
        raise PipelineError(f"Found no valid file for the classes {', '.join(empty)}. Supported extensions are: "
                            f"{', '.join(IMAGE_EXTENSIONS)} Every class folder needs at least one image.")
    return ImageSplit(FileImages(paths), labels), refused


def load_imagefolder(data_dir: Path, download: bool) -> ImageDataset:
    """A user's images laid out as ``train/<class>/*`` and ``test/<class>/*``.

    Listed by ``listing.list_images``: links to image files are followed, links to folders
    (class folders included) never are; what cannot be listed is refused with the unreadable
    images (``drop_unreadable``)."""
    root = Path(data_dir)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise PipelineError(
                f"image folder {root} has no {split}/ subfolder. The imagefolder dataset expects "
                f"{root}/train/<class>/<image> and {root}/test/<class>/<image>, with the same class "
                f"folder names in both."
            )
    refused: list[tuple[str, str, str]] = []
    found = {}
    for split in ("train", "test"):
        found[split], links = _class_folders(root, split)
        refused += links
        if not found[split] and not refused:
            raise PipelineError(f"Couldn't find any class folder in {root / split}. Put each class's images in its "
                                f"own subfolder of train/ and test/.")
    classes = found["train"]
    if sorted(found["test"]) != sorted(classes):
        raise PipelineError(
            f"train/ and test/ of {root} have different class folders: only in train: "
            f"{sorted(set(classes) - set(found['test']))}, only in test: {sorted(set(found['test']) - set(classes))}. "
            f"For normal images in train/<normal>/ and test/<normal>/ beside anomalies in test/<defect type>/ "
            f"(the MVTec AD and anomalib layout), use --dataset anomaly_folder."
        )
    _check_class_names(root, classes)
    splits = {}
    for split in ("train", "test"):
        splits[split], bad = _list_split(root, split, classes, classes)
        refused += bad
    return ImageDataset(
        name="imagefolder",
        classes=classes,
        train=splits["train"],
        test=splits["test"],
        # The folder's name, not its absolute path, so a cache can be resumed on another machine.
        identity={"source": "image folder", "folder": root.resolve().name,
                  "content_sha256": files_digest(splits["train"].images.paths + splits["test"].images.paths, root)},
        root=root,
        refused=refused,
    )


DEFAULT_NORMAL = "good"


def normal_folder_names(normal: str | Sequence[str]) -> list[str]:
    """``"good"``, ``"good,ok"`` or a list of names -> the normal folder names, each once."""
    names = normal.split(",") if isinstance(normal, str) else list(normal)
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not names:
        raise PipelineError(f"--normal {normal!r} names no folder; give the normal folder's name (default "
                            f"{DEFAULT_NORMAL}), or several separated by commas.")
    return names


def load_anomaly_folder(data_dir: Path, download: bool, normal: str | Sequence[str] = DEFAULT_NORMAL) -> ImageDataset:
    """A user's inspection images in the MVTec AD / anomalib ``Folder`` layout::

        train/<normal>/*            normal images only (the heads train on these)
        test/<normal>/*             normal test images
        test/<defect type>/*        anomalies, one folder per kind (test split only)
        ground_truth/<defect type>/ optional masks (``<name>_mask.png`` or ``<name>.png``)

    ``normal`` names the normal folders (several allowed). Classes are the normal folders, then
    the defect types by name; the dataset records its protocol, normal-vs-anomalies, and the
    mask found for each test image (a path relative to the folder), which nothing requires.
    Listed, and unreadable files refused, as for ``load_imagefolder``."""
    root = Path(data_dir)
    normals = normal_folder_names(normal)
    layout = (f"The anomaly_folder dataset expects {root}/train/{normals[0]}/<image> (normal images only), "
              f"{root}/test/{normals[0]}/<image> and {root}/test/<defect type>/<image>.")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise PipelineError(f"image folder {root} has no {split}/ subfolder. {layout}")
    found, refused = {}, []
    for split in ("train", "test"):
        found[split], links = _class_folders(root, split)
        refused += links
    named = " or ".join(f"{n}/" for n in normals)
    train_normals = [n for n in normals if n in found["train"]]
    if not train_normals:
        raise PipelineError(f"{root / 'train'} has no normal training images: no folder {named} in it "
                            f"(it has: {', '.join(found['train']) or 'no folder'}). {layout} If the normal folder "
                            f"has another name, give it with --normal NAME.")
    defect_in_train = [n for n in found["train"] if n not in normals]
    if defect_in_train:
        raise PipelineError(f"{root / 'train'} holds folders that are not normal: {', '.join(defect_in_train)}. The "
                            f"heads train on normal images only, so anomalies belong in test/<defect type>/; move "
                            f"them there, or, if they are normal too, name every normal folder with --normal "
                            f"{','.join(normals + defect_in_train)}.")
    test_normals = [n for n in normals if n in found["test"]]
    defects = sorted(n for n in found["test"] if n not in normals)
    if not test_normals:
        raise PipelineError(f"{root / 'test'} has no normal test images: no folder {named} in it, so no AUROC can be "
                            f"computed (it needs normal and anomalous test images). {layout}")
    if not defects:
        raise PipelineError(f"{root / 'test'} has no anomalies: only the normal folder {', '.join(test_normals)}, no "
                            f"test/<defect type>/ folder beside it, so no AUROC can be computed. {layout}")
    classes = [*normals, *defects]
    _check_class_names(root, classes)
    train, bad_train = _list_split(root, "train", classes, train_normals)
    test, bad_test = _list_split(root, "test", classes, [*test_normals, *defects])
    refused += bad_train + bad_test
    identity = {"source": "anomaly folder (MVTec AD layout)", "folder": root.resolve().name,
                "protocol": "normal-vs-anomalies", "normal_classes": normals,
                "content_sha256": files_digest(train.images.paths + test.images.paths, root)}
    masks = _mask_paths(root, test.images.paths, defects)
    if masks:
        identity["masks"] = masks
    return ImageDataset(name="anomaly_folder", classes=classes, train=train, test=test, identity=identity, root=root,
                        refused=refused)


MASK_FOLDER = "ground_truth"


def _mask_paths(root: Path, test_paths: list[str], defects: list[str]) -> dict[str, str]:
    """``{test image: its mask}``, relative to ``root``, for the defect images that have one in
    ``ground_truth/<defect type>/`` at the same relative place, named ``<stem>_mask.<ext>``
    (MVTec AD) or ``<stem>.<ext>`` (anomalib). Masks are recorded, never read or required."""
    by_place: dict[str, str] = {}  # <defect type>/<image path without extension> -> mask
    for defect in defects:
        if not (root / MASK_FOLDER / defect).is_dir():
            continue
        files, _ = list_images(root / MASK_FOLDER / defect)  # an entry refused there: no mask for its image
        for path in files:
            place = str(Path(path).relative_to(root / MASK_FOLDER).with_suffix(""))
            for key in dict.fromkeys((place.removesuffix("_mask"), place)):
                by_place.setdefault(key, os.path.relpath(path, root))
    places = {os.path.relpath(path, root): str(Path(path).relative_to(root / "test").with_suffix(""))
              for path in test_paths}
    return {image: by_place[place] for image, place in places.items() if place in by_place}


# Files hashed at once. File reads and hashing release the GIL, so the reads overlap: about 2x
# faster than one at a time on a local disk with a cold page cache, more on network storage.
DIGEST_THREADS = 8


def file_digest(path: str | Path) -> str:
    """BLAKE2b of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.blake2b()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_digest_or_reason(path: str) -> str:
    """``file_digest``, or why the file cannot be read (the decode check then reports it)."""
    try:
        return file_digest(path)
    except OSError as error:
        return f"unreadable: {error.strerror}"


def files_digest(paths: Sequence[str], root: str | Path, threads: int = DIGEST_THREADS) -> str:
    """SHA-256 over every file's path relative to ``root`` and the BLAKE2b of its bytes, in order.

    It changes whenever any file's content does, also for a file edited in place with the same
    size (and even the same time stamp, as ``cp -p`` or ``rsync -t`` leave it), so a cache of
    an image folder is never taken for one of the edited folder. Content, not time stamps, so a
    copy of the folder on another machine is recognised as the same dataset.
    """
    digest = hashlib.sha256()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="digest") as pool:
        for path, content in zip(paths, pool.map(_file_digest_or_reason, paths)):
            digest.update(f"{os.path.relpath(path, root)}\0{content}\n".encode())
    return digest.hexdigest()


def load_synthetic(data_dir: Path, download: bool, n_classes: int = 3, n_train: int = 24,
                   n_test: int = 12, size: int = 16, seed: int = 0) -> ImageDataset:
    """Small coloured-pattern images for tests: each class has its own colour and stripes."""
    rng = np.random.default_rng(seed)

    def make(n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for c in range(n_classes):
            colour = np.array([(37 * c) % 256, (91 * c + 60) % 256, (151 * c + 120) % 256], dtype=float)
            stripes = ((np.arange(size) // (c + 1)) % 2).astype(float)[None, :, None] * 60
            for _ in range(n_per_class):
                noise = rng.normal(0, 20, size=(size, size, 3))
                images.append(np.clip(colour + stripes + noise, 0, 255).astype(np.uint8))
                labels.append(c)
        return np.stack(images), np.array(labels)

    train_images, train_labels = make(n_train)
    test_images, test_labels = make(n_test)
    return ImageDataset(
        name="synthetic",
        classes=[f"class{c}" for c in range(n_classes)],
        train=ImageSplit(ArrayImages(train_images), train_labels),
        test=ImageSplit(ArrayImages(test_images), test_labels),
        identity={"source": "synthetic", "seed": seed, "sha256": _array_digest(train_images, test_images)},
    )


DATASETS: dict[str, Callable[[Path, bool], ImageDataset]] = {
    "digits": load_digits_dataset,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100_superclasses,
    "mnist": _mnist_like("MNIST", "MNIST", "mnist"),
    "fashion_mnist": _mnist_like("FashionMNIST", "Fashion-MNIST", "fashion_mnist"),
    "svhn": load_svhn,
    "imagefolder": load_imagefolder,
    "anomaly_folder": load_anomaly_folder,
    "synthetic": load_synthetic,
}


def load_dataset(name: str, data_dir: str | Path = "data", download: bool = False,
                 normal: str | Sequence[str] = DEFAULT_NORMAL) -> ImageDataset:
    """The dataset ``name``; ``normal`` names the normal folders of an anomaly_folder (other
    datasets have no such folders and ignore it)."""
    if name not in DATASETS:
        raise choice_error("dataset", name, list(DATASETS))
    if name == "anomaly_folder":
        return load_anomaly_folder(Path(data_dir), download, normal)
    return DATASETS[name](Path(data_dir), download)


# --- unreadable files ------------------------------------------------------------------


class _ReadCheck(torch.utils.data.Dataset):
    def __init__(self, images: "FileImages", batches: list[range]) -> None:
        self.images, self.batches = images, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[tuple[int, str]]:
        failures = []
        for i in self.batches[index]:
            try:
                self.images[i]
            except UnreadableImageError as error:
                failures.append((i, error.reason))
        return failures


def unreadable_images(images: Sequence, workers: int = 0) -> list[tuple[int, str]]:
    """(index, reason) of every image file that cannot be decoded (a full decode, which
    catches truncated files that a header check would pass)."""
    if not isinstance(images, FileImages):
        return []
    from torch.utils.data import DataLoader

    batches = [range(start, min(start + 256, len(images))) for start in range(0, len(images), 256)]
    loader = DataLoader(_ReadCheck(images, batches), batch_size=None, num_workers=workers)
    return [failure for failures in loader for failure in failures]


def first_few(items: list[str], limit: int = 10) -> str:
    """``items`` joined with "; ", the first ``limit`` of them and how many more."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def recorded_unreadable(dataset: ImageDataset, recorded: dict | None) -> dict[str, list[tuple[int, str]]] | None:
    """The unreadable files of ``dataset`` as a cache made from these very files recorded them
    (``recorded``: that cache's ``metadata["dataset"]``), without decoding anything: per split,
    (index, reason). None when ``recorded`` is not of these files (another folder, or files
    changed since: the content digest differs) or the dataset is not made of files."""
    if recorded is None or not isinstance(dataset.train.images, FileImages) or "content_sha256" not in dataset.identity:
        return None
    same = {"name": dataset.name, "classes": list(dataset.classes),
            **{k: v for k, v in dataset.identity.items() if k != "skipped_files"}}
    if any(recorded.get(key) != value for key, value in same.items()):
        return None
    root = dataset.root or Path(".")
    position = {(split, os.path.relpath(path, root)): (split, i) for split in ("train", "test")
                for i, path in enumerate(dataset.split(split).images.paths)}
    found: dict[str, list[tuple[int, str]]] = {"train": [], "test": []}
    for entry in recorded.get("skipped_files", []):  # "split: relative path (reason)"
        split, _, rest = str(entry).partition(": ")
        # The path ends at one of the " (" that open the reason: the one that names a listed file.
        cuts = [i for i in range(len(rest)) if rest.startswith(" (", i)]
        match = next(((rest[:i], rest[i + 2:-1]) for i in cuts if (split, rest[:i]) in position), None)
        if match is not None:  # entries the listing refused (broken links) are not in the splits
            found[split].append((position[(split, match[0])][1], match[1]))
    if sum(len(v) for v in found.values()) + len(dataset.refused) != len(recorded.get("skipped_files", [])):
        return None  # the record does not fit this listing: decode again
    return found


def drop_unreadable(dataset: ImageDataset, skip_bad: bool, workers: int = 0,
                    recorded: dict | None = None) -> ImageDataset:
    """Refuse a dataset with unreadable files (listing them) or, with ``skip_bad``, leave them
    out and record their paths in the dataset identity (and so in the cache metadata).

    Finding them decodes every file once, which only ``skip_bad`` needs before the extraction:
    the rows of the store depend on which files are left out. Without it only the entries the
    listing refused, and the files ``recorded`` lists, are refused here; the extraction decodes
    each file once and stops at the first it cannot read (``UnreadableImageError``).
    ``recorded``: the dataset description of a cache already at the output; when it was made
    from these very files (``recorded_unreadable``), its record of the unreadable files stands
    for that decode, so resuming or repeating an extraction does not decode everything twice."""
    bad = recorded_unreadable(dataset, recorded)
    if bad is None:
        bad = {split: unreadable_images(dataset.split(split).images, workers) if skip_bad else []
               for split in ("train", "test")}
    if not any(bad.values()) and not dataset.refused:
        return dataset
    root = dataset.root or Path(".")
    # Entries the listing refused (broken or looping links, links to folders) come first, by path.
    listed = [(split, os.path.relpath(path, root), reason) for split, path, reason in dataset.refused]
    listed += [(split, os.path.relpath(dataset.split(split).images.paths[i], root), reason)
               for split, failures in bad.items() for i, reason in failures]
    if not skip_bad:
        shown = first_few([f"{path} ({reason})" for _, path, reason in listed])
        raise PipelineError(f"{len(listed)} image files cannot be read: {shown}. Replace or remove them, "
                            f"or pass --skip-bad to leave them out (they are then listed in the cache metadata).")
    splits = {}
    for split in ("train", "test"):
        drop = {i for i, _ in bad[split]}
        source = dataset.split(split)
        keep = [i for i in range(len(source.labels)) if i not in drop]
        splits[split] = ImageSplit(FileImages([source.images.paths[i] for i in keep]), source.labels[keep])
    identity = {**dataset.identity, "skipped_files": [f"{split}: {path} ({reason})" for split, path, reason in listed]}
    # The refused entries are recorded in skipped_files; the dataset returned has none left.
    return ImageDataset(dataset.name, dataset.classes, splits["train"], splits["test"], identity, dataset.root)


def image_folder_subset(source: str | Path, target: str | Path, train_per_class: int, test_per_class: int) -> Path:
    """An image folder of symlinks to the first images of each class of ``source``
    (for benchmarks and quick trials on part of a large folder)."""
    source, target = Path(source), Path(target)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            (target / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:count]:
                (target / split / class_dir.name / image.name).symlink_to(image.resolve())
    return target
