"""The files torchvision reads for its datasets, as users have them: copied by hand, often
still compressed as downloaded (MNIST's ``.gz`` files, CIFAR's ``.tar.gz``). They are
decompressed into place (atomically, no network needed); files that are missing are named,
with the folder torchvision looks in.

Decompression is bounded (``decompression_bound``): a file that would unpack to far more than
the real dataset's (a damaged file, or a decompression bomb) is refused once its output reaches
the bound, naming the file and the bound, and nothing of it is left behind, so it can never fill
the disk.

So is what --download fetches (``fetch_missing``): the compressed files are downloaded with
torchvision's own ``download_url`` (its addresses, mirrors and MD5 check), then decompressed
here, under the same bound, before torchvision looks; it finds its files in place and extracts
nothing itself. (It still would extract an archive it downloads when the files already unpacked
fail its MD5 check, CIFAR's, but only an archive that passed its MD5 check, the published file.)
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Download:
    """A compressed file torchvision downloads for a dataset: the addresses it tries in turn (its
    mirrors), where it puts the file, and the file's MD5 sum."""

    urls: tuple[str, ...]
    path: Path
    md5: str | None


@dataclass(frozen=True)
class TorchvisionFiles:
    """The files torchvision reads for a dataset under --data-dir, and the compressed forms
    they come in when downloaded by hand: each file gzipped (MNIST, Fashion-MNIST) or all of
    them in one tar.gz archive (CIFAR) that unpacks into ``folder``. ``downloads``: where
    --download fetches those compressed files from (none for SVHN, whose .mat files torchvision
    downloads as they are, with nothing to extract)."""

    folder: Path
    names: tuple[str, ...]
    gzipped: bool = False
    archive: Path | None = None
    downloads: tuple[Download, ...] = ()

    def missing(self) -> list[str]:
        return [name for name in self.names if not (self.folder / name).is_file()]

    def describe(self) -> str:
        text = f"{', '.join(self.names)} in {self.folder}{os.sep}"
        if self.gzipped:
            text += " (each may also be gzipped, NAME.gz, as downloaded)"
        if self.archive is not None:
            text += f" (or the archive {self.archive.name} as downloaded, in {self.archive.parent}{os.sep})"
        return text


def mnist_files(cls, data_dir: Path) -> TorchvisionFiles:
    """``<data_dir>/<class name>/raw/``, or the ``processed/`` files of torchvision's old layout
    if they are there (torchvision still reads them)."""
    raw = Path(data_dir) / cls.__name__ / "raw"
    processed = raw.parent / "processed"
    if all((processed / name).is_file() for name in (cls.training_file, cls.test_file)):
        return TorchvisionFiles(processed, (cls.training_file, cls.test_file))
    downloads = tuple(Download(tuple(f"{mirror}{name}" for mirror in cls.mirrors), raw / name, md5)
                      for name, md5 in cls.resources)
    return TorchvisionFiles(raw, tuple(name.removesuffix(".gz") for name, _ in cls.resources), gzipped=True,
                            downloads=downloads)


def cifar_files(cls, data_dir: Path) -> TorchvisionFiles:
    names = tuple(name for name, _ in cls.train_list + cls.test_list) + (cls.meta["filename"],)
    archive = Path(data_dir) / cls.filename
    return TorchvisionFiles(Path(data_dir) / cls.base_folder, names, archive=archive,
                            downloads=(Download((cls.url,), archive, cls.tgz_md5),))


def svhn_files(cls, data_dir: Path) -> TorchvisionFiles:
    return TorchvisionFiles(Path(data_dir), tuple(cls.split_list[split][1] for split in ("train", "test")))


# The sizes of the files torchvision's MNIST, Fashion-MNIST and KMNIST read, decompressed (the
# same for the three: the idx header, then 60000 or 10000 28x28 images or labels).
KNOWN_SIZES = {
    "train-images-idx3-ubyte": 16 + 60000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}
# A file of known size may decompress to at most this many times it. Other files (CIFAR's
# archives, which unpack to about 1.1 times their size, MNIST's to at most 5): at most
# RATIO_BOUND times the compressed size, at least FLOOR_BOUND, and never more than CAP_BOUND.
KNOWN_FACTOR = 2
RATIO_BOUND = 20
FLOOR_BOUND = 1 << 20
CAP_BOUND = 4 << 30
# Entries of an archive at most (CIFAR's hold 9).
ENTRIES_BOUND = 1000


def decompression_bound(name: str, compressed: Path) -> tuple[int, str]:
    """The most bytes the compressed file ``compressed`` may decompress to, as the file
    ``name`` (or, for an archive, in all), and how the bound was set (for the messages)."""
    if name in KNOWN_SIZES:
        return KNOWN_FACTOR * KNOWN_SIZES[name], f"{KNOWN_FACTOR} x the {KNOWN_SIZES[name]} bytes of the real {name}"
    size = compressed.stat().st_size
    bound = min(max(RATIO_BOUND * size, FLOOR_BOUND), CAP_BOUND)
    return bound, (f"{RATIO_BOUND} x its {size} compressed bytes, at least {FLOOR_BOUND >> 20} MiB and at most "
                   f"{CAP_BOUND >> 30} GiB")


def _too_large(source: Path, bound: int, how: str, detail: str = "") -> PipelineError:
    return PipelineError(f"{source} decompresses to more than {bound} bytes, far more than the real dataset's (the "
                         f"bound is {how}{detail}): it was refused, and nothing of it was kept. It is not the file "
                         f"torchvision downloads (or it is damaged): copy or download it again; or put the "
                         f"decompressed files there yourself.")


def _gunzip(source: Path, target: Path) -> None:
    """``source`` decompressed to ``target`` atomically (a partial file never has its name, and
    is removed whatever stops it), stopping at ``decompression_bound``."""
    bound, how = decompression_bound(target.name, source)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with gzip.open(source, "rb") as compressed, open(tmp, "wb") as plain:
            written = 0
            # One byte past the bound tells a file of exactly the bound from a larger one.
            while block := compressed.read(min(1 << 20, bound + 1 - written)):
                written += len(block)
                if written > bound:
                    raise _too_large(source, bound, how)
                plain.write(block)
        os.replace(tmp, target)
    except (OSError, EOFError, zlib.error) as error:
        raise PipelineError(f"cannot decompress {source} into {target} ({type(error).__name__}: {error}). If the "
                            f"file is truncated or damaged, copy or download it again; or put the decompressed "
                            f"{target.name} there yourself.") from None
    finally:
        tmp.unlink(missing_ok=True)


def _extract_bounded(tar: tarfile.TarFile, archive: Path, into: Path) -> None:
    """Every entry of ``tar`` extracted into ``into`` (tarfile's "data" filter), one at a time,
    refusing the archive before extracting an entry that would take the files past
    ``decompression_bound``, or the entries past ``ENTRIES_BOUND``. The sizes are the entries'
    headers', which tarfile holds to (it reads no more than a header says)."""
    bound, how = decompression_bound(archive.name, archive)
    total = 0
    for entries, member in enumerate(tar, 1):
        if entries > ENTRIES_BOUND:
            raise PipelineError(f"{archive} holds more than {ENTRIES_BOUND} entries, far more than the archive "
                                f"torchvision downloads: it was refused, and nothing of it was kept. Copy or "
                                f"download it again, or unpack it there yourself.")
        total += max(member.size, 0) if member.isreg() else 0
        if total > bound:
            raise _too_large(archive, bound, how, f"; its entry {member.name} takes it to {total} bytes")
        # Folders without their modes, as extractall leaves them until the end: a read-only one
        # would keep its files out.
        tar.extract(member, into, set_attrs=not member.isdir(), filter="data")


def _unpack(archive: Path, folder: Path) -> None:
    """The files of ``folder`` that are missing, taken from a tar archive that holds
    ``folder.name``/: unpacked beside it in a temporary folder (bounded: ``_extract_bounded``),
    then moved into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", dir=archive.parent))
    try:
        with tarfile.open(archive, "r:*") as tar:
            _extract_bounded(tar, archive, tmp)
        unpacked = tmp / folder.name
        if not unpacked.is_dir():
            raise PipelineError(f"{archive} holds no {folder.name}/ folder; is it the archive torchvision downloads?")
        if not folder.exists():
            os.replace(unpacked, folder)
        else:
            for item in unpacked.iterdir():
                if not (folder / item.name).exists():
                    os.replace(item, folder / item.name)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise PipelineError(f"cannot unpack {archive} into {folder.parent} ({type(error).__name__}: {error}). If "
                            f"the archive is truncated or damaged, copy or download it again; or unpack it there "
                            f"yourself.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TORCHVISION_MNIST_FOLDERS = ("MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST")


def _found_elsewhere(files: TorchvisionFiles, data_dir: Path) -> str:
    """A hint naming expected files that lie in another folder near --data-dir (a common slip:
    the files straight in --data-dir, or in data/mnist instead of data/MNIST/raw)."""
    wanted = set(files.names) | {f"{name}.gz" for name in files.names}
    if files.archive is not None:
        wanted.add(files.archive.name)
    folders = [Path(data_dir)]
    try:
        children = sorted(p for p in Path(data_dir).iterdir() if p.is_dir())[:50]
    except OSError:
        children = []
    # Not the folders torchvision keeps other datasets of the same file names in (MNIST's are
    # Fashion-MNIST's names too).
    children = [child for child in children if child.name not in TORCHVISION_MNIST_FOLDERS
                or child.resolve() == files.folder.parent.resolve()]
    folders += children + [child / "raw" for child in children]
    for folder in folders:
        if folder.resolve() == files.folder.resolve():
            continue
        found = sorted(name for name in wanted
                       if (folder / name).is_file() and (folder / name).resolve() != (files.archive or folder).resolve())
        if found:
            target = files.archive.parent if files.archive is not None and found == [files.archive.name] else files.folder
            return (f" Found {', '.join(found)} in {folder}{os.sep}: move {'them' if len(found) > 1 else 'it'} "
                    f"to {target}{os.sep}.")
    return ""


def _download_url(url: str, path: Path, md5: str | None) -> None:
    """torchvision's ``download_url``: keeps a file already at ``path`` whose MD5 sum is ``md5``,
    else downloads it there and raises unless its MD5 sum is ``md5``. Looked up when called, so
    that tests can put a local copy in place of the network."""
    from torchvision.datasets import utils

    utils.download_url(url, str(path.parent), path.name, md5)


def torchvision_failure(title: str, data_dir: Path, download: bool, error: Exception) -> PipelineError:
    """A failed torchvision download (``download``) or missing files, and the ways out."""
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


def fetch_missing(title: str, files: TorchvisionFiles, data_dir: Path) -> None:
    """Download (--download) the compressed files whose decompressed files are missing: each
    gzipped file whose file is missing, the archive when any of its files is. Decompressing them
    is left to ``files_in_place``, bounded, so torchvision, which would extract them without a
    bound, finds its files in place and extracts nothing. A download that fails from every
    address is one error, as the loader's for a failed torchvision download.

    Not exercised against the real servers here (the machines this was written on have no
    network): tests put a local file in place of torchvision's ``download_url``."""
    for item in files.downloads:
        if files.gzipped:
            needed = not (files.folder / item.path.name.removesuffix(".gz")).is_file()
        else:
            needed = bool(files.missing())
        if not needed:
            continue
        errors: list[tuple[str, Exception]] = []
        for url in item.urls:
            try:
                _download_url(url, item.path, item.md5)
                break
            except Exception as error:  # noqa: BLE001 - URLError, HTTPError, RuntimeError (MD5), OSError, ...
                errors.append((url, error))
        else:
            error = errors[0][1] if len(errors) == 1 else RuntimeError("; ".join(
                f"from {url}: {type(e).__name__}: {e}" for url, e in errors))
            raise torchvision_failure(title, data_dir, True, error) from None


def files_in_place(title: str, files: TorchvisionFiles, data_dir: Path, download: bool) -> None:
    """Decompress or unpack what was copied compressed (no network needed), or, with --download,
    what ``fetch_missing`` downloads; without --download, refuse missing files naming the folder
    and the files torchvision reads."""
    if download:
        fetch_missing(title, files, data_dir)
    for name in files.missing() if files.gzipped else ():
        if (files.folder / f"{name}.gz").is_file():
            _gunzip(files.folder / f"{name}.gz", files.folder / name)
    if files.archive is not None and files.missing() and files.archive.is_file():
        _unpack(files.archive, files.folder)
    missing = files.missing()
    if missing and not download:
        raise PipelineError(
            f"{title} was not found in {data_dir} and downloading is off: torchvision reads {files.describe()}; "
            f"missing: {', '.join(missing)}.{_found_elsewhere(files, data_dir)} Either run with network access "
            f"and --download true, or put those files there (for example copied from a machine that has "
            f"downloaded them), or lay the images out as train/<class>/* and test/<class>/* and use "
            f"--dataset imagefolder --data-dir <that folder>."
        )


def unreadable(title: str, files: TorchvisionFiles, error: Exception) -> PipelineError:
    """The error for files that are in place but that torchvision cannot read."""
    return PipelineError(
        f"{title}'s files in {files.folder} could not be read ({type(error).__name__}: {error}). They may be "
        f"truncated or damaged (torchvision checks the MD5 sums of CIFAR's and SVHN's): copy them into "
        f"--data-dir again, or remove them and run with --download true; or lay the images out as "
        f"train/<class>/* and test/<class>/* and use --dataset imagefolder --data-dir <that folder>."
    )
