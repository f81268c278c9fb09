"""The names the extract command offers (datasets, backbones, preprocessing, precisions,
corruptions), here without importing torch or NumPy so that its ``--help`` answers at once.
tests/test_layout_deps.py checks they are the keys of the registries (DATASETS, BACKBONES,
INTERPOLATIONS, NORMALISATIONS, PRECISIONS), so a new entry there fails until it is named here."""

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
PRECISION_NAMES = ("float32", "bfloat16", "float16", "int8")
ENGINE_NAMES = ("torch", "onnxruntime")

# The robustness protocol's corruptions (corruptions.py): the benchmark's 15, in its order: noise,
# blur, weather, digital.
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
# A control that returns the image unchanged: its split must score exactly as the clean test split
# (same rows, same batches), which checks the whole path. Never part of "all" nor of the means.
IDENTITY = "identity"
SEVERITIES = (1, 2, 3, 4, 5)
CONSTANT_SETS = ("cifar10-c", "imagenet-c")
# Longest side, in pixels, up to which CIFAR-10-C's constants are used ("auto").
SMALL_IMAGE_SIDE = 64
# --patch-maps patch: the backbone's own patch stages (BackboneSpec.patch_stages).
PATCH_WORD = "patch"
