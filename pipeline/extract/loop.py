"""The one backbone loop, used by extraction, augmented views and scoring new images, and what
the two cache writers share around it (batches cut at chunk ends, chunks gathered and written
in the background, errors that say how to resume).

Every feature this project computes goes through ``backbone_batches``, so a head scoring new
images sees features computed exactly as its training cache's were: the same engine, compute
precision, memory layout, map pooling and batching machinery.
"""

from __future__ import annotations

import errno
import os
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pipeline.progress import progress
from pipeline.errors import PipelineError
from pipeline.extract.datasets import UnreadableImageError
from pipeline.extract.preprocess import Preprocessing

# Compute precision of the forward pass -> autocast dtype (None: plain float32, no autocast; int8:
# ONNX Runtime only, a statically quantised model, pipeline/extract/quantise.py).
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "int8": torch.int8}
# What the onnxruntime engine runs (float32 export, or the int8 quantised one).
ONNX_PRECISIONS = ("float32", "int8")
# What runs the forward pass: PyTorch (eager), or the same modules exported to ONNX and run by
# ONNX Runtime's CPU execution provider (float32; 3.5x eager PyTorch for EfficientNet-Lite0 on
# a 2-core AVX-512 CPU, features within 2e-6 relative: benchmarks/extraction_engines.py).
ENGINES = ("torch", "onnxruntime")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16: recent AMD EPYC
    and Intel Xeon). Without it oneDNN emulates bfloat16, slower than float32. Linux's
    /proc/cpuinfo is read; elsewhere the answer is no."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bfloat16 where it is native (a CPU with BF16 instructions, a GPU that supports
    it), else float32; any other name as it is (checked)."""
    if precision != "auto":
        check_precision(precision)
        return precision
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device.type == "cpu" and cpu_has_native_bf16() else "float32"


class PreprocessedBatches(Dataset):
    """Item i is the preprocessed batch of ``images[j] for j in batches[i]``, so that DataLoader
    workers do the decoding and resizing while the backbone runs; or, when one of those images
    cannot be decoded, its ``UnreadableImageError``, returned for ``backbone_batches`` to raise."""

    def __init__(self, images: Sequence, batches: Sequence[Sequence[int]], preprocessing: Preprocessing) -> None:
        self.images, self.batches, self.preprocessing = images, batches, preprocessing

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> torch.Tensor | UnreadableImageError:
        try:
            images = [self.images[i] for i in self.batches[index]]
        except UnreadableImageError as unreadable:
            return unreadable  # raised in a worker, it would reach the main process only as text
        return self.preprocessing(images)


Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def resolve_engine(engine: str, device: torch.device, precision: str) -> str:
    """``auto`` -> onnxruntime for float32 on the CPU (when it is installed: 3.6x PyTorch end to
    end for EfficientNet-Lite0 here, the same features to 4e-6) and for int8 (which only it
    runs), else torch; any other name as it is (checked)."""
    if engine == "auto":
        if precision == "int8":  # ONNX Runtime only (refused off the CPU by check_engine)
            check_engine("onnxruntime", device, precision)
            return "onnxruntime"
        if device.type != "cpu" or precision not in ONNX_PRECISIONS:
            return "torch"
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            return "torch"
        return "onnxruntime"
    check_engine(engine, device, precision)
    return engine


def check_engine(engine: str, device: torch.device, precision: str) -> None:
    if engine not in ENGINES:
        raise PipelineError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}.")
    if engine == "onnxruntime" and (device.type != "cpu" or precision not in ONNX_PRECISIONS):
        raise PipelineError(f"--engine onnxruntime runs float32 on the CPU, or int8 (asked: {precision} on {device}); "
                            f"use --engine torch for a GPU or another precision.")
    if precision == "int8" and (engine != "onnxruntime" or device.type != "cpu"):
        raise PipelineError(f"--precision int8 runs on the CPU with --engine onnxruntime (asked: --engine {engine} on "
                            f"{device}); use --engine onnxruntime --device cpu, or another precision.")


def torch_forward(model: torch.nn.Module, names: tuple[str, ...], device: torch.device, precision: str) -> Forward:
    """``model(batch, names)`` in channels-last layout, under autocast unless float32."""
    # Mixed precision runs the convolutions in 16 bits; the features come out float32.
    autocast = torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "float32")
    model = model.to(device, memory_format=torch.channels_last)

    def forward(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode(), autocast:
            return model(batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last), names)
    return forward


class OnnxForward:
    """``model(batch, names)`` exported to ONNX (at the first batch, which sets the image size;
    the batch axis stays free) and run by ONNX Runtime on the CPU, as many threads as torch.
    With ``path``, the ONNX model there instead (the int8 one, ``pipeline.extract.quantise``,
    which returns every stage: ``names`` are fetched from it)."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...], path: str | Path | None = None) -> None:
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
            import onnxruntime
        except ImportError as error:
            raise PipelineError("--engine onnxruntime needs ONNX Runtime and onnx (pip install onnxruntime onnx; "
                                "both are dependencies of this project).") from error
        self.runtime, self.model, self.names, self.session = onnxruntime, model, names, None
        if path is not None:
            self.session = self._session(_only_outputs(str(path), ["pooled", *names]))

    def _session(self, model: str | bytes):
        options = self.runtime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        return self.runtime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def _export(self, batch: torch.Tensor) -> None:
        import tempfile

        from pipeline.extract.quantise import export_onnx

        with tempfile.TemporaryDirectory(prefix="ffad-onnx-") as folder:
            path = str(Path(folder) / "backbone.onnx")
            export_onnx(self.model, self.names, int(batch.shape[-1]), path)
            self.session = self._session(path)

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = batch.float().contiguous()
        if self.session is None:
            self._export(batch)
        outputs = ["pooled", *self.names]
        values = self.session.run(outputs, {"images": batch.numpy()})
        return {name: torch.from_numpy(value) for name, value in zip(outputs, values)}


def _only_outputs(path: str, outputs: Sequence[str]) -> bytes:
    """The ONNX model at ``path`` with only these graph outputs: the others' nodes are left out
    and the convolutions that fed them fuse with their quantisation (about 10% faster for the
    int8 EfficientNet-Lite0, the same numbers: tests/test_int8.py)."""
    import onnx

    model = onnx.load(path)
    kept = [output for output in model.graph.output if output.name in outputs]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    return model.SerializeToString()


def engine_version(engine: str) -> str:
    """What the cache records of the engine beside its name (its numbers are the engine's)."""
    if engine == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    return torch.__version__


def run_backbone(forward: Forward, batch: torch.Tensor, maps: Mapping[str, Mapping],
                 full_maps: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """One forward pass as every cache stores it: ``features`` (pooled, float32), each
    ``maps/<name>`` average-pooled to its ``grid`` (float32; the store rounds to its dtype) and,
    for each stage of ``full_maps``, ``trunk/<stage>``, its map at full resolution in float16."""
    out = forward(batch)
    result = {"features": out["pooled"].float().cpu().numpy()}
    for name, info in maps.items():
        result[f"maps/{name}"] = F.adaptive_avg_pool2d(out[name].float(), info["grid"]).cpu().numpy()
    for name in full_maps:
        # Rounded here, as the store would (round to nearest even), so a chunk waiting to be
        # written holds half the bytes: full-resolution maps are the largest arrays by far.
        result[f"trunk/{name}"] = out[name].to(torch.float16).cpu().numpy()
    return result


def backbone_batches(model: torch.nn.Module, inputs: Dataset, batch_rows: Sequence[Sequence[int]],
                     maps: Mapping[str, Mapping], device: torch.device, *, precision: str = "float32",
                     engine: str = "torch", workers: int = 0, desc: str = "extract", images_per_row: int = 1,
                     full_maps: Sequence[str] = (), int8: Mapping | None = None
                     ) -> Iterator[tuple[Sequence[int], dict[str, np.ndarray]]]:
    """Run ``model`` over every batch of ``inputs`` and yield, in order, ``(rows, outputs)``:
    the rows ``batch_rows[i]`` that item i of ``inputs`` holds, and ``run_backbone``'s outputs.

    ``workers`` DataLoader processes prepare the next batches (four each in flight) while the
    backbone runs: with ``engine`` torch in channels-last layout, under autocast when
    ``precision`` is not float32; with onnxruntime exported to ONNX (float32, CPU). Both are
    recorded in the cache, since they change the numbers slightly. The progress bar counts
    ``images_per_row`` images per row (the augmented views run several copies of each image).
    ``full_maps``: stages whose full-resolution maps are also returned (``run_backbone``).
    ``int8``: with ``precision`` int8, the record of the quantised model (the cache's
    ``features.int8``, ``pipeline.extract.quantise``), found in the model store by it.

    An item of ``inputs`` that is an ``UnreadableImageError`` (an image that could not be
    decoded) is raised, after every batch before it has been yielded.
    """
    check_precision(precision)
    check_engine(engine, device, precision)
    names = tuple(dict.fromkeys((*maps, *full_maps)))
    if engine == "torch":
        forward = torch_forward(model, names, device, precision)
    elif precision == "int8":
        from pipeline.extract.quantise import find_int8_model

        if not int8:
            raise PipelineError("int8 features are computed by a quantised model, and none is recorded here: the "
                                "cache was not made by an int8 extraction of this version.")
        forward = OnnxForward(model, names, find_int8_model(int8))
    else:
        forward = OnnxForward(model, names)
    loader = DataLoader(inputs, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    total = sum(len(rows) for rows in batch_rows) * images_per_row
    unreadable = None
    with progress(total=total, desc=desc, unit="img") as bar:
        for rows, batch in zip(batch_rows, loader):
            if isinstance(batch, UnreadableImageError):
                unreadable = batch
                break  # out of the loop first, which stops the loader's workers
            outputs = run_backbone(forward, batch, maps, full_maps)
            bar.update(len(rows) * images_per_row)
            yield rows, outputs
    if unreadable is not None:
        raise unreadable


def chunk_batches(chunk_slices: Sequence[slice], chunks: Iterable[int], batch_size: int,
                  rows: Sequence[int] | None = None) -> list[tuple[int, list[int], bool]]:
    """``(chunk, batch rows, last batch of its chunk)`` for batches of at most ``batch_size``
    rows that never straddle a chunk, so each chunk is written as soon as it is full.

    Row ``i`` of a store holds ``rows[i]`` of the dataset (all rows in order when None). A
    chunk's batches are the same whichever chunks are asked for, so a resumed or sharded run
    computes every chunk from the same batches as a single run.
    """
    plan = []
    for chunk in chunks:
        span = chunk_slices[chunk]
        chunk_rows = list(range(span.start, span.stop)) if rows is None else [int(r) for r in rows[span]]
        for start in range(0, len(chunk_rows), batch_size):
            plan.append((chunk, chunk_rows[start:start + batch_size], start + batch_size >= len(chunk_rows)))
    return plan


class ChunkBuffer:
    """Batches' arrays gathered until their chunk is full, then taken as one array per name."""

    def __init__(self) -> None:
        self._parts: dict[str, list[np.ndarray]] = {}

    def add(self, values: Mapping[str, np.ndarray]) -> None:
        for name, array in values.items():
            self._parts.setdefault(name, []).append(array)

    def take(self) -> dict[str, np.ndarray]:
        taken = {name: np.concatenate(parts) for name, parts in self._parts.items()}
        self._parts = {}
        return taken


class ChunkWriter:
    """Writes chunks in a background thread, one at a time, while the next batches compute.

    Compression and file writes release the GIL, so they overlap with the forward pass. At
    most one chunk waits, which bounds memory; an error in a write is raised in the caller.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-writer")
        self._pending: Future | None = None

    def submit(self, fn: Callable[..., object], *args: object) -> None:
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
def user_facing_errors(out: Path, root: Path | None = None) -> Iterator[None]:
    """A full disk, Ctrl-C or an image file that cannot be decoded (named relative to the
    dataset's ``root``) ends the run with what to do next, not a traceback. The chunks written
    before are kept: ``ChunkWriter`` finishes the one in flight, and records it, on the way out."""
    try:
        yield
    except UnreadableImageError as unreadable:
        path = os.path.relpath(unreadable.path, root) if root is not None else unreadable.path
        raise PipelineError(
            f"cannot read the image file {path} ({unreadable.reason}). The chunks finished before it are kept in "
            f"{out} (not marked complete): the same command resumes there, and stops at this file again while it "
            f"is unreadable. Replace or remove the file, or pass --skip-bad to leave unreadable files out (listed "
            f"in the cache metadata); either changes the dataset, so add --overwrite to make the cache again."
        ) from None
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise PipelineError(f"the disk holding {out} is full ({error}). The chunks finished so far are kept "
                            f"and the cache is not marked complete: free some space and run the same "
                            f"command again to resume.") from error
    except KeyboardInterrupt:
        raise PipelineError(f"interrupted. The chunks finished so far are kept in {out}; run the same command "
                            f"again to resume.") from None
