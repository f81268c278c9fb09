"""The PANDA head: see head.py (the head class), model.py (the compactness loss, EWC and the
tail's forward passes), command.py (its stage) and report.py (its table rows).

The choices below are here, torch-free, so that a command's ``--help`` does not load torch."""

# Where EWC's Fisher information comes from: none (no EWC: PANDA-Early, a fixed number of
# epochs), uniform (F = 1 for every weight, the paper's ablation) or normal_class (the
# pretrained classifier's loss on the normal class's own training images; PANDA's Fisher is
# from ImageNet, which is not here, and other classes' images are not the one-class protocol's).
FISHER_SOURCES = ("none", "uniform", "normal_class")
# Compute precision of the tail's forward and backward passes (autocast; bfloat16 for GPUs).
PRECISIONS = ("float32", "bfloat16")
