"""Helpers shared by the commands: devices, progress and verbosity, reading and writing results."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

import click
from tqdm.auto import tqdm

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> "torch.device":
    import torch  # here, so that commands answer --help without loading torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise PipelineError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:<index>.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"device {name} was asked for but this machine has no usable CUDA GPU; use --device cpu.")
    return device


# --- verbosity ------------------------------------------------------------------------------

QUIET, NORMAL, VERBOSE = -1, 0, 1
_verbosity = NORMAL


def verbosity() -> int:
    """QUIET (-1, --quiet), NORMAL (0) or VERBOSE and above (1, 2, ... : -v, -vv)."""
    return _verbosity


def set_verbosity(level: int) -> None:
    global _verbosity
    _verbosity = int(level)


def is_quiet() -> bool:
    return _verbosity <= QUIET


def is_verbose() -> bool:
    return _verbosity >= VERBOSE


def info(message: str) -> None:
    """A line of intermediate results on stdout, left out with --quiet (the final lines are
    printed with ``click.echo`` whatever the verbosity)."""
    if not is_quiet():
        click.echo(message)


def detail(message: str) -> None:
    """A line on stderr with -v only (per-epoch losses, resolved settings); written so that a
    progress bar on the terminal is redrawn below it."""
    if is_verbose():
        tqdm.write(message, file=sys.stderr)
        sys.stderr.flush()


_STATE = "ffad.verbosity"


def _verbosity_callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Both options feed one state kept on the outermost context, so ``-v`` given to a group
    (``python -m pipeline.report -v build``) is not undone by its subcommand's default; the
    level in force before the command is restored when it ends."""
    root = ctx.find_root()
    state = root.meta.get(_STATE)
    if state is None:
        state = root.meta[_STATE] = {"quiet": False, "verbose": 0}
        root.call_on_close(functools.partial(set_verbosity, _verbosity))
    if param.name == "quiet":
        state["quiet"] = state["quiet"] or bool(value)
    else:
        state["verbose"] = max(state["verbose"], int(value or 0))
    if state["quiet"] and state["verbose"]:
        raise click.UsageError("--quiet and --verbose contradict each other; give one of them.", ctx)
    set_verbosity(QUIET if state["quiet"] else state["verbose"])


def verbosity_options(command: Callable) -> Callable:
    """-q/--quiet (no progress output, only the final result lines) and -v/--verbose (also
    the resolved settings and per-epoch lines, on stderr). The options set the level that
    ``progress``, ``info`` and ``detail`` read; they are not passed to the command."""

    command = os_errors_as_messages(command)

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        if kwargs and is_verbose():
            ctx = click.get_current_context(silent=True)
            name = ctx.command_path if ctx is not None else command.__name__
            detail(f"{name} settings: " + ", ".join(f"{key}={value!r}" for key, value in kwargs.items()))
        return command(*args, **kwargs)

    run = click.option("-v", "--verbose", count=True, expose_value=False, is_eager=True,
                       callback=_verbosity_callback,
                       help="More detail on stderr: the resolved settings and, for heads trained by epochs, a "
                            "line per epoch (-vv: the same, for now).")(run)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, is_eager=True,
                        callback=_verbosity_callback,
                        help="No progress output; print only the final result lines (and errors).")(run)


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


def os_errors_as_messages(command: Callable) -> Callable:
    """Let a command end on an OSError (a read-only folder, a full disk, a path that is a file)
    with one ``Error:`` paragraph instead of a traceback; what the command checks itself is
    reported before any work, this is the net under everything else."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OSError as error:
            raise PipelineError(os_error_message(error)) from error

    return run


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


def check_outputs(files: dict | None = None, folders: dict | None = None, stores: dict | None = None) -> None:
    """Refuse, before any work, output paths that cannot be written, naming the option:
    ``files={"--metrics": path}``, ``folders={"--plots": path}``, ``stores={"--out": path}``
    (paths that are None are not given)."""
    for kind, paths in (("file", files), ("folder", folders), ("store", stores)):
        for option, path in (paths or {}).items():
            problem = None if path is None else output_problem(path, kind)
            if problem:
                raise PipelineError(f"{option} {path} {problem}; choose another path.")


# --- progress -------------------------------------------------------------------------------

DEFAULT_PROGRESS_INTERVAL = 30.0
OFF_WORDS = ("0", "off", "false", "no", "none")


def progress_interval() -> float:
    """Seconds between two plain progress lines: ``$FFAD_PROGRESS_INTERVAL``, else 30."""
    value = os.environ.get("FFAD_PROGRESS_INTERVAL", "").strip()
    if not value:
        return DEFAULT_PROGRESS_INTERVAL
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise PipelineError(f"FFAD_PROGRESS_INTERVAL={value!r}: give the seconds between two progress lines, "
                            f"a number >= 0 (default {DEFAULT_PROGRESS_INTERVAL:g}).")
    return seconds


def progress_mode(stream: TextIO | None = None) -> str:
    """How ``progress`` reports: "off", "bar" (tqdm) or "lines" (plain lines at a bounded rate).

    --quiet, a Dask worker (its output would garble the client's) or ``PIPELINE_PROGRESS=0``:
    off. ``PIPELINE_PROGRESS=1`` (or ``bar``): a tqdm bar even into a file; ``lines``: plain
    lines even on a terminal; ``auto`` (the default): a bar on a terminal, lines otherwise."""
    if is_quiet() or _in_dask_worker():
        return "off"
    setting = os.environ.get("PIPELINE_PROGRESS", "auto").strip().lower()
    if setting in OFF_WORDS:
        return "off"
    if setting == "lines":
        return "lines"
    if setting not in ("auto", ""):
        return "bar"
    return "bar" if _is_terminal(stream if stream is not None else sys.stderr) else "lines"


def progress(**kwargs: Any) -> "tqdm | LineProgress":
    """Progress on stderr, used as ``with progress(total=n, desc=..., unit=...) as bar:`` with
    ``bar.update(k)`` and ``bar.set_postfix_str(text)``: a tqdm bar on a terminal; plain lines
    (``LineProgress``) when stderr is a file or a pipe (SLURM, ``dvc repro > log``); nothing
    with --quiet. See ``progress_mode`` for PIPELINE_PROGRESS."""
    mode = progress_mode()
    if mode == "off":
        return tqdm(disable=True, **kwargs)
    if mode == "bar":
        return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)
    return LineProgress(interval=progress_interval(), **kwargs)


class LineProgress:
    """tqdm's interface (update, set_postfix_str, close, a context manager) printing one plain
    line at most every ``interval`` seconds, and one when it closes::

        extract resnet50: 1200/10000 (12%), 45.3 img/s, elapsed 0:00:26, ETA 0:03:14

    A line is due on ``update`` or ``set_postfix_str`` (so a slow run's epochs keep the log
    alive). A bar made with ``leave=False`` (a step inside another bar) prints its closing
    line only if it printed before, so short inner bars add nothing to a log."""

    def __init__(self, total: float | None = None, desc: str | None = None, unit: str = "it",
                 interval: float = DEFAULT_PROGRESS_INTERVAL, file: TextIO | None = None, leave: bool | None = True,
                 initial: float = 0, **ignored: Any) -> None:
        self.total, self.desc, self.unit, self.interval, self.leave = total, desc, unit, interval, leave
        self.file = file if file is not None else sys.stderr
        self.n = initial
        self.postfix = ""
        self.start_t = self._last_t = self._now()
        self._printed = self._closed = False
        self._shown: tuple | None = None  # (n, postfix) of the last line, so the closing one is not a repeat

    def update(self, n: float = 1) -> None:
        self.n += n
        self._maybe_print()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)
        self._maybe_print()

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if (self.leave or self._printed) and self._shown != (self.n, self.postfix):
            self._print(self._now())

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    def _maybe_print(self) -> None:
        now = self._now()
        if not self._closed and now - self._last_t >= self.interval:
            self._print(now)

    def _print(self, now: float) -> None:
        self._last_t, self._printed, self._shown = now, True, (self.n, self.postfix)
        try:
            self.file.write(self.line(now) + "\n")
            self.file.flush()
        except (OSError, ValueError):  # a closed or broken log must not end the run
            pass

    def line(self, now: float | None = None) -> str:
        elapsed = (self._now() if now is None else now) - self.start_t
        done = _number(self.n)
        if self.total:
            counted = f"{done}/{_number(self.total)} ({100 * self.n / self.total:.0f}%)"
        else:
            counted = f"{done} {self.unit}"
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if rate <= 0:
            speed = f"? {self.unit}/s"
        elif rate >= 1:
            speed = f"{rate:.0f} {self.unit}/s" if rate >= 100 else f"{rate:.1f} {self.unit}/s"
        else:
            speed = f"{1 / rate:.3g} s/{self.unit}"
        parts = [counted, speed, f"elapsed {_clock(elapsed)}"]
        if self.total:
            left = max(self.total - self.n, 0)
            parts.append(f"ETA {_clock(left / rate) if rate > 0 else '?'}")
        text = f"{self.desc or 'progress'}: {', '.join(parts)}"
        return f"{text} [{self.postfix}]" if self.postfix else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _in_dask_worker() -> bool:
    """Whether this code runs as a job on a Dask worker (checked without importing Dask)."""
    worker = sys.modules.get("distributed.worker")
    if worker is None:
        return False
    try:
        worker.get_worker()
    except (ValueError, AttributeError):
        return False
    return True


def write_text(path: str | Path, text: str) -> None:
    """Write a file atomically, so an interrupted run never leaves half a results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def parse_expectations(items: tuple[str, ...] | list[str]) -> dict:
    """``("backbone.name=resnet50", "preprocessing.image_size=224")`` -> nested dict.

    Values are read as YAML scalars, so numbers compare as numbers.
    """
    import yaml

    expected: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        parts = [part.strip() for part in key.split(".")]
        if "=" not in item or not all(parts):
            raise PipelineError(f"--expect takes KEY=VALUE with a dotted key such as backbone.name=resnet50, got {item!r}.")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as error:
            reason = str(error).splitlines()[0]
            raise PipelineError(f"--expect {item!r}: the value is not a YAML scalar ({reason}); quote it, "
                                f"e.g. {key}='{value}'.") from None
        node = expected
        for part in parts[:-1]:
            if not isinstance(node.setdefault(part, {}), dict):
                raise PipelineError(f"--expect {item!r} contradicts another --expect that gives {part} a value.")
            node = node[part]
        if isinstance(node.get(parts[-1]), dict):
            raise PipelineError(f"--expect {item!r} contradicts another --expect that names keys under {key}.")
        node[parts[-1]] = parsed
    return expected


def cache_label(metadata: dict) -> dict:
    """The labels every reported figure carries: dataset, backbone, image size, preprocessing."""
    prep = metadata.get("preprocessing", {})
    dataset = metadata.get("dataset", {})
    name = dataset.get("name")
    if name in ("imagefolder", "anomaly_folder") and dataset.get("folder"):
        name = f"{name}:{dataset['folder']}"
    return {
        "dataset": name,
        "backbone": metadata.get("backbone", {}).get("name"),
        "image_size": prep.get("image_size"),
        "preprocessing": f"{prep.get('resize')}/{prep.get('interpolation')}/{prep.get('normalisation')}",
    }


def safe_filename(name: str, suffix: str = "") -> str:
    """A file name made from data (a class name from a folder or an HDF5 file): letters,
    digits, '.', '_' and '-' only, so it cannot leave its folder. Where anything had to change,
    a short hash of the original name follows, so two names never share a file (``good part``
    and ``good_part``)."""
    name = str(name)
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip(".")[:100] or "_"
    if cleaned != name:
        cleaned += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return cleaned + suffix
