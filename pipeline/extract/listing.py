"""Which files of a folder are images: one rule for extraction (an image folder's class folders)
and for scoring (``stages.score --images``). Torch-free, so it can be imported anywhere.

Links to files are followed (an image folder of links to images elsewhere is fine); links to
folders never are, since a link back up (``train/a/up -> ..``) would list the same images again,
under the wrong class, without end. A link that cannot be followed (broken, looping, or to a
folder), a folder that cannot be read and an image name that is not a plain file are not left
out silently: they are returned as refused entries with the reason, to be reported like an image
that cannot be decoded (refused, or left out and recorded with --skip-bad).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Callable

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def folder_link_reason(path: str | Path) -> str:
    """Why the link to a folder at ``path`` is not followed."""
    path = str(path)
    target = os.path.realpath(path)
    holder = os.path.realpath(os.path.dirname(path))
    if holder == target or holder.startswith(target.rstrip(os.sep) + os.sep):
        return (f"a link to {os.readlink(path)}, a folder holding it, which would loop; links to folders are "
                f"never followed")
    return f"a link to the folder {os.readlink(path)}; links to folders are never followed, link the files instead"


def file_problem(path: str | Path) -> str | None:
    """Why the entry at ``path`` (listed as a file, a link followed) is not a readable plain file, or None."""
    try:
        info = os.stat(path)  # follows links
    except OSError as error:
        if os.path.islink(path):
            if error.errno == errno.ENOENT:
                return f"a broken link: its target {os.readlink(path)} does not exist"
            if error.errno == errno.ELOOP:
                return f"a link that loops back to itself through {os.readlink(path)}"
        return f"cannot be opened ({error.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return folder_link_reason(path) if os.path.islink(path) else "a folder"
    if not stat.S_ISREG(info.st_mode):
        return "not a plain file (a pipe, socket or device)"
    return None


def list_images(folder: str | Path,
                skip: Callable[[str], bool] | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files under ``folder``, recursively, and the entries refused (path, reason).

    In torchvision's ``make_dataset`` order (folders by path, the files of each by name), so an
    image folder lists exactly as it did when torchvision listed it. Files are recognised by
    their extension (``IMAGE_EXTENSIONS``, any case); every link to a folder is refused, whatever
    its name, and so is every folder that cannot be read. ``skip``: subfolders, by name, that
    are not listed at all, at any depth (an anomaly folder's masks, ``ground_truth/``).
    """
    files: list[str] = []
    refused: list[tuple[str, str]] = []

    def unreadable(error: OSError) -> None:
        refused.append((str(error.filename), f"a folder that cannot be read ({error.strerror})"))

    walked = []
    for root, folders, names in os.walk(folder, onerror=unreadable, followlinks=False):
        if skip is not None:
            folders[:] = [name for name in folders if not skip(name)]  # not walked into
        walked.append((root, folders, names))
    for root, folders, names in sorted(walked):
        for name in sorted(folders):
            path = os.path.join(root, name)
            if os.path.islink(path):  # listed as a folder: it leads to one
                refused.append((path, folder_link_reason(path)))
        for name in sorted(names):
            if not is_image_name(name):
                continue
            path = os.path.join(root, name)
            problem = file_problem(path)
            if problem:
                refused.append((path, problem))
            else:
                files.append(path)
    return files, sorted(refused)


# --- class names from folder names ------------------------------------------------------------

# Files a file manager leaves in every folder: never worth a note.
SYSTEM_FILES = ("thumbs.db", "desktop.ini")


def loose_files(folder: str | Path) -> tuple[list[tuple[str, str]], list[str]]:
    """The files lying directly in a split folder (``train/``, ``test/``), outside every class
    folder: the image files as refused entries (path, reason), with no class to label them they
    are reported like unreadable images (refused, or left out and recorded with --skip-bad),
    never dropped silently; and the names of the other files (notes, a README), left out as in
    class folders but named in a note (hidden files and Thumbs.db, desktop.ini are not)."""
    folder = Path(folder)
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return [], []  # the caller reports a split folder it cannot read
    files = [entry for entry in entries if not entry.is_dir()]
    where = folder.name
    reason = (f"an image lying directly in {where}/, outside every class folder, so it has no class; move it into "
              f"{where}/<class>/")
    images = [(entry.path, reason) for entry in files if is_image_name(entry.name)]
    others = [entry.name for entry in files if not is_image_name(entry.name) and not entry.name.startswith(".")
              and entry.name.lower() not in SYSTEM_FILES]
    return images, others
