"""PaDiM head over a feature cache with patch maps (``python -m pipeline.extract --patch-maps
patch``), for each normal class in turn (or the cache's protocol).

    python -m stages.padim --cache cache/anomaly_folder_efficientnet_lite0_224.zarr

Its parameters are the head's (``pipeline/heads/padim/settings.py``); what is its own here:
refusing a cache without patch maps before any fit (``patch_heads.py``)."""

from __future__ import annotations

from pipeline.commands import patch_heads
from pipeline.commands.stage import Stage, head_command


def head_class() -> type:
    from pipeline.heads.padim.head import PadimHead

    return PadimHead


STAGE = Stage(
    "padim", head_class=head_class,
    what_saved="each patch position's mean and whitening factor (float64), the channels kept and the layers read",
    doc="""Score every test image by the largest Mahalanobis distance of its patches to a Gaussian
    fitted per patch position on the normal training images, over a random subset of channels
    (Defard et al. 2021); anomaly maps from those distances. With an anomaly folder's masks,
    pixel AUROC and AUPRO too. CPU, float64.""",
    desc=lambda run: "PaDiM", check=patch_heads.check, describe=patch_heads.describe)
main = head_command(STAGE)

if __name__ == "__main__":
    main()
