"""IGD head over a feature cache, one-vs-all for each class (or the cache's protocol), over
several seeds.

    python -m stages.igd --cache cache/digits_efficientnet_lite0_224.zarr --curves plots/igd_training

Its parameters are the head's (``pipeline/heads/igd/settings.py``); it is trained by epochs,
so the stage records the test AUROC after each (--curves).
"""

from __future__ import annotations

from pipeline.commands.stage import Stage, head_command

def head_class() -> type:
    from pipeline.heads.igd.head import IGDHead

    return IGDHead


STAGE = Stage(
    "igd", head_class=head_class, what_saved="the input statistics, encoder, decoder and Gaussian descriptor (first seed)",
    doc="""Train IGD (an autoencoder whose codes a Gaussian descriptor gathers, with an adversarial
    critic on interpolated codes) on each normal class in turn, and score the test set with the
    reconstruction error plus 1 - p(normal). The test AUROC is recorded after every epoch: the
    reported AUROC is the final epoch's; the best epoch's is reported separately, since choosing
    it reads the test set.""",
    curves=True, desc=lambda run: "IGD")
main = head_command(STAGE)

if __name__ == "__main__":
    main()
