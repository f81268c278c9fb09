"""Run many small head trainings on a Dask cluster: the ``--scheduler`` option of the head stages.

    absent, empty, none run in this process, exactly as without Dask
    local:N             start a LocalCluster of N worker processes on this machine
    HOST:PORT           connect to a running Dask scheduler (tcp://, tls://, ... prefixes allowed)
    FILE.json           connect to the scheduler described by a scheduler file
                        (``dask scheduler --scheduler-file FILE.json``, convenient on SLURM)

A job is one (head, class, seed) unit. Jobs ship only small things (the cache path, the class,
the seed, a picklable head factory); every worker opens the feature cache itself, so the cache
must be on a filesystem that all workers see at the same path. Results come back in the order
the jobs were made, so the metrics files are laid out as in a serial run.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import click

from pipeline.errors import PipelineError

if TYPE_CHECKING:  # distributed is imported only when a scheduler is asked for (it is slow to import)
    from distributed import Client

_ADDRESS = re.compile(r"^(?:(?P<scheme>tcp|tls|ucx|ws|wss)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.\-]+)"
                      r":(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class SchedulerSpec:
    """A parsed ``--scheduler`` value: a local cluster of ``workers`` processes, an address
    of a running scheduler, or a scheduler file."""

    kind: str  # "local" | "address" | "file"
    workers: int = 0
    address: str = ""

    def describe(self) -> str:
        return {"local": f"a local Dask cluster of {self.workers} worker processes",
                "address": f"the Dask scheduler at {self.address}",
                "file": f"the Dask scheduler of {self.address}"}[self.kind]


def _bad(value: str, why: str) -> PipelineError:
    return PipelineError(f"--scheduler {value!r} is not understood: {why}. Give nothing or none (run in this "
                         f"process), local:N for a local cluster of N worker processes (e.g. local:2), the address of a "
                         f"running Dask scheduler (e.g. tcp://10.0.0.5:8786 or node12:8786), or the path of "
                         f"its scheduler file (ending in .json).")


def parse_scheduler(value: str | None) -> SchedulerSpec | None:
    """``None`` for in process; raises a one-paragraph PipelineError for a value it cannot use."""
    if value is None or not str(value).strip() or str(value).strip().lower() in ("none", "in-process"):
        return None
    text = str(value).strip()
    if text.lower().startswith("local"):
        count = text[len("local"):]
        if not count.startswith(":") or not count[1:].strip().isdigit():
            raise _bad(text, "local needs a number of worker processes after a colon")
        workers = int(count[1:])
        if not 1 <= workers <= 1024:
            raise _bad(text, f"the number of worker processes must be between 1 and 1024, not {workers}")
        return SchedulerSpec("local", workers=workers)
    if text.endswith(".json"):
        if not Path(text).is_file():
            raise PipelineError(f"--scheduler {text}: no scheduler file there. Start the scheduler with "
                                f"dask scheduler --scheduler-file {text} on storage this machine sees, or "
                                f"give its address instead.")
        return SchedulerSpec("file", address=text)
    match = _ADDRESS.match(text)
    if match is None:
        raise _bad(text, "it is neither local:N, HOST:PORT nor a .json scheduler file")
    if not 0 < int(match["port"]) < 65536:
        raise _bad(text, f"port {match['port']} is out of range")
    return SchedulerSpec("address", address=text if match["scheme"] else f"tcp://{text}")


def validate_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: check the value at parse time (so a typo fails before any work)."""
    parse_scheduler(value)
    return value or None


@contextmanager
def open_client(scheduler: str | SchedulerSpec | None) -> Iterator["Client | None"]:
    """A Dask Client for the ``--scheduler`` value, closed (and a local cluster shut down) on exit;
    ``None`` when the jobs are to run in this process."""
    spec = scheduler if isinstance(scheduler, SchedulerSpec) or scheduler is None else parse_scheduler(scheduler)
    if spec is None:
        yield None
        return
    import dask
    from distributed import Client, LocalCluster

    if spec.kind == "local":
        # One thread per worker process, and the cores split between the processes for torch and
        # BLAS: N processes each using every core would oversubscribe the machine N times.
        threads = str(max(1, (os.cpu_count() or 1) // spec.workers))
        # Starting the worker processes leaves their variables (OMP_NUM_THREADS=...) in this
        # process's environment, where later subprocesses would inherit them; put it back after.
        saved_environ = dict(os.environ)
        cluster = LocalCluster(n_workers=spec.workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR,
                               env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                                    "OPENBLAS_NUM_THREADS": threads})
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
            os.environ.clear()
            os.environ.update(saved_environ)
        return
    timeout = dask.config.get("distributed.comm.timeouts.connect")
    try:
        client = (Client(scheduler_file=spec.address, timeout=timeout) if spec.kind == "file"
                  else Client(spec.address, timeout=timeout))
    except (OSError, TimeoutError, ValueError) as error:
        raise PipelineError(f"cannot reach {spec.describe()} within {timeout} ({type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else 'no answer'}). Check that the "
                            f"scheduler is running and that this machine can reach its address and port "
                            f"(firewalls, the right network interface); give a longer wait with "
                            f"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=60s; or drop --scheduler to run in "
                            f"this process.") from None
    try:
        if not client.scheduler_info().get("workers"):
            # Jobs would wait forever; say so instead (workers may still be starting up).
            try:
                client.wait_for_workers(1, timeout=timeout)
            except (TimeoutError, OSError):
                raise PipelineError(f"{spec.describe()} has no workers. Start some with dask worker "
                                    f"{client.scheduler.address} on machines that see the cache path, "
                                    f"then run again.") from None
        yield client
    finally:
        client.close()


def map_jobs(client: "Client", fn: Callable[[Any], Any], jobs: Sequence[Any],
             on_done: Callable[[], None] | None = None) -> list[Any]:
    """Run ``fn(job)`` for every job on the cluster; results in the order of ``jobs``.

    ``pure=False`` because two jobs may be equal (the same class and seed asked twice) and must
    still each run. A job that fails raises its exception here, as it would in process.
    """
    from distributed import as_completed

    futures = client.map(fn, list(jobs), pure=False)
    try:
        for future in as_completed(futures):
            if future.status == "error":
                future.result()  # re-raises the worker's exception (a PipelineError stays one)
            if on_done is not None:
                on_done()
        return client.gather(futures)
    finally:
        for future in futures:
            future.cancel()
