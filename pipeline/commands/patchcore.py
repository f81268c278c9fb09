"""PatchCore head over a feature cache with patch maps (``python -m pipeline.extract --patch-maps
patch``), for each normal class in turn (or the cache's protocol).

    python -m stages.patchcore --cache cache/anomaly_folder_efficientnet_lite0_224.zarr

Its parameters are the head's (``pipeline/heads/patchcore/settings.py``); what is its own here:
refusing a cache without patch maps before any fit (``patch_heads.py``)."""

from __future__ import annotations

from pipeline.commands import patch_heads
from pipeline.commands.stage import Stage, head_command


def head_class() -> type:
    from pipeline.heads.patchcore.head import PatchCoreHead

    return PatchCoreHead


STAGE = Stage(
    "patchcore", head_class=head_class,
    what_saved="the memory bank of coreset patch vectors, its images' rows and the layers read",
    doc="""Score every test image by its most anomalous patch: the distance of each locally aware
    patch feature to its nearest neighbour in a coreset of the normal training patches, with
    PatchCore's reweighting (Roth et al. 2022); anomaly maps from the patch distances. With an
    anomaly folder's masks, pixel AUROC and AUPRO too.""",
    desc=lambda run: "PatchCore", check=patch_heads.check, describe=patch_heads.describe)
main = head_command(STAGE)

if __name__ == "__main__":
    main()
