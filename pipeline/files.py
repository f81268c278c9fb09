"""Files the commands write: checked before any work (``check_outputs``), written atomically
(``write_text``, ``write_json``), named safely from data (``safe_filename``)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

# --- what the file system refuses ---------------------------------------------------------------

def os_error_message(error: OSError) -> str:
    """One paragraph for an error of the file system (read-only, no permission, full, a file
    where a folder belongs): what was refused, where, and what to do."""
    where = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
    what = f"{error.strerror or error}{f': {where}' if where else ''}"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "Choose a place this user can write (or change its permissions) and run again."
    elif error.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "Free some space and run again."
    elif error.errno in (errno.ENOTDIR, errno.EEXIST):
        hint = "A file stands where a folder is needed: choose another path."
    elif error.errno == errno.EISDIR:
        hint = "A folder stands where a file is needed: choose another path."
    else:
        hint = "Check the path and run again."
    return f"{what}. {hint}"


def output_problem(path: str | Path, kind: str = "file") -> str | None:
    """Why ``path`` cannot be written as a ``kind`` ("file", "folder", or "store": a folder
    written together with files beside it), or None: a folder where a file is needed or the
    reverse, a file in the way of a folder to make, a read-only place."""
    path = Path(path)
    if os.path.lexists(path):
        if kind == "file" and path.is_dir():
            return "is a folder, not a file"
        if kind != "file" and not path.is_dir():
            return "is a file, not a folder"
    places = [path] if kind == "folder" or (kind == "store" and path.is_dir()) else []
    places += [path.parent] if kind != "folder" else []
    for place in places:
        probe = place
        while not os.path.lexists(probe) and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            return f"cannot be made: {probe} is {'a broken link' if probe.is_symlink() else 'a file'}, not a folder"
        if not os.access(probe, os.W_OK | os.X_OK):
            return f"cannot be written: {probe} is read-only (a read-only file system, or no permission)"
    return None


def check_outputs(files: dict | None = None, folders: dict | None = None, stores: dict | None = None,
                  inputs: dict | None = None) -> None:
    """Refuse, before any work, output paths that cannot be written, naming the option:
    ``files={"--metrics": path}``, ``folders={"--plots": path}``, ``stores={"--out": path}``
    (paths that are None are not given), and outputs that would land on what the command reads,
    ``inputs={"--cache": path, "--head": path}`` (a value may be a list of paths), on a feature
    cache or on the project's own files (``refuse_overlaps``)."""
    refuse_overlaps({**(files or {}), **(folders or {})}, inputs, stores=stores)
    for kind, paths in (("file", files), ("folder", folders), ("store", stores)):
        for option, path in (paths or {}).items():
            problem = None if path is None else output_problem(path, kind)
            if problem:
                raise PipelineError(f"{option} {path} {problem}; choose another path.")


# --- outputs never land on inputs ---------------------------------------------------------------

# The project's own files and folders (beside the package), never written by a command.
PROJECT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("params.yaml", "dvc.yaml", "dvc.lock", "pyproject.toml")
PROJECT_FOLDERS = {"pipeline": "source code", "stages": "source code", "tests": "tests", ".git": "git repository",
                   ".dvc": "DVC folder"}


def real_path(path: str | Path) -> Path:
    """``path`` absolute with every link and ``..`` resolved, also where its end does not exist
    yet (its existing part resolved, the rest appended)."""
    return Path(os.path.realpath(os.path.abspath(str(path))))


def feature_cache_around(path: Path, itself: bool = True) -> Path | None:
    """The outermost folder at or above ``path`` (``itself``: including it) that holds a
    zarr.json: a feature cache (or another Zarr store), or None."""
    found = None
    for folder in ([path] if itself else []) + list(path.parents):
        if (folder / "zarr.json").is_file():
            found = folder
    return found


def _linked_files(folder: Path) -> list[tuple[Path, Path]]:
    """(link, target) for each link to a file under ``folder`` (links to folders are never
    followed, as the image listing never follows them): files read from outside the folder."""
    found = []
    for parent, dirs, names in os.walk(folder, followlinks=False):
        for name in names:
            link = Path(parent) / name
            if link.is_symlink() and link.is_file():
                found.append((link, real_path(link)))
    return found


def _guarded(inputs: dict | None) -> list[tuple[Path, str]]:
    """What no output may be, lie inside or hold: (resolved path, words naming it)."""
    guarded = []
    for option, paths in (inputs or {}).items():
        for path in paths if isinstance(paths, (list, tuple)) else [paths]:
            if path is None or str(path) == "":
                continue
            real = real_path(path)
            guarded.append((real, f"{option} {path}, which this command reads"))
            if real.is_dir() and feature_cache_around(real) is None:
                guarded += [(target, f"{target}, which {option} {path} links to ({link}) and this command reads")
                            for link, target in _linked_files(real)]
    project = [(PROJECT / name, f"the project's {name}") for name in PROJECT_FILES]
    project += [(PROJECT / name, f"the project's {what} {PROJECT / name}") for name, what in PROJECT_FOLDERS.items()]
    # The parameters in use ($FFAD_PARAMS, else ./params.yaml: pipeline.params reads the same)
    # and the DVC pipeline being run, wherever the command runs.
    project.append((Path(os.environ.get("FFAD_PARAMS") or "params.yaml"), "the parameters file in use"))
    project += [(Path(name), f"the DVC pipeline's {name} in the working directory") for name in ("dvc.yaml", "dvc.lock")]
    guarded += [(real_path(path), what) for path, what in project if os.path.lexists(path)]
    return guarded


def _relation(output: Path, guarded: Path) -> str | None:
    if output == guarded:
        return "is"
    if guarded in output.parents:
        return "lies inside"
    if output in guarded.parents:
        return "holds"
    try:
        if os.path.samefile(output, guarded):
            return "is another name (a hard link) of"
    except OSError:
        pass
    return None


def refuse_overlaps(outputs: dict | None, inputs: dict | None = None, stores: dict | None = None) -> None:
    """Refuse, before anything is written, an output (``{option: path}``; ``stores``: feature
    caches the command makes or replaces) that is, lies inside or holds something the command
    reads (``inputs``: ``{option: path or [paths]}``; folders with the files they link to), that
    lies inside a feature cache (a folder with zarr.json, looked for up the path), or that is,
    lies inside or holds the project's own files (params.yaml, dvc.yaml, dvc.lock, the source
    code). Every path is resolved first: links, ``..``, and a path that does not exist yet."""
    guarded = _guarded(inputs)
    for option, path, store in ([(o, p, False) for o, p in (outputs or {}).items()]
                                + [(o, p, True) for o, p in (stores or {}).items()]):
        if path is None or str(path) == "":
            continue
        real = real_path(path)
        shown = f"{option} {path}" + ("" if str(real) == str(path) else f" (that is, {real})")
        for target, what in guarded:
            relation = _relation(real, target)
            if relation:
                raise PipelineError(f"{shown} {relation} {what}; an output never goes where it could replace what "
                                    f"the command reads or the project's own files. Choose another path for {option}.")
        # A store is itself a feature cache (the one it replaces): only one around it is refused.
        cache = feature_cache_around(real, itself=not store)
        if cache is not None:
            relation = "is" if cache == real else "lies inside"
            raise PipelineError(f"{shown} {relation} the feature cache {cache}; an output is never written into a "
                                f"feature cache (its zarr.json included). Choose another path for {option}.")



def write_text(path: str | Path, text: str) -> None:
    """Write a file atomically, so an interrupted run never leaves half a results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")



# File names made from data (``safe_filename``): a name already in this form is its own file name.
KEPT_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9._-]*[a-z0-9_-])?")
KEPT_LENGTH, READABLE_LENGTH, HASH_DIGITS = 100, 80, 16
# Names Windows keeps for devices, with any extension (con.json is the console there).
WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                             *(f"lpt{i}" for i in range(10))})


def is_kept_name(name: str) -> bool:
    """Whether ``safe_filename`` keeps ``name`` as it is: lower-case ASCII letters, digits, '_',
    '.' and '-' only, not starting with '.' or '-', not ending with '.', no '--' anywhere, at
    most 100 characters, and not a Windows device name (con, nul, com1, ...; any extension)."""
    return (len(name) <= KEPT_LENGTH and KEPT_NAME.fullmatch(name) is not None and "--" not in name
            and name.split(".")[0] not in WINDOWS_DEVICES)


def safe_filename(name: str, suffix: str = "") -> str:
    """A file name made from data (a class name from a folder or an HDF5 file, a dataset and
    backbone name): ASCII letters, digits, '.', '_' and '-' only, never '.', '..' or a hidden
    file, so it cannot leave its folder; then ``suffix``.

    One file per name, by construction (the mapping is injective, also where the file system
    ignores case):

    - a name in the kept form (``is_kept_name``: lower-case, plain, no '--') is its own file
      name, so the files of ordinary names (``roc_bottle.json``, ``cache/digits_..._224.zarr``)
      read as their names;
    - every other name becomes ``<readable>--<hash>``: the name with each run of other
      characters as '_' (at most 80 characters, '_' when nothing is left), then '--' and 16
      hex digits of the SHA-256 of the name's exact spelling (UTF-8).

    No kept name holds '--' and every changed one does, so a kept name never meets a changed
    one (a class literally named like another's file name, ``good_part--<hash>``, is itself
    changed, with its own hash); two changed names differ in their hash. Kept names have no
    capitals and the hash is of the exact spelling, so two names differing only in case
    (``Good``, ``good``) never share a file on a case-insensitive file system (macOS, Windows)
    either. Names are not Unicode-normalised here (two spellings are two names): class names
    are normalised (NFC) where they enter."""
    name = str(name)
    if is_kept_name(name):
        return name + suffix
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    readable = re.sub(r"-{2,}", "-", readable)[:READABLE_LENGTH].strip(".-") or "_"
    if readable.split(".")[0].lower() in WINDOWS_DEVICES:  # nul.txt--<hash> is still the device nul there
        readable = "_" + readable
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_DIGITS]
    return f"{readable}--{digest}{suffix}"
