"""The forward-pass engines: ONNX Runtime gives PyTorch's features (to float tolerance), for the
pooled vector, the pooled maps and a full-resolution trunk map, and the cache records it."""

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.errors import PipelineError
from pipeline.extract.datasets import load_dataset
from pipeline.extract.extraction import extract
from pipeline.extract.preprocess import Preprocessing

SMALL = dict(maps=("intermediate",), map_grid=2, chunk_rows=16, batch_size=8, workers=0)  # the map is 2x2 at 32 px


def test_onnxruntime_features_equal_pytorch_ones_and_the_cache_records_the_engine(tmp_path):
    data = load_dataset("synthetic")
    runs = {engine: extract(data, "efficientnet_lite0", Preprocessing(image_size=32), tmp_path / f"{engine}.zarr",
                            engine=engine, trunk_maps="panda", **SMALL) for engine in ("torch", "onnxruntime")}
    eager, onnx = runs["torch"], runs["onnxruntime"]
    assert "engine" not in eager.metadata["features"]  # the default leaves earlier caches' metadata as it was
    assert onnx.metadata["features"]["engine"] == "onnxruntime" and onnx.metadata["features"]["engine_version"]
    for split in ("train", "test"):
        for name in eager.array_names(split):
            a, b = eager.read(split, name).astype(np.float64), onnx.read(split, name).astype(np.float64)
            if name == "labels":
                np.testing.assert_array_equal(a, b)
            else:  # float32 in both: only the order of the sums differs (float16 maps: one rounding step)
                tolerance = 1e-4 if eager.read(split, name).dtype == np.float32 else 2e-3
                assert np.abs(a - b).max() <= tolerance * np.abs(a).max(), (split, name)


def test_the_export_leaves_the_pytorch_module_as_it_was():
    """The exporter restores the training flag it found: the backbone must stay in eval mode
    (the views extraction and scoring reuse the loaded module)."""
    import torch

    from pipeline.backbones import load_backbone
    from pipeline.extract.loop import OnnxForward, torch_forward

    model, _ = load_backbone("efficientnet_lite0", 32)
    batch = torch.randn(4, 3, 32, 32)
    eager = torch_forward(model, ("stride16",), torch.device("cpu"), "float32")
    before = eager(batch)["pooled"].clone()
    onnx = OnnxForward(model, ("stride16",))(batch)
    assert not model.training and not any(module.training for module in model.modules())
    torch.testing.assert_close(eager(batch)["pooled"], before, rtol=0, atol=0)
    torch.testing.assert_close(onnx["pooled"], before, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    assert onnx["stride16"].shape == (4, 112, 2, 2)


def test_onnxruntime_is_refused_where_it_does_not_run(tmp_path):
    with pytest.raises(PipelineError, match="float32 on the CPU"):
        extract(load_dataset("synthetic"), "efficientnet_lite0", Preprocessing(image_size=32), tmp_path / "c.zarr",
                engine="onnxruntime", precision="bfloat16", **SMALL)


def test_a_head_saved_from_an_onnxruntime_cache_scores_images_with_onnxruntime(tmp_path, monkeypatch):
    from PIL import Image

    from pipeline.extract import loop
    from pipeline.commands.knn import main as knn_main
    from pipeline.scoring import main as score_main

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "images" / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                    tmp_path / "images" / split / c / f"{i}.png")
    cache = extract(load_dataset("imagefolder", tmp_path / "images"), "efficientnet_lite0",
                    Preprocessing(image_size=32), tmp_path / "c.zarr", engine="onnxruntime", **SMALL)
    assert CliRunner().invoke(knn_main, ["--cache", str(cache.path), "--metrics", str(tmp_path / "m.json"),
                                         "--save-heads", str(tmp_path / "heads")]).exit_code == 0
    used = []
    original = loop.OnnxForward.__call__
    monkeypatch.setattr(loop.OnnxForward, "__call__", lambda self, batch: used.append(len(batch)) or original(self, batch))
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(score_main, ["--head", str(tmp_path / "heads" / "a.head"), "--images",
                                             str(tmp_path / "images" / "test"), "--workers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sum(used) == 8  # every image through ONNX Runtime, as the cache's were
