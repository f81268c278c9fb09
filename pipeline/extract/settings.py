"""The dataset, preprocess and extract sections of params.yaml, declared once
(``pipeline.declare``): what each key takes, checked strictly before any work, and the extract
command's options (``pipeline/extract/command.py``) with their help. Torch- and NumPy-free, so
that ``--help`` and the check of params.yaml load neither."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.declare import param
from pipeline.extract.names import (AUTO, CONSTANT_SETS, CORRUPTIONS, DATASET_NAMES, ENGINE_NAMES, IDENTITY,
                                    INTERPOLATION_NAMES, NORMALISATION_NAMES, PATCH_WORD, PRECISION_NAMES, RESIZE_MODES,
                                    SEVERITIES, SMALL_IMAGE_SIDE)


@dataclass
class DatasetParams:
    name: str = param("digits", "Dataset to extract. imagefolder reads DATA_DIR/train/<class>/* and "
                                "DATA_DIR/test/<class>/*; anomaly_folder the MVTec AD / anomalib layout, "
                                "DATA_DIR/train/<normal>/* (normal images only), DATA_DIR/test/<normal>/* and "
                                "DATA_DIR/test/<defect type>/* (its heads' protocol: normal-vs-anomalies).",
                      choices=DATASET_NAMES, option="--dataset")
    data_dir: str = param("data", "Where the dataset lives (or is downloaded to with --download).")
    normal: Any = param(("good",), "anomaly_folder: the name of the normal images' folder in train/ and test/, or "
                                   "several separated by commas (good,ok). Other datasets ignore it.", kind="names")
    download: bool = param(False, "Let torchvision download the dataset if it is not in DATA_DIR (needs network).")


@dataclass
class PreprocessParams:
    image_size: int = param(224, "Side of the square backbone input, in pixels.", low=16, high=1024)
    resize: str = param("resize", "resize: straight to the image size (PLUME); resize_crop: short side to "
                                  "size*256/224, then centre crop (PANDA).", choices=RESIZE_MODES)
    interpolation: str = param("bilinear", "Resampling filter of the resize.", choices=INTERPOLATION_NAMES)
    normalisation: str = param(AUTO, "auto: what the backbone's weights were trained with (inception for "
                                     "EfficientNet-Lite, imagenet for torchvision's); imagenet mean/std; inception "
                                     "(x-0.5)/0.5, the statistics TensorFlow-trained models such as EfficientNet-Lite "
                                     "were trained with. The cache records the one used.",
                               choices=(AUTO, *NORMALISATION_NAMES))


@dataclass
class ExtractParams:
    dtype: str = param("float32", "Storage type of the pooled features.", choices=("float32", "float16"))
    precision: str = param("float32", "Compute precision of the forward pass. auto: bfloat16 where it is native "
                                      "(a CPU with AVX512-BF16 or AMX, a GPU that supports it), else float32; "
                                      "bfloat16/float16 use autocast (the features come out float32); int8 (CPU, "
                                      "ONNX Runtime): the backbone statically quantised, calibrated on 256 "
                                      "training images of the dataset drawn with seed 0, made once and kept in "
                                      "$FFAD_MODEL_STORE (default ~/.cache/ffad/models); 1.9x ONNX Runtime float32 "
                                      "end to end for EfficientNet-Lite0 on 2 idle cores (2.3x for ResNet50), its "
                                      "features 20% away (median relative L2): an option, not the default "
                                      "(results/bench_extraction_int8.txt). The cache records the one used, and "
                                      "int8's calibration.",
                           choices=(AUTO, *PRECISION_NAMES))
    engine: str = param(AUTO, "What runs the forward pass: torch (PyTorch, any device and precision); onnxruntime "
                              "(the same modules exported to ONNX and run by ONNX Runtime, float32 on the CPU: 3.6x "
                              "PyTorch end to end for EfficientNet-Lite0 on a 2-core CPU, the same features to 4e-6 "
                              "relative); auto: onnxruntime for float32 and int8 on the CPU, else torch. Recorded in the "
                              "cache, and used again for its views and to score new images with its heads.",
                        choices=(AUTO, *ENGINE_NAMES))
    batch_size: int = param(64, "Images per forward pass.", low=1, high=4096)
    workers: int = param(1, "Processes that decode and resize images while the backbone runs.", low=0, high=64)
    device: str = param("auto", "auto (GPU if there is one), cpu, cuda, cuda:1, ...")
    maps: Any = param(("intermediate",), "Also store these intermediate maps, pooled to a small grid. "
                                         "'intermediate' names the backbone's stage-3 map (AnoMem); none: no map.",
                      kind="names", none_word="none")
    map_grid: int = param(4, "Side of the grid intermediate maps are average-pooled to.", low=1, high=64)
    trunk_maps: str | None = param(None, "Also store the map of this stage at full resolution, float16 "
                                         "(trunk/<stage>): the input of the PANDA head's trainable tail. Given alone, "
                                         "or panda: the backbone's PANDA split, its stride-8 map (ResNet layer2, "
                                         "ConvNeXt stage2, VGG conv4_3, EfficientNet-Lite stride8); none: no trunk "
                                         "map. C x H x W x 2 bytes per image (EfficientNet-Lite0 at 224: 61 KiB).",
                                   kind="str", none_word="none")
    patch_maps: Any = param("none", "Also store these stages' maps at full resolution, float16, for the patch heads "
                                    "(patchcore, padim), shared with --trunk-maps where they coincide. patch: the "
                                    "backbone's stride-8 and stride-16 stages (ResNet layer2+layer3 as PatchCore, "
                                    "ConvNeXt stage2+stage3, VGG conv4_3+conv5_3, EfficientNet-Lite stride8+stride16: "
                                    "104 KiB per image for Lite0 at 224, 1.2 MiB for ResNet50); none: no patch maps.",
                            kind="names", words=("none", PATCH_WORD))
    views: int = param(2, "Also cache this many augmented views (SimCLR crop, flip, colour jitter) of each training "
                          "image, with the same maps, in <out minus .zarr>.views.zarr (AnoMem's stage A uses 2). "
                          "Costs views x the training set's forward passes.", low=0, high=16)
    views_per_class: Any = param("all", "Make views for only N training images per class, drawn at random, or for "
                                        "all of them.", kind="int", low=1, words=("all",))
    corruptions: Any = param("none", f"Also write corrupted copies of the test split, one per corruption and "
                                     f"severity, named test@<corruption>@<severity> (the robustness protocol: heads "
                                     f"score them with --shift). all: the 15 of ImageNet-C / CIFAR-10-C; "
                                     f"{IDENTITY}: a control that changes nothing. Added "
                                     f"to a finished cache without extracting the rest again.",
                             kind="names", choices=(*CORRUPTIONS, IDENTITY), words=("none", "all"))
    severities: Any = param(SEVERITIES, "Severities (1-5) of each corruption.", kind="ints", low=min(SEVERITIES),
                            high=max(SEVERITIES), words=("all",))
    corrupt_per_class: Any = param("all", "Corrupt all test images, or N per class drawn at random (seed 0; the same "
                                          "rows for every corruption and severity). The clean test split stays whole.",
                                   kind="int", low=1, words=("all",))
    corruption_constants: str = param(AUTO, f"The corruptions' constants: CIFAR-10-C's (made for 32x32 images) or "
                                            f"ImageNet-C's (224x224); auto: CIFAR-10-C's when the first test image is "
                                            f"at most {SMALL_IMAGE_SIDE} px on its longer side, ImageNet-C's otherwise "
                                            f"(recorded in the cache).", choices=(AUTO, *CONSTANT_SETS))
