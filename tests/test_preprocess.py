import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.extract.preprocess import Preprocessing


def test_grayscale_is_repeated_and_imagenet_normalisation_applied():
    image = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    out = Preprocessing(image_size=16)([image])
    assert out.shape == (1, 3, 16, 16)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[0, :, 5, 5], expected)


def test_inception_and_no_normalisation():
    image = torch.zeros((3, 8, 8), dtype=torch.uint8)
    assert Preprocessing(image_size=16, normalisation="inception")([image]).min() == -1
    assert Preprocessing(image_size=16, normalisation="none")([image]).max() == 0


def test_resize_crop_takes_the_centre():
    # Left half black, right half white, wider than tall: the centre crop keeps both halves.
    image = torch.zeros((3, 32, 64), dtype=torch.uint8)
    image[:, :, 32:] = 255
    out = Preprocessing(image_size=16, resize="resize_crop", normalisation="none")([image])
    assert out.shape == (1, 3, 16, 16)
    assert out[0, 0, 8, 0] < 0.1 and out[0, 0, 8, -1] > 0.9


def test_mixed_sizes_are_resized_one_by_one():
    images = [torch.zeros((3, 10, 12), dtype=torch.uint8), torch.zeros((3, 20, 20), dtype=torch.uint8)]
    assert Preprocessing(image_size=16)(images).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("kwargs", [dict(image_size=8), dict(resize="stretch"), dict(normalisation="coco"),
                                    dict(interpolation="lanczos9")])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(PipelineError):
        Preprocessing(**kwargs)
