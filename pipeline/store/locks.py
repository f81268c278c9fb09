"""Locks on a feature store: the writer lock held by an extraction (or by each shard of one), and
the short lock around every read-modify-write of a store's attributes."""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.errors import PipelineError


@contextmanager
def writer_lock(path: str | Path, shard: tuple[int, int] | None = None) -> Iterator[None]:
    """Hold a lock on ``<path>.lock`` while writing a cache.

    A whole extraction holds it exclusively. Shards of a sharded extraction (``shard`` =
    (index, count)) hold it shared, so they run together but never beside a whole
    extraction, and each also holds ``<path>.shard-<index>-of-<count>.lock`` exclusively, so
    one shard is never run twice at once. POSIX record locks (lockf) are released by the
    kernel when the holder dies, even by SIGKILL, and, unlike flock locks, are not inherited
    by forked DataLoader workers, which could otherwise keep a killed run's lock alive.
    """
    with ExitStack() as stack:
        if shard is None:
            stack.enter_context(_lock_file(Path(str(path) + ".lock"), exclusive=True, path=path))
        else:
            stack.enter_context(_lock_file(Path(str(path) + ".lock"), exclusive=False, path=path))
            stack.enter_context(_lock_file(Path(f"{path}.shard-{shard[0]}-of-{shard[1]}.lock"), exclusive=True,
                                           path=path, what=f"shard {shard[0]}/{shard[1]} of "))
        yield


@contextmanager
def _lock_file(lock_path: Path, exclusive: bool, path: str | Path, what: str = "") -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.lockf(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError:  # EAGAIN or EACCES: held by another process
            handle.seek(0)
            holder = handle.read().strip() or "another process (a sharded extraction, if run with --shard)"
            raise PipelineError(f"{what}{path} is being written by {holder}. Two extractions must not write "
                                f"one cache (except shards of one sharded extraction, each with its own "
                                f"--shard I/N); wait for that one to finish (or stop it) and run again.") from None
        if exclusive:  # a shared holder must not overwrite the others' note
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
        try:
            yield
        finally:
            if exclusive:
                handle.seek(0)
                handle.truncate()
            fcntl.lockf(handle, fcntl.LOCK_UN)


# Updates of a store's attributes (the chunk records, ``complete``) are read-modify-write of
# one zarr.json. Shards of a sharded extraction write one store at once, each in its own
# process, so every update re-reads the attributes and writes them back under a short
# exclusive lock on ``<cache>.attrs.lock``: no process can lose another's chunk records.
# (lockf locks belong to a process, so threads of one process are kept apart by a
# threading lock as well; and it is a file of its own, since closing any descriptor of a
# file drops the process's lockf locks on it, which would drop the writer lock.)
_attrs_thread_lock = threading.Lock()


@contextmanager
def attrs_lock(path: str | Path) -> Iterator[None]:
    """Held around every read-modify-write of a store's attributes (short: one zarr.json write)."""
    lock_path = Path(str(path) + ".attrs.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with _attrs_thread_lock, open(lock_path, "a+") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)  # blocking: holders keep it for milliseconds
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)
