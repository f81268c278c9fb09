"""The names the extract command offers (datasets, backbones, preprocessing, precisions), here
without importing torch so that its ``--help`` answers at once. tests/test_extract.py checks
they are the keys of the registries (DATASETS, BACKBONES, INTERPOLATIONS, NORMALISATIONS,
PRECISIONS), so a new entry there fails until it is named here."""

DATASET_NAMES = ("digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "imagefolder", "anomaly_folder",
                 "synthetic")
BACKBONE_NAMES = ("resnet50", "resnet152", "wide_resnet50_2", "convnext_tiny", "convnext_base", "vgg16",
                  "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
RESIZE_MODES = ("resize", "resize_crop")
INTERPOLATION_NAMES = ("bilinear", "bicubic", "nearest")
# "auto": resolved when the backbone (normalisation: the statistics its weights were trained
# with) and the device (precision: bfloat16 where it is native) are known; the cache records both.
AUTO = "auto"
NORMALISATION_NAMES = ("imagenet", "inception", "none")
PRECISION_NAMES = ("float32", "bfloat16", "float16")
ENGINE_NAMES = ("torch", "onnxruntime")
