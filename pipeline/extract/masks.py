"""Ground-truth masks of an anomaly folder's test images, brought to the backbone input the way
the images are (the same resize, or resize and centre crop, with nearest-neighbour sampling so
a mask stays 0/1), and stored in the cache as ``test/masks``: (N, S, S) uint8 for an input of
S x S. The pixel metrics compare them with the patch heads' anomaly maps, which are at the
same resolution (``pipeline.pixel_metrics``). Beside them, ``test/inputs``: each test image as
the backbone saw it before normalisation, (N, S, S, 3) uint8, which the heat maps are drawn
over (the head stages' galleries and the report read them, never the image files).

Per test image: its mask file's pixels (any value above 0 is a defect pixel) where it has one;
all 0 for a normal image; ``UNKNOWN_MASK`` (255) everywhere for a defect image without a mask,
which the pixel metrics leave out rather than count as defect-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from pipeline.errors import PipelineError
from pipeline.extract.datasets import ImageDataset, decode_image_file
from pipeline.extract.preprocess import Preprocessing
from pipeline.store.cache import ArraySpec

UNKNOWN_MASK = 255


def _image_size(path: str) -> tuple[int, int]:
    """Width and height from the file's header (no decoding)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def mask_to_input(path: str, image_path: str, preprocessing: Preprocessing) -> np.ndarray:
    """The mask file at ``path`` as a 0/1 (S, S) uint8 array, resized (and cropped) as its image
    at ``image_path`` is by ``preprocessing``; a mask of another size than its image is refused."""
    mask_size, image_size = _image_size(path), _image_size(image_path)
    if mask_size != image_size:
        raise PipelineError(f"the mask {path} is {mask_size[0]}x{mask_size[1]} pixels but its image {image_path} "
                            f"is {image_size[0]}x{image_size[1]}: a mask must have its image's size, pixel for pixel.")
    mask = (decode_image_file(path) > 0).any(dim=0, keepdim=True).to(torch.uint8)  # (1, H, W): any channel set
    side = preprocessing.image_size
    if preprocessing.resize == "resize":
        mask = TF.resize(mask, [side, side], interpolation=InterpolationMode.NEAREST_EXACT)
    else:
        mask = TF.resize(mask, round(side * 256 / 224), interpolation=InterpolationMode.NEAREST_EXACT)
        mask = TF.center_crop(mask, [side, side])
    return mask[0].numpy()


def input_image(path: str | Path, preprocessing: Preprocessing) -> np.ndarray:
    """The image file at ``path`` as the backbone saw it before normalisation: decoded as
    extraction decodes it (``decode_image_file``), resized (and centre-cropped) by
    ``preprocessing``'s own geometry (``Preprocessing.geometry``), then brought back to [0, 255]
    and rounded: (S, S, 3) uint8, pixel for pixel where the anomaly maps are."""
    batch = preprocessing.geometry(decode_image_file(str(path)).unsqueeze(0))
    return batch[0].mul(255.0).round().clamp(0, 255).byte().permute(1, 2, 0).contiguous().numpy()


@dataclass
class TestMasks:
    """The masks of a dataset's test split, made row by row as extraction writes its chunks."""

    dataset: ImageDataset
    preprocessing: Preprocessing
    masks: dict[str, str]  # test image (relative to the folder) -> its mask (relative too)

    @classmethod
    def of(cls, dataset: ImageDataset, preprocessing: Preprocessing) -> "TestMasks":
        """The dataset's masks (none unless it is an anomaly folder with a mask folder)."""
        return cls(dataset, preprocessing, dict(dataset.identity.get("masks", {})))

    def __bool__(self) -> bool:
        return bool(self.masks)

    def specs(self) -> list[ArraySpec]:
        """The test split's extra arrays, when there are masks."""
        side = self.preprocessing.image_size
        return [ArraySpec("masks", (side, side), "uint8"), ArraySpec("inputs", (side, side, 3), "uint8")] if self else []

    def values(self, rows: slice | np.ndarray) -> dict[str, np.ndarray]:
        """The extra arrays of the given test rows, as a chunk of the store takes them."""
        paths = self.dataset.test.images.paths
        return {"masks": self.rows(rows),
                "inputs": np.stack([input_image(paths[row], self.preprocessing)
                                    for row in np.arange(len(paths))[rows]])}

    def rows(self, rows: slice | np.ndarray) -> np.ndarray:
        """The masks of the given test rows: (n, S, S) uint8, 0/1, or ``UNKNOWN_MASK`` for a
        defect image without a mask."""
        side = self.preprocessing.image_size
        root = Path(self.dataset.root)
        normal = {self.dataset.classes.index(name) for name in self.dataset.identity.get("normal_classes", [])}
        paths, labels = self.dataset.test.images.paths, self.dataset.test.labels
        out = []
        for row in np.arange(len(labels))[rows]:
            image = paths[row]
            mask = self.masks.get(os.path.relpath(image, root))
            if mask is not None:
                out.append(mask_to_input(str(root / mask), image, self.preprocessing))
            else:
                fill = 0 if int(labels[row]) in normal else UNKNOWN_MASK
                out.append(np.full((side, side), fill, np.uint8))
        return np.stack(out) if out else np.zeros((0, side, side), np.uint8)
