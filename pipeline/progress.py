"""What long work prints: the verbosity (-q/-v) and progress (a bar on a terminal, a line every
30 s in logs, nothing on Dask workers). Below every layer, heads included: a head reports its
epochs with ``detail`` and ``progress`` and knows nothing of the command line."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

import click
from tqdm.auto import tqdm

from pipeline.errors import PipelineError

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
