"""Image preprocessing as batched tensor operations, described by a small dataclass.

The dataclass is stored in every feature cache, so a cache says exactly how its images
were prepared and a head can refuse a cache prepared differently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from pipeline.errors import PipelineError, choice_error
from pipeline.extract.names import RESIZE_MODES

NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # TensorFlow-trained models such as EfficientNet-Lite were trained on (x - 127) / 128.
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": None,
}


def resolve_normalisation(normalisation: str, native: str) -> str:
    """``auto`` -> ``native``, the statistics the backbone's weights were trained with
    (``BackboneSpec.native_normalisation``: inception for EfficientNet-Lite, imagenet for
    torchvision's); any other name as it is."""
    return native if normalisation == "auto" else normalisation
INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a backbone input.

    resize: ``resize`` goes straight to ``image_size`` x ``image_size`` (PLUME's code);
    ``resize_crop`` resizes the short side to ``image_size * 256 / 224`` then centre-crops
    ``image_size`` (PANDA's code: 256 then 224).
    normalisation: a key of ``NORMALISATIONS``. Grayscale images are always repeated to 3
    channels, since every backbone here expects RGB.
    """

    image_size: int = 224
    resize: str = "resize"
    interpolation: str = "bilinear"
    normalisation: str = "imagenet"

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 1024:
            raise PipelineError(f"image size must be between 16 and 1024 pixels, got {self.image_size}.")
        if self.resize not in RESIZE_MODES:
            raise choice_error("resize mode", self.resize, RESIZE_MODES)
        if self.interpolation not in INTERPOLATIONS:
            raise choice_error("interpolation", self.interpolation, list(INTERPOLATIONS))
        if self.normalisation not in NORMALISATIONS:
            raise choice_error("normalisation", self.normalisation, list(NORMALISATIONS))

    def to_dict(self) -> dict:
        return asdict(self)

    def __call__(self, images: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """uint8 images (C, H, W), or a uint8 batch (N, C, H, W) -> float batch (N, 3, S, S)."""
        if isinstance(images, torch.Tensor):
            return self._batch(images)
        # Images of one size (every torchvision dataset) are resized in one batched call;
        # mixed sizes (a user's image folder) are resized one by one, then stacked.
        if len({tuple(im.shape) for im in images}) == 1:
            return self._batch(torch.stack(images))
        return torch.cat([self._batch(im.unsqueeze(0)) for im in images])

    @staticmethod
    def rgb(images: torch.Tensor) -> torch.Tensor:
        """uint8 images (..., C, H, W) with 1, 3 or 4 channels -> 3 channels (gray repeated, alpha dropped)."""
        if images.shape[-3] == 1:
            return images.expand(*images.shape[:-3], 3, *images.shape[-2:])
        if images.shape[-3] == 4:
            return images[..., :3, :, :]
        return images

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """A float batch in [0, 1] -> the backbone's normalisation, contiguous."""
        stats = NORMALISATIONS[self.normalisation]
        if stats is not None:
            batch = TF.normalize(batch, list(stats[0]), list(stats[1]))
        return batch.contiguous()

    def geometry(self, batch: torch.Tensor) -> torch.Tensor:
        """A uint8 batch (N, C, H, W) -> float (N, 3, S, S) in [0, 1] scale (bicubic resampling
        may overshoot it slightly), resized (and centre-cropped) but not yet normalised: the
        image as the backbone sees it, before ``normalise`` (``pipeline.extract.masks.input_image``)."""
        mode = INTERPOLATIONS[self.interpolation]
        # Resizing in float avoids uint8 rounding; antialias matters when shrinking large photos.
        batch = self.rgb(batch).float().div_(255.0)
        if self.resize == "resize":
            batch = TF.resize(batch, [self.image_size, self.image_size], interpolation=mode, antialias=True)
        else:
            short = round(self.image_size * 256 / 224)
            batch = TF.resize(batch, short, interpolation=mode, antialias=True)
            batch = TF.center_crop(batch, [self.image_size, self.image_size])
        return batch

    def _batch(self, batch: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.geometry(batch))
