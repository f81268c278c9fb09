"""The backbone loop shared by extraction, augmented views and scoring new images, and what
the two cache writers share around it (background chunk writes, errors that say how to resume).
"""

from __future__ import annotations

import errno
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import PipelineError
from pipeline.extract.preprocess import Preprocessing


class PreprocessedBatches(torch.utils.data.Dataset):
    """Yields whole preprocessed batches, so DataLoader workers do the decoding and resizing."""

    def __init__(self, images, batches: list[list[int]], preprocessing: Preprocessing) -> None:
        self.images, self.batches, self.preprocessing = images, batches, preprocessing

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.preprocessing([self.images[i] for i in self.batches[index]])


PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run_backbone(model: torch.nn.Module, batch: torch.Tensor, maps: dict[str, dict], device: torch.device,
                 autocast) -> dict[str, np.ndarray]:
    """One forward pass as every cache stores it: ``features`` (pooled, float32) and each
    ``maps/<name>`` average-pooled to its ``grid`` (float32; the store rounds to its dtype)."""
    with torch.inference_mode(), autocast:
        out = model(batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last), tuple(maps))
    result = {"features": out["pooled"].float().cpu().numpy()}
    for name, info in maps.items():
        result[f"maps/{name}"] = F.adaptive_avg_pool2d(out[name].float(), info["grid"]).cpu().numpy()
    return result


class ChunkWriter:
    """Writes chunks in a background thread, one at a time, while the next batches compute.

    Compression and file writes release the GIL, so they overlap with the forward pass. At
    most one chunk waits, which bounds memory; an error in a write is raised in the caller.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-writer")
        self._pending: Future | None = None

    def submit(self, fn, *args) -> None:
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> "ChunkWriter":
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.wait()
            elif self._pending is not None:
                # Let an in-flight write finish: it is recorded only when complete.
                self._pending.exception()
        finally:
            self._pool.shutdown(wait=True)


@contextmanager
def user_facing_errors(out: Path) -> Iterator[None]:
    """A full disk or Ctrl-C ends the run with what to do next, not a traceback."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise PipelineError(f"the disk holding {out} is full ({error}). The chunks finished so far are kept "
                            f"and the cache is not marked complete: free some space and run the same "
                            f"command again to resume.") from error
    except KeyboardInterrupt:
        raise PipelineError(f"interrupted. The chunks finished so far are kept in {out}; run the same command "
                            f"again to resume.") from None
