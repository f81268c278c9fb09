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
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pipeline.errors import PipelineError, choice_error
from pipeline.class_names import nfc, same_after_nfc_problem
from pipeline.extract.listing import IMAGE_EXTENSIONS, folder_link_reason, list_images, loose_files

# Decoded by torchvision.io (libjpeg-turbo, libwebp: faster than PIL, the same pixels); the
# others by PIL: GIF (PIL decodes only the first frame, torchvision every one) and PNG (libpng
# through torchvision ends the process, no message, on a PNG whose data is shorter than its
# header says; PIL raises an error, so such a file is reported like any unreadable one).
TORCHVISION_DECODES = (".jpg", ".jpeg", ".webp")
# Of those, the formats whose EXIF orientation torchvision applies itself.
TORCHVISION_ORIENTS = (".jpg", ".jpeg")
# The most pixels (width x height) an image may have: 100 megapixels (10000 x 10000) take
# 300 MB as RGB bytes, and several times that while being decoded and resized.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
MAX_PIXELS_VARIABLE = "FFAD_MAX_IMAGE_PIXELS"


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
    """Images read from files on demand (``decode_image_file``). A file that cannot be
    decoded, or has more pixels than ``max_image_pixels()``, raises ``UnreadableImageError``."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        max_image_pixels()  # a bad $FFAD_MAX_IMAGE_PIXELS stops here, not as every file unreadable

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        try:
            return decode_image_file(path)
        except Exception as error:  # any decoder error means the file is unusable
            raise UnreadableImageError(path, decode_failure_reason(error)) from error


def decode_image_file(path: str) -> torch.Tensor:
    """The image file ``path`` as an RGB uint8 tensor (3, H, W), as an image viewer shows it:

    - turned upright by its EXIF orientation (a phone's portrait photo, a rotated scan);
    - an animation's first frame; an alpha channel dropped (as torchvision's RGB mode does);
    - 16-bit images (PNG, TIFF) scaled from their full range, value x 255 / 65535 rounded, and
      floating-point ones (TIFF) as value x 255 when every value lies within [0, 1], else from
      the image's own minimum to its maximum (``_to_uint8``): never clipped to white or black.
      A note on stderr says so once per run (``_note_once``), naming a file.

    An image of more than ``max_image_pixels()`` pixels (width x height, read from the file's
    header before anything is decoded) raises ``ImageTooLargeError``, which names the limit and
    how to raise it. PIL's own guard (``Image.MAX_IMAGE_PIXELS``: a DecompressionBombWarning
    above 89 million pixels, an error above 179 million) is lifted meanwhile: this limit
    replaces it, whichever decoder is used."""
    limit = max_image_pixels()
    if path.lower().endswith(TORCHVISION_DECODES):
        return _decode_with_torchvision(path, limit)
    return _decode_with_pil(path, limit)


class ImageTooLargeError(ValueError):
    """An image file with more pixels than ``max_image_pixels()`` allows."""


def max_image_pixels() -> int | None:
    """The most pixels an image may have: ``$FFAD_MAX_IMAGE_PIXELS`` (0: no limit), else
    ``DEFAULT_MAX_IMAGE_PIXELS``. None for no limit."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        pixels = int(value.replace("_", ""))
    except ValueError:
        pixels = -1
    if pixels < 0:
        raise PipelineError(f"{MAX_PIXELS_VARIABLE}={value!r}: give the most pixels (width x height) an image may "
                            f"have, a whole number such as {MAX_PIXELS_VARIABLE}=400000000, or 0 for no limit; "
                            f"unset, it is {DEFAULT_MAX_IMAGE_PIXELS}.")
    return pixels or None


def _check_pixels(width: int, height: int, limit: int | None) -> None:
    if limit is not None and width * height > limit:
        raise ImageTooLargeError(f"{width}x{height} = {width * height} pixels, over the limit of {limit}; to decode "
                                 f"it set {MAX_PIXELS_VARIABLE}={width * height} or more (0: no limit)")


_PIL_GUARD_LOCK = threading.Lock()


@contextmanager
def _pil_guard_lifted():
    """PIL's decompression-bomb guard off while this module opens and decodes an image
    (``max_image_pixels`` is checked instead), restored after."""
    from PIL import Image

    with _PIL_GUARD_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decode_with_torchvision(path: str, limit: int | None) -> torch.Tensor:
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image

    orients_itself = path.lower().endswith(TORCHVISION_ORIENTS)
    orientation, checked = 1, False
    try:
        with _pil_guard_lifted(), Image.open(path) as pil:  # the header only: nothing is decoded
            _check_pixels(*pil.size, limit)
            checked = True
            if not orients_itself:  # WebP
                orientation = _exif_orientation(pil)
    except ImageTooLargeError:
        raise
    except Exception:  # noqa: BLE001 - a header PIL cannot read: torchvision decodes the file, or says why not
        checked = False
    image = decode_image(path, mode=ImageReadMode.RGB, apply_exif_orientation=orients_itself)
    if image.ndim == 4:  # an animated WebP: its first frame
        image = image[0]
    if not checked:
        _check_pixels(image.shape[-1], image.shape[-2], limit)
    if image.dtype != torch.uint8:  # a 16-bit PNG
        image = torch.from_numpy(_to_uint8(image.numpy(), path))
    return _orient(image, orientation)


def _decode_with_pil(path: str, limit: int | None) -> torch.Tensor:
    """BMP, TIFF, GIF: whatever PIL opens, 16-bit ("I;16"), 32-bit integer ("I") and
    floating-point ("F") grayscale included (PIL gives 16-bit RGB TIFFs as 8-bit RGB)."""
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    # From an open file, not by name: PIL maps an uncompressed TIFF named by path into memory,
    # and then garbles one with an orientation tag of 5 to 8 (Pillow 13).
    with _pil_guard_lifted(), open(path, "rb") as handle, Image.open(handle) as pil:
        _check_pixels(*pil.size, limit)
        if pil.mode.startswith("I;16") or pil.mode in ("I", "F"):
            values = np.asarray(pil)
            image = torch.from_numpy(_to_uint8(values.astype(values.dtype.newbyteorder("="), copy=False), path))
            image = image.unsqueeze(0).expand(3, -1, -1)
        else:
            image = pil_to_tensor(pil.convert("RGB"))
        _check_pixels(*pil.size, limit)  # a GIF frame may outgrow the size its header gave
        # Read once the pixels are: recent PIL turns a TIFF by its orientation tag as it loads it,
        # and drops the tag; older PIL leaves both to this.
        orientation = _exif_orientation(pil)
    return _orient(image, orientation).contiguous()


def _exif_orientation(pil) -> int:
    """The EXIF (or TIFF) orientation of an opened PIL image, 1 to 8; 1 when it has none."""
    try:
        orientation = int(pil.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: as if there were none
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """``image`` (C, H, W) as an EXIF ``orientation`` asks it be shown (PIL's
    ``ImageOps.exif_transpose``): 2 mirrored, 3 turned 180 degrees, 4 flipped, 5 transposed,
    6 turned 90 degrees clockwise, 7 transposed on the other diagonal, 8 turned 90 degrees
    counter-clockwise."""
    turns = {2: lambda t: t.flip(-1), 3: lambda t: t.flip(-2, -1), 4: lambda t: t.flip(-2),
             5: lambda t: t.transpose(-2, -1), 6: lambda t: torch.rot90(t, -1, (-2, -1)),
             7: lambda t: t.transpose(-2, -1).flip(-2, -1), 8: lambda t: torch.rot90(t, 1, (-2, -1))}
    return turns[orientation](image).contiguous() if orientation in turns else image


SIXTEEN_BIT, UNIT_RANGE, OWN_RANGE = range(3)
_NOTES = {
    SIXTEEN_BIT: "16-bit images are scaled to 8 bits from their full range (value x 255 / 65535, rounded), as a "
                 "viewer shows them, not clipped; {path} is one.",
    UNIT_RANGE: "floating-point images whose values all lie within [0, 1] are scaled to 8 bits as value x 255 "
                "(rounded); {path} is one.",
    OWN_RANGE: "images of floating-point values beyond [0, 1], or of 32-bit integers beyond 0-65535, are scaled to "
               "8 bits from each image's own minimum (black) to its maximum (white), so their brightness is not "
               "comparable between images (NaN is black); {path} is one.",
}


def _to_uint8(values: np.ndarray, path: str) -> np.ndarray:
    """Pixel values of more than 8 bits as uint8, none clipped: unsigned integers up to 65535
    (16-bit, or 32-bit holding 16-bit values) as value x 255 / 65535 rounded; floating-point
    values all within [0, 1] as value x 255 rounded; anything else (floats beyond [0, 1],
    integers beyond 0-65535) from the image's own finite minimum to its maximum, infinities to
    those ends, NaN to 0, a constant image black."""
    if values.dtype.kind in "iu" and (values.size == 0 or (values.min() >= 0 and values.max() <= 65535)):
        _note_once(SIXTEEN_BIT, path)
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)  # = round(value / 257), exactly
    floats = values.astype(np.float64 if values.dtype.itemsize > 4 else np.float32)
    finite = np.isfinite(floats)
    low = float(np.min(floats, where=finite, initial=np.inf))
    high = float(np.max(floats, where=finite, initial=-np.inf))
    if values.dtype.kind == "f" and 0.0 <= low and high <= 1.0:
        _note_once(UNIT_RANGE, path)
        scale, low = 255.0, 0.0
    else:
        _note_once(OWN_RANGE, path)
        scale = 255.0 / (high - low) if high > low else 0.0
        low = low if np.isfinite(low) else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = (floats - low) * scale
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)  # the clip only catches rounding and infinities


class _OncePerRun:
    """Flags in memory shared with the processes forked from this one (the DataLoader workers
    that decode images), so that a note is printed once per run, not once per worker."""

    def __init__(self, count: int) -> None:
        import mmap
        import multiprocessing

        self.flags = mmap.mmap(-1, count)  # anonymous and shared
        try:
            self.lock = multiprocessing.get_context("fork").Lock()
        except (ValueError, OSError, ImportError):  # no fork (Windows), or no semaphores
            self.lock = threading.Lock()

    def first(self, index: int) -> bool:
        with self.lock:
            if self.flags[index]:
                return False
            self.flags[index] = 1
            return True


_NOTED = _OncePerRun(len(_NOTES))


def _note_once(kind: int, path: str) -> None:
    if _NOTED.first(kind):
        from tqdm import tqdm

        tqdm.write("note: " + _NOTES[kind].format(path=path), file=sys.stderr)  # below a progress bar
        sys.stderr.flush()


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
        from pipeline.extract.torchvision_files import torchvision_failure

        raise torchvision_failure(title, data_dir, download, error) from error


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
    """The class folders of ``root/split`` by name (as on disk), and the entries refused there
    (split, path, reason): links to folders, never followed (``listing``), and image files
    lying directly in the split folder, which no class folder holds (``listing.loose_files``;
    other files there are named in a note on stderr)."""
    try:
        entries = sorted(os.scandir(root / split), key=lambda entry: entry.name)
    except OSError as error:
        raise PipelineError(f"cannot read {root / split} ({error.strerror}).") from error
    refused = [(split, entry.path, folder_link_reason(entry.path)) for entry in entries
               if entry.is_symlink() and entry.is_dir()]
    images, others = loose_files(root / split)
    refused += [(split, path, reason) for path, reason in images]
    if others:  # not images, so not refused, but never left out without a word
        from tqdm import tqdm

        what = "a file that is not an image" if len(others) == 1 else f"{len(others)} files that are not images"
        tqdm.write(f"note: {root / split} holds {what} outside every class folder, left out: {first_few(others)}.",
                   file=sys.stderr)
    return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)], refused


def _class_names_of(root: Path, split: str, folders: list[str]) -> dict[str, str]:
    """``{folder name on disk: class name}``: the name Unicode-normalised (NFC), so a folder
    written decomposed (macOS) is the same class as one written composed; two folders of one
    split whose names are one name after normalisation are refused."""
    problem = same_after_nfc_problem(folders)
    if problem:
        raise PipelineError(f"the class folders of {root / split} (their names are the class names) cannot be used: "
                            f"the list {problem}. Rename or merge the folders.")
    return {folder: nfc(folder) for folder in folders}


def _check_class_names(root: Path, classes: list[str]) -> None:
    from pipeline.store.metadata import class_names_problem

    problem = class_names_problem(classes)
    if problem:
        raise PipelineError(f"the class folders of {root} (their names are the class names) cannot be used: the list "
                            f"{problem}. Rename the folders.")


def _list_split(root: Path, split: str, classes: list[str], folders: list[str],
                names: dict[str, str] | None = None, skip: Callable[[str], bool] | None = None
                ) -> tuple[ImageSplit, list]:
    """The images of the class folders ``folders`` of ``root/split``, each labelled by its
    class's index in ``classes`` (``names``: the class of each folder, else the folder's own
    name), and the entries refused (split, path, reason). ``skip``: subfolders not listed
    (``listing.list_images``). A class folder without an image is refused with torchvision's
    message."""
    paths, labels, empty, refused = [], [], [], []
    for name in folders:
        files, bad = list_images(root / split / name, skip)
        paths += files
        labels += [classes.index((names or {}).get(name, name))] * len(files)
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
    (class folders included) never are; what cannot be listed, and image files lying directly
    in train/ or test/ (no class), are refused with the unreadable images (``drop_unreadable``).
    Class names are the folder names Unicode-normalised (NFC): two folders of one split that
    are one name after normalisation are refused."""
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
    names = {}
    for split in ("train", "test"):
        found[split], links = _class_folders(root, split)
        refused += links
        if not found[split] and not any(os.path.isdir(path) for _, path, _ in links):  # links: to folders, images
            loose = f" (its {len(links)} images lie directly in it)" if links else ""
            raise PipelineError(f"Couldn't find any class folder in {root / split}{loose}. Put each class's images in "
                                f"its own subfolder of train/ and test/.")
        names[split] = _class_names_of(root, split, found[split])  # folder -> class name (NFC)
    classes = list(names["train"].values())
    if sorted(names["test"].values()) != sorted(classes):
        test_classes = set(names["test"].values())
        raise PipelineError(
            f"train/ and test/ of {root} have different class folders: only in train: "
            f"{sorted(set(classes) - test_classes)}, only in test: {sorted(test_classes - set(classes))}. "
            f"For normal images in train/<normal>/ and test/<normal>/ beside anomalies in test/<defect type>/ "
            f"(the MVTec AD and anomalib layout), use --dataset anomaly_folder."
        )
    _check_class_names(root, classes)
    splits = {}
    for split in ("train", "test"):
        folders = sorted(names[split], key=lambda folder: classes.index(names[split][folder]))
        splits[split], bad = _list_split(root, split, classes, folders, names[split])
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
    """``"good"``, ``"good,ok"`` or a list of names -> the normal class names, each once:
    trimmed and Unicode-normalised (NFC); names that differ only in case are one name (the
    folders are matched ignoring case), the first spelling kept."""
    names = normal.split(",") if isinstance(normal, str) else list(normal)
    names = list({_folder_key(n): nfc(n.strip()) for n in reversed(names) if n.strip()}.values())[::-1]
    if not names:
        raise PipelineError(f"--normal {normal!r} names no folder; give the normal folder's name (default "
                            f"{DEFAULT_NORMAL}), or several separated by commas.")
    return names


MASK_FOLDER = "ground_truth"
# The names of mask folders: MVTec AD's ground_truth/, and anomalib's Folder layout's mask/ (its
# mask_dir, often masks/). Matched by their letters and digits, ignoring case (``_letters``).
MASK_FOLDERS = (MASK_FOLDER, "mask", "masks")


def _folder_key(name: str) -> str:
    """How a normal folder's name is matched: ignoring case, surrounding spaces and Unicode
    normalisation (``Good``, `` good `` and ``GOOD`` are the normal folder good)."""
    return nfc(name).strip().casefold()


def _letters(name: str) -> str:
    return re.sub(r"[\W_]+", "", nfc(name).casefold())


def is_mask_folder(name: str) -> bool:
    """Whether a folder of this name holds masks (``ground_truth/``, ``mask/`` or ``masks/``, in
    any case, with spaces, '-' or none for the '_': ``MASK_FOLDERS``), where MVTec AD and
    anomalib put them: beside train/ and test/, in test/, or in a defect type's folder. Never a
    class, never listed as images."""
    return _letters(name) in {_letters(mask) for mask in MASK_FOLDERS}


def _near_miss(folder: str, normal: str) -> bool:
    """Whether ``folder`` is close to the normal name without matching it: the same letters and
    digits with other punctuation or spaces inside (``good_``, ``go od``), or, for names of three
    letters or more, one letter added, left out, or two neighbours swapped (``goood``,
    ``goods``, ``god``, ``godo``)."""
    a, b = _letters(folder), _letters(normal)
    if not b or _folder_key(folder) == _folder_key(normal):
        return False
    if a == b:
        return True
    if len(b) < 3:
        return False
    if abs(len(a) - len(b)) == 1:
        short, long = sorted((a, b), key=len)
        return any(long[:i] + long[i + 1:] == short for i in range(len(long)))
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 2 and diff[1] == diff[0] + 1 and (a[diff[0]], a[diff[1]]) == (b[diff[1]], b[diff[0]])
    return False


def _anomaly_roles(root: Path, split: str, folders: list[str],
                   normals: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The folders of ``root/split`` by role: ``{folder: normal class}`` and ``{folder: other
    class}`` (NFC); mask folders (``is_mask_folder``) are neither. Refused: two folders of one
    normal class, a near miss of a normal name (``_near_miss``), which would otherwise be graded
    as a defect type, and two folders whose names are one name after Unicode normalisation."""
    keys = {_folder_key(name): name for name in normals}
    normal: dict[str, str] = {}
    other: dict[str, str] = {}
    for folder in folders:
        name = keys.get(_folder_key(folder))
        if name is None and is_mask_folder(folder):
            continue
        if name is not None:
            twin = next((f for f, n in normal.items() if n == name), None)
            if twin is not None:
                raise PipelineError(f"{root / split} has two folders of the normal class {name}: {twin!r} and "
                                    f"{folder!r} (the normal folder is matched ignoring case and surrounding spaces). "
                                    f"Merge them into one.")
            normal[folder] = name
            continue
        near = next((n for n in normals if _near_miss(folder, n)), None)
        if near is not None:
            raise PipelineError(
                f"{root / split} has a folder {folder!r}, close to the normal folder's name {near!r} but not it (the "
                f"normal folder is matched ignoring case and surrounding spaces only), so its images would be graded "
                f"as a defect type. If it holds normal images, rename it {near}/ or name it with --normal "
                f"{','.join([*normals, folder])!r}; if it is a defect type, give it a name less like {near}.")
        other[folder] = nfc(folder)
    problem = same_after_nfc_problem([*normal, *other])
    if problem:
        raise PipelineError(f"the folders of {root / split} (their names are the class names) cannot be used: the "
                            f"list {problem}. Rename or merge the folders.")
    return normal, other


def load_anomaly_folder(data_dir: Path, download: bool, normal: str | Sequence[str] = DEFAULT_NORMAL) -> ImageDataset:
    """A user's inspection images in the MVTec AD / anomalib ``Folder`` layout::

        train/<normal>/*            normal images only (the heads train on these)
        test/<normal>/*             normal test images
        test/<defect type>/*        anomalies, one folder per kind (test split only)
        ground_truth/<defect type>/ optional masks (``<name>_mask.png`` or ``<name>.png``);
                                    or mask/<defect type>/, masks/<defect type>/ (anomalib)

    ``normal`` names the normal folders (several allowed), matched ignoring case and surrounding
    spaces (``Good/`` is good); a folder close to a normal name but not it (``good_/``,
    ``goood/``) is refused with the reason, never graded as a defect type. Mask folders
    (``ground_truth/``, ``mask/``, ``masks/``, in any case: ``is_mask_folder``; also in test/ or
    in a defect type's folder) are never classes and never listed as images; mask folders in
    train/ are left out with a note (``_train_masks_note``: masks of training images mean nothing
    to a one-class head). Image files directly in train/ or test/ are refused (with --skip-bad
    left out and recorded), as unreadable images are; image files and folders beside train/ and
    test/, which no split reads, are named in a note (``_root_note``). Classes are the normal
    names, then the defect types by name (Unicode-normalised, NFC); the dataset records its
    protocol, normal-vs-anomalies, and the mask found for each test image (a path relative to the
    folder), which nothing requires; images lying directly in a mask folder, the mask of no test
    image, are named in a note (``_loose_masks_note``). Listed, and unreadable files refused, as
    for ``load_imagefolder``."""
    root = Path(data_dir)
    normals = normal_folder_names(normal)
    layout = (f"The anomaly_folder dataset expects {root}/train/{normals[0]}/<image> (normal images only), "
              f"{root}/test/{normals[0]}/<image> and {root}/test/<defect type>/<image>.")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise PipelineError(f"image folder {root} has no {split}/ subfolder. {layout}")
    found, refused, roles = {}, [], {}
    for split in ("train", "test"):
        found[split], links = _class_folders(root, split)
        refused += links
        roles[split] = _anomaly_roles(root, split, found[split], normals)
    named = " or ".join(f"{n}/" for n in normals)
    (train_normals, defect_in_train), (test_normals, defect_folders) = roles["train"], roles["test"]
    if not train_normals:
        raise PipelineError(f"{root / 'train'} has no normal training images: no folder {named} in it "
                            f"(it has: {', '.join(found['train']) or 'no folder'}). {layout} If the normal folder "
                            f"has another name, give it with --normal NAME.")
    if defect_in_train:
        raise PipelineError(f"{root / 'train'} holds folders that are not normal: {', '.join(defect_in_train)}. The "
                            f"heads train on normal images only, so anomalies belong in test/<defect type>/; move "
                            f"them there, or, if they are normal too, name every normal folder with --normal "
                            f"{','.join(normals + list(defect_in_train))}.")
    defects = sorted(set(defect_folders.values()))
    if not test_normals:
        raise PipelineError(f"{root / 'test'} has no normal test images: no folder {named} in it, so no AUROC can be "
                            f"computed (it needs normal and anomalous test images). {layout}")
    if not defects:
        raise PipelineError(f"{root / 'test'} has no anomalies: only the normal folder {', '.join(test_normals)}, no "
                            f"test/<defect type>/ folder beside it, so no AUROC can be computed. {layout}")
    classes = [*normals, *defects]
    _check_class_names(root, classes)
    test_names = {**test_normals, **defect_folders}
    _root_note(root)
    in_train = _TrainMasks()  # mask folders inside the normal folders of train/, at any depth
    train, bad_train = _list_split(root, "train", classes, sorted(train_normals, key=lambda f: classes.index(
        train_normals[f])), train_normals, skip=in_train)
    _train_masks_note(root, [f for f in found["train"] if f not in train_normals], train_normals, in_train.count)
    test, bad_test = _list_split(root, "test", classes, sorted(test_names, key=lambda f: classes.index(
        test_names[f])), test_names, skip=is_mask_folder)
    refused += bad_train + bad_test
    identity = {"source": "anomaly folder (MVTec AD layout)", "folder": root.resolve().name,
                "protocol": "normal-vs-anomalies", "normal_classes": normals,
                "content_sha256": files_digest(train.images.paths + test.images.paths, root)}
    masks = _mask_paths(root, test.images.paths, defect_folders)
    _loose_masks_note(root)
    if masks:
        identity["masks"] = masks
    return ImageDataset(name="anomaly_folder", classes=classes, train=train, test=test, identity=identity, root=root,
                        refused=refused)


class _TrainMasks:
    """``is_mask_folder`` as ``list_images``'s ``skip``, counting the mask folders it skips."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, name: str) -> bool:
        mask = is_mask_folder(name)
        self.count += mask
        return mask


def _note(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"note: {text}", file=sys.stderr)  # below a progress bar


def _train_masks_note(root: Path, in_train: list[str], normals: dict[str, str], nested: int) -> None:
    """Name, in a note on stderr, the mask folders of train/, which are left out: ``in_train``,
    directly in train/ (``_anomaly_roles`` gives them no role), and ``nested`` more inside its
    normal folders, at any depth (those directly in a normal folder are named). Not refused: the
    training images are listed as they would be without them, and masks are never required; but
    not silent either, since such masks are never used: they mark the anomalies of test images,
    and a one-class head trains on normal images only, whose masks would be empty."""
    shown = [f"train/{name}/" for name in in_train]
    for folder in sorted(normals):
        shown += [f"train/{folder}/{mask.name}/" for mask in _mask_folders(root / "train" / folder)]
    deeper = nested - (len(shown) - len(in_train))
    if not shown and deeper <= 0:
        return
    listed = first_few(shown) + (f"; and {deeper} deeper in train/" if deeper > 0 else "")
    count = len(shown) + max(deeper, 0)
    _note(f"{root} has {'a mask folder' if count == 1 else f'{count} mask folders'} in train/, left out: {listed}. "
          f"Masks mark the anomalies of test images; the heads train on normal images only (one class), so masks "
          f"of training images are never used. Masks of test images belong in ground_truth/<defect type>/ (or "
          f"mask/<defect type>/) beside train/ and test/.")


def _root_note(root: Path) -> None:
    """Name, in a note on stderr, the image files and the folders lying beside train/ and test/,
    which no split reads (``root/x.png``, MVTec LOCO's ``validation/``), left out: never silently.
    Mask folders, hidden entries and feature caches (``*.zarr``) are not named; nor are other
    files (a README, a licence: a dataset's root is where they belong, and they are no images),
    as ``listing.loose_files`` sorts them."""
    images, _ = loose_files(root)
    folders = [path.name for path in _subfolders(root) if path.name not in ("train", "test")
               and not is_mask_folder(path.name) and not path.name.startswith(".") and not path.name.endswith(".zarr")]
    parts = []
    if images:
        names = [Path(path).name for path, _ in images]
        parts.append(f"{'an image file' if len(names) == 1 else f'{len(names)} image files'} ({first_few(names)})")
    if folders:
        parts.append(f"{'the folder' if len(folders) == 1 else f'{len(folders)} folders'} "
                     f"{first_few([f'{name}/' for name in folders])}")
    if parts:
        _note(f"{root} holds, beside train/ and test/, {' and '.join(parts)}, which no split reads: left out. Only "
              f"train/<normal>/, test/<normal or defect type>/ and the mask folders (ground_truth/, mask/, masks/) are "
              f"read; move images that belong to the dataset there.")


def _loose_masks_note(root: Path) -> None:
    """Name, in a note on stderr, the image files lying directly in a mask folder beside train/
    and test/ or in test/ (``test/mask/x.png``): masks are matched to test images by their defect
    type's folder (``mask/<defect type>/``), so these match none; and a defect type named like
    a mask folder (``mask/``) is read as one, its images never graded: never silently."""
    for folder in [*_mask_folders(root), *_mask_folders(root / "test")]:
        images, _ = loose_files(folder)
        if images:
            names = [Path(path).name for path, _ in images]
            where = os.path.relpath(folder, root)
            lie = "an image file lies" if len(names) == 1 else f"{len(names)} image files lie"
            _note(f"{where}/ of {root} is read as a mask folder (ground_truth/, mask/ and masks/ are, in any case; "
                  f"never a defect type), but {lie} directly in it ({first_few(names)}), the mask of no test "
                  f"image: left out. Masks go in {where}/<defect type>/, named as their test image (or "
                  f"<name>_mask.png). If they are anomalies, give their folder another name: it is a defect type "
                  f"then.")


def _subfolders(parent: Path) -> list[Path]:
    """The folders directly in ``parent``, by name (none where it cannot be read)."""
    try:
        return sorted(path for path in parent.iterdir() if path.is_dir())
    except OSError:
        return []


def _mask_folders(parent: Path) -> list[Path]:
    """The mask folders (``is_mask_folder``) directly in ``parent``, by name."""
    return [path for path in _subfolders(parent) if is_mask_folder(path.name)]


def _mask_paths(root: Path, test_paths: list[str], defect_folders: dict[str, str]) -> dict[str, str]:
    """``{test image: its mask}``, relative to ``root``, for the defect images that have one at
    the same relative place in a mask folder, named ``<stem>_mask.<ext>`` (MVTec AD) or
    ``<stem>.<ext>`` (anomalib): ``ground_truth/<defect type>/`` beside train/ and test/ (or in
    test/), or ``test/<defect type>/ground_truth/``, and likewise in ``mask/`` or ``masks/``
    (anomalib's Folder layout), any mask folder ``is_mask_folder`` names; where several hold a
    mask for one image, the first found (those beside train/ first, by name). ``defect_folders``:
    ``{folder: defect type}``. Masks are recorded, never read or required."""
    by_place: dict[tuple[str, str], str] = {}  # (defect type, image path in its folder without extension) -> mask
    shared = [*_mask_folders(root), *_mask_folders(root / "test")]
    for folder, defect in defect_folders.items():
        bases = [sub for gt in shared for sub in _subfolders(gt) if nfc(sub.name) == defect]
        for base in [*bases, *_mask_folders(root / "test" / folder)]:
            files, _ = list_images(base)  # an entry refused there: no mask for its image
            for path in files:
                place = str(Path(path).relative_to(base).with_suffix(""))
                for key in dict.fromkeys((place.removesuffix("_mask"), place)):
                    by_place.setdefault((defect, key), os.path.relpath(path, root))
    masks = {}
    for path in test_paths:
        parts = Path(path).relative_to(root / "test").parts
        place = (nfc(parts[0]), str(Path(*parts[1:]).with_suffix("")))
        if place in by_place:
            masks[os.path.relpath(path, root)] = by_place[place]
    return masks


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
