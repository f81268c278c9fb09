"""PANDA training epoch: from cached trunk maps (this project) vs the whole backbone on decoded
images every epoch (PANDA's code).

    python benchmarks/panda_epoch.py --images-dir data/cifar10-jpg/train/airplane --images 500 --image-size 224

Both run in this process, on the same images, with the same tail (a fresh copy of
EfficientNet-Lite0's stages after its stride-8 trunk, pretrained weights), the same minibatch
order, batch size and SGD step (``pipeline.heads.panda.model.train_step``). Rounds alternate
the two ways, so a machine that slows down or speeds up during the run affects both alike.

- cached: the trunk maps are computed once (decode, resize, trunk forward: the extraction's
  work, timed apart as the one-time cost), kept in memory as float16 as the cache stores them;
  an epoch is the tail's forward and backward passes and SGD steps on them.
- PANDA's way: every epoch decodes and resizes each minibatch's images, runs the frozen trunk
  (no gradients, as PANDA's frozen layers) and then the same tail step.

``--padding both`` also times both ways with EfficientNet-Lite's "same" padding as the
package builds it (a ZeroPad2d copy before every convolution) instead of folded into the
convolutions (``pipeline.backbones._fold_symmetric_padding``), in the same rounds.

Also timed, per epoch: the scoring pass over the same images that PANDA's code makes after
every epoch (its ``get_score`` runs the whole model on the training and test sets), from
cached maps (tail only) and from images (decode, trunk, tail).
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import click
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Seconds spent per named part, summed over a pass."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.parts = device, {}

    def time(self, name: str, work):
        _sync(self.device)
        start = time.perf_counter()
        result = work()
        _sync(self.device)
        self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - start
        return result


@click.command()
@click.option("--images-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A folder of images (its first --images files, sorted), e.g. data/cifar10-jpg/train/airplane.")
@click.option("--images", default=500, show_default=True, type=click.IntRange(2))
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(16, 1024))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="PANDA's: 32.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1),
              help="Epochs of each way, alternated; the medians are reported.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", default=None, type=click.IntRange(1), help="torch CPU threads (default: torch's).")
@click.option("--precision", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16"]))
@click.option("--padding", default="folded", show_default=True, type=click.Choice(["folded", "both"]),
              help="folded: the backbone as the project builds it; both: also with the package's ZeroPad2d.")
@click.option("--scoring/--no-scoring", default=True, show_default=True,
              help="Also time the per-epoch scoring pass of PANDA's code over the same images.")
def main(images_dir: str, images: int, image_size: int, batch_size: int, rounds: int, device: str,
         threads: int | None, precision: str, padding: str, scoring: bool) -> None:
    from pipeline import params
    from pipeline.backbones import get_spec, load_backbone
    from pipeline.extract.datasets import FileImages
    from pipeline.extract.listing import list_images
    from pipeline.extract.preprocess import Preprocessing, resolve_normalisation
    from pipeline.heads.panda.model import autocast, embed, train_step

    device_ = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    paths = sorted(list_images(Path(images_dir))[0])[:images]
    files = FileImages([str(p) for p in paths])
    preprocess = params.section("preprocess")  # auto: Lite0's own normalisation, as extraction resolves it
    normalisation = resolve_normalisation(preprocess["normalisation"], get_spec("efficientnet_lite0").native_normalisation)
    preprocessing = Preprocessing(**{**preprocess, "image_size": image_size, "normalisation": normalisation})
    model, _ = load_backbone("efficientnet_lite0", image_size)
    # Per padding: the frozen trunk (channels-last, as the extraction runs it) and the pretrained tail.
    variants = {"folded": model}
    if padding == "both":
        variants["package"] = package_padding(copy.deepcopy(model))
    splits = {}
    for name, variant in variants.items():
        trunk, tail = variant.split()
        splits[name] = trunk.to(device_, memory_format=torch.channels_last), tail
    settings = params.section("panda")  # PANDA's code: lr, momentum, weight decay, clipping
    batches = [list(range(i, min(i + batch_size, len(files)))) for i in range(0, len(files), batch_size)]
    print(f"{len(files)} images from {images_dir}, EfficientNet-Lite0 at {image_size}x{image_size}, trunk to "
          f"{model.spec.trunk_end}, batch {batch_size}, {precision}, device {device_}, torch threads "
          f"{torch.get_num_threads()}, {rounds} rounds, padding {', '.join(splits)}")

    def decode(rows: list[int]) -> torch.Tensor:
        return preprocessing([files[i] for i in rows]).to(device_)

    def run_trunk(trunk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(device_, precision):
            return trunk(x.contiguous(memory_format=torch.channels_last)).to(torch.float16)

    # The one-time cost of the cache: decode, resize and the trunk, once per image.
    once = Clock(device_)
    folded_trunk, folded_tail = splits["folded"]
    maps = torch.cat([once.time("trunk forward", lambda: run_trunk(folded_trunk, once.time("decode + resize",
                                                                                           lambda: decode(b))))
                      for b in batches])
    print(f"trunk maps {tuple(maps.shape[1:])} float16, {maps[0].numel() * 2 / 1024:.1f} KiB per image; made once "
          f"in {sum(once.parts.values()):.2f} s ({_parts(once.parts)})")

    def fresh_tail(pretrained_tail: torch.nn.Module):
        tail = copy.deepcopy(pretrained_tail).to(device_, memory_format=torch.channels_last).eval()
        params_ = [p for p in tail.requires_grad_(True).parameters()]
        optimiser = torch.optim.SGD(params_, lr=settings["lr"], momentum=settings["momentum"],
                                    weight_decay=settings["weight_decay"])
        return tail, params_, optimiser

    centre = embed(fresh_tail(folded_tail)[0], maps, precision).mean(0)

    def epoch(way: str, split: str, seed: int) -> dict[str, float]:
        trunk, pretrained_tail = splits[split]
        tail, params_, optimiser = fresh_tail(pretrained_tail)
        clock = Clock(device_)
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).split(batch_size)
        for index in order:
            rows = index.tolist()
            if way == "cached":
                batch = maps[index.to(device_)]
            else:
                batch = clock.time("trunk forward", lambda: run_trunk(trunk, clock.time("decode + resize",
                                                                                        lambda: decode(rows))))
            clock.time("tail forward + backward + step", lambda: train_step(
                tail, params_, optimiser, batch, centre, settings["grad_clip"], precision))
        if scoring:  # PANDA's get_score after the epoch: the model over the images, no gradients
            for rows in batches:
                batch = maps[rows] if way == "cached" else clock.time(
                    "scoring: trunk forward", lambda: run_trunk(trunk, clock.time("scoring: decode + resize",
                                                                                  lambda: decode(rows))))
                clock.time("scoring: tail forward", lambda: embed(tail, batch, precision))
        return clock.parts

    runs = [(way, split) for split in splits for way in ("cached", "panda")]
    results: dict[tuple[str, str], list[dict[str, float]]] = {run: [] for run in runs}
    for run in runs:  # warm-up: first-call allocations, lazy imports
        epoch(*run, seed=0)
    for r in range(rounds):
        for run in (runs if r % 2 == 0 else runs[::-1]):
            results[run].append(epoch(*run, seed=r))
            total = sum(results[run][-1].values())
            print(f"round {r + 1} {run[0]:6s} {run[1]:7s} {total:7.2f} s  ({_parts(results[run][-1])})")

    def median(run: tuple[str, str], only_training: bool) -> float:
        return statistics.median(sum(v for k, v in parts.items() if not (only_training and k.startswith("scoring")))
                                 for parts in results[run])

    print()
    for split in splits:
        for label, only_training in (("training epoch", True), ("epoch + scoring pass", False)):
            if only_training or scoring:
                cached, panda = median(("cached", split), only_training), median(("panda", split), only_training)
                print(f"padding {split:7s} {label:22s} cached {cached:7.2f} s   PANDA's way {panda:7.2f} s   "
                      f"ratio {panda / cached:5.2f}x")
    if "package" in splits:
        for way in ("cached", "panda"):
            package, folded = median((way, "package"), True), median((way, "folded"), True)
            print(f"training epoch, {way:6s}: package padding {package:7.2f} s   folded {folded:7.2f} s   "
                  f"ratio {package / folded:5.2f}x")
    for run in runs:
        print(f"median breakdown, {run[0]:6s} {run[1]:7s}: "
              + _parts({k: statistics.median(p[k] for p in results[run]) for k in results[run][0]}))
    print(f"the cache's one-time trunk pass: {sum(once.parts.values()):.2f} s, the decoding and trunk work that "
          f"each of PANDA's epochs repeats.")


def package_padding(model: torch.nn.Module) -> torch.nn.Module:
    """EfficientNet-Lite with its "same" padding as the package builds it: the padding that
    ``_fold_symmetric_padding`` moved into each convolution moved back into a ZeroPad2d."""
    for module in model.modules():
        if hasattr(module, "static_padding") and any(module.padding):
            top, left = module.padding
            module.static_padding, module.padding = torch.nn.ZeroPad2d((left, left, top, top)), (0, 0)
    return model


def _parts(parts: dict[str, float]) -> str:
    total = sum(parts.values()) or 1.0
    return ", ".join(f"{name} {seconds:.2f} s ({100 * seconds / total:.0f}%)" for name, seconds in parts.items())


if __name__ == "__main__":
    main()
