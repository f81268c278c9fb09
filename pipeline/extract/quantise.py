"""int8 extraction (``--engine onnxruntime --precision int8``): the backbone exported to ONNX and
statically quantised with ONNX Runtime's own tools, calibrated on a seeded subset of the training
images of the dataset being extracted.

- Format: QDQ (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels:
  VNNI dot products on CPUs that have them); activations uint8 with one scale per tensor,
  weights int8 with one scale per output channel (symmetric), as ONNX Runtime recommends for
  x86-64 CNNs.
- Calibration: ``Calibration.images`` training images drawn with ``Calibration.seed``
  (``calibration_rows``), preprocessed as the extraction preprocesses them, through ONNX
  Runtime's ``MinMax`` calibrator (the range each activation takes on them).
- One graph per backbone, weights, image size, preprocessing and calibration: it returns the
  pooled feature and every stage's map, so an extraction, its augmented views and the scoring
  of new images with its heads read the same quantised model whatever maps they ask for.
- Made once and kept in the model store (``FFAD_MODEL_STORE``, default
  ``~/.cache/ffad/models``) under a name derived from everything that decides it
  (``int8_record``). The cache metadata records that name, the model's SHA-256 and the
  calibration (``features.int8``); views and scoring find the model there by it, and refuse
  another.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pipeline.errors import PipelineError

# Where quantised models are kept; overridden by FFAD_MODEL_STORE.
STORE_VARIABLE = "FFAD_MODEL_STORE"
# How the model is quantised (recorded as such in the cache).
QUANTISATION = {"format": "QDQ", "activations": "uint8, one scale per tensor",
                "weights": "int8, one scale per output channel (symmetric)"}
# Images per calibration batch. MinMax keeps only each batch's minimum and maximum of each tensor
# (ONNX Runtime 1.32's CalibMaxIntermediateOutputs drops batches instead of merging them: unused).
CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class Calibration:
    """What the activation ranges are measured on: ``images`` training images drawn with
    ``seed`` (all of them when the split is smaller), by ONNX Runtime's ``method``
    calibrator (MinMax: the range each activation takes on them)."""

    images: int = 256
    seed: int = 0
    method: str = "MinMax"

    def __post_init__(self) -> None:
        if self.images < 1:
            raise PipelineError(f"int8 calibration needs at least one image, got {self.images}.")
        if self.method not in ("MinMax", "Percentile", "Entropy"):
            raise PipelineError(f"unknown calibration method {self.method!r}; use MinMax, Percentile or Entropy.")


def calibration_rows(n_train: int, calibration: Calibration) -> np.ndarray:
    """The training rows the activations are calibrated on: ``calibration.images`` of the
    ``n_train`` drawn without replacement with its seed, in increasing order."""
    if n_train < 1:
        raise PipelineError("int8 calibration needs training images, and the training split is empty.")
    rng = np.random.default_rng(calibration.seed)
    return np.sort(rng.choice(n_train, size=min(calibration.images, n_train), replace=False))


def model_store() -> Path:
    """The folder holding quantised models: ``$FFAD_MODEL_STORE``, else ``~/.cache/ffad/models``."""
    found = os.environ.get(STORE_VARIABLE)
    return Path(found) if found else Path.home() / ".cache" / "ffad" / "models"


def runtime_versions() -> dict:
    """The versions that decide the quantised graph: the exporter's (torch), onnx's and ONNX Runtime's."""
    import onnx
    import onnxruntime

    return {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def int8_record(backbone: dict, preprocessing: dict, dataset: dict, calibration: Calibration,
                rows: np.ndarray) -> dict:
    """What a cache records of its int8 model (``features.int8``), less the model's SHA-256:
    the quantisation, the calibration (method, seed, images, which rows, of which dataset) and
    the model's name in the store, a digest of all of it, of the backbone's weights and of the
    preprocessing, so a model is made once for each and found again by it."""
    rows = np.asarray(rows, dtype=np.int64)
    record = {**QUANTISATION,
              "calibration": {"split": "train", **asdict(calibration), "images": int(len(rows)),
                              "rows_sha256": hashlib.sha256(rows.tobytes()).hexdigest()},
              "versions": runtime_versions()}
    decided_by = {"record": record, "backbone": backbone, "preprocessing": preprocessing, "dataset": dataset}
    digest = hashlib.sha256(json.dumps(decided_by, sort_keys=True, default=str).encode()).hexdigest()
    name = f"{backbone['name']}_{preprocessing['image_size']}_int8_{digest[:16]}"
    return {**record, "model": name}


def stored_model(record: dict) -> Path:
    return model_store() / f"{record['model']}.onnx"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_int8_model(record: dict) -> Path:
    """The quantised model a cache records (``features.int8``), from the model store, checked
    against the SHA-256 it records; refused, saying how to make it again, when it is missing or
    another."""
    path = stored_model(record)
    again = ("Run the extraction command that made the cache again (with its dataset: it calibrates the model "
             "on the same training images and puts it back), or copy the file from the machine that made it; "
             f"{STORE_VARIABLE} names the store's folder.")
    if not path.is_file():
        raise PipelineError(f"the int8 model {record['model']} this cache's features were computed with is not in "
                            f"the model store ({path}). {again}")
    found = _sha256(path)
    if record.get("model_sha256") and found != record["model_sha256"]:
        raise PipelineError(f"the int8 model {path} has SHA-256 {found[:12]}..., but the cache's features were "
                            f"computed with one of SHA-256 {record['model_sha256'][:12]}...: its features would "
                            f"differ. {again}")
    return path


def export_onnx(model: torch.nn.Module, names: Sequence[str], image_size: int, path: str | Path) -> list[str]:
    """``model(images, names)`` exported to ONNX at ``path`` (float32, the batch axis free);
    returns the graph's output names: ``pooled``, then ``names``."""
    model = model.float().eval()
    names = tuple(names)

    class Outputs(torch.nn.Module):  # a tuple, as ONNX graphs return
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.model(images, names)
            return (out["pooled"], *(out[name] for name in names))

    outputs = ["pooled", *names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        # In eval mode: the exporter puts the module back in the mode it found it in, and a new
        # module is in training mode (batch norm would then use batch statistics in PyTorch).
        torch.onnx.export(Outputs().eval(), (torch.zeros(1, 3, image_size, image_size),), str(path),
                          input_names=["images"], output_names=outputs,
                          dynamic_axes={n: {0: "batch"} for n in ["images", *outputs]}, dynamo=False)
    return outputs


class _Batches:
    """ONNX Runtime's calibration reader: the calibration images, preprocessed, a batch at a time."""

    def __init__(self, images: Sequence, rows: np.ndarray, preprocessing) -> None:
        self.images, self.preprocessing = images, preprocessing
        self.batches = iter([rows[i:i + CALIBRATION_BATCH] for i in range(0, len(rows), CALIBRATION_BATCH)])

    def get_next(self) -> dict | None:
        rows = next(self.batches, None)
        if rows is None:
            return None
        return {"images": self.preprocessing([self.images[int(r)] for r in rows]).float().numpy()}

    def rewind(self) -> None:  # not needed by the calibrators used here
        raise NotImplementedError


def quantise(model: torch.nn.Module, preprocessing, images: Sequence, rows: np.ndarray, calibration: Calibration,
             out: Path) -> None:
    """The backbone (pooled feature and every stage) exported, prepared with ONNX Runtime's
    ``quant_pre_process`` and statically quantised (QDQ, uint8 activations, int8 per-channel
    weights) on the images ``images[rows]``, written to ``out``."""
    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quant_pre_process, quantize_static)
    except ImportError as error:
        raise PipelineError("--precision int8 needs ONNX Runtime and onnx (pip install onnxruntime onnx; both are "
                            "dependencies of this project).") from error

    class Reader(_Batches, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="ffad-int8-") as folder:
        exported, prepared = Path(folder) / "float32.onnx", Path(folder) / "prepared.onnx"
        export_onnx(model, model.stage_names, preprocessing.image_size, exported)
        quant_pre_process(str(exported), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Reader(images, rows, preprocessing), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, calibration.method))


def make_int8_model(model: torch.nn.Module, backbone: dict, preprocessing, dataset,
                    calibration: Calibration = Calibration(), echo=None) -> dict:
    """The int8 model of ``model`` for this extraction, made (and stored) unless the store has
    it already; returns its record for the cache metadata (``int8_record`` and the model's
    SHA-256). ``backbone``: the cache's backbone metadata (name, weights and their SHA-256);
    ``dataset``: the ``ImageDataset`` being extracted, whose training images calibrate it."""
    rows = calibration_rows(len(dataset.train.labels), calibration)
    record = int8_record(backbone, preprocessing.to_dict(), dataset.describe(), calibration, rows)
    path = stored_model(record)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        # Written beside its place and moved there whole: a run stopped half-way, or two shards
        # making it at once, never leave a partial model under its name.
        handle, partial = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".onnx", dir=path.parent)
        os.close(handle)
        try:
            quantise(model, preprocessing, dataset.train.images, rows, calibration, Path(partial))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(partial, 0o666 & ~umask)  # as a file opened the usual way (mkstemp makes it 0600)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        if echo is not None:
            echo(f"made the int8 model {path} ({calibration.method} calibration on {len(rows)} training images, "
                 f"{time.perf_counter() - started:.1f} s)")
    return {**record, "model_sha256": _sha256(path)}
