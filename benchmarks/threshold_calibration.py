"""How often saved heads flag the test images at their saved threshold.

    python -m stages.knn    --cache C --save-heads heads/knn   --metrics /tmp/k.json
    python -m stages.plume  --cache C --save-heads heads/plume --metrics /tmp/p.json
    python -m stages.anomem --cache C --save-heads heads/anomem --metrics /tmp/a.json
    python benchmarks/threshold_calibration.py --cache C heads/knn heads/plume heads/anomem

A head's threshold is the q-quantile (default 0.95) of its scores on its training images, so
ideally about 1 - q of new normal images are flagged. kNN's training scores are leave-one-out;
PLUME's and AnoMem's are of the very images they were fitted on, which score lower than unseen
normal images, so more than 1 - q of those are flagged. This prints, per head folder, the
fraction of each class's test normals flagged (the false-alarm rate) and of its test anomalies
flagged (the detection rate), averaged over classes, with the per-class range; and the same
with the threshold that `stages.score --calibrate` takes instead: the q-quantile of the scores
of held-out normal images (here every other test normal of the class, by index; the rates are
then measured on the other test normals and on all test anomalies).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np


@click.command()
@click.option("--cache", "cache_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.argument("head_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
def main(cache_path: str, head_dirs: tuple[str, ...]) -> None:
    from pipeline.store.cache import FeatureCache
    from pipeline.heads.loading import load_head

    cache = FeatureCache.open(cache_path)
    labels = cache.labels("test")
    features = cache.features("test")
    maps = {name: cache.read("test", f"maps/{name}") for name in cache.map_names()}
    print(f"{cache_path}: {len(labels)} test images, {len(cache.classes)} classes; one-vs-all")
    for folder in head_dirs:
        alarms, detections, quantiles = [], [], set()
        calibrated_alarms, calibrated_detections = [], []
        for file in sorted(Path(folder).glob("*.head")):
            saved = load_head(file, device="cpu")
            c = cache.classes.index(saved.class_name)
            scores = saved.score(features, {n: maps[n] for n in saved.maps})
            flagged = scores > saved.threshold
            alarms.append(flagged[labels == c].mean())
            detections.append(flagged[labels != c].mean())
            normals = np.flatnonzero(labels == c)
            threshold = np.quantile(scores[normals[0::2]], saved.threshold_quantile)
            calibrated_alarms.append((scores[normals[1::2]] > threshold).mean())
            calibrated_detections.append((scores[labels != c] > threshold).mean())
            quantiles.add(saved.threshold_quantile)
        if not alarms:
            raise click.ClickException(f"no *.head files in {folder}")
        q = ", ".join(f"{v:g}" for v in sorted(quantiles))
        print(f"{folder}: threshold at the {q}-quantile of the training scores ({len(alarms)} heads): "
              f"test normals flagged {100 * np.mean(alarms):.1f}% (classes {100 * min(alarms):.1f}-"
              f"{100 * max(alarms):.1f}%; ideal {100 * (1 - min(quantiles)):.0f}%), test anomalies flagged "
              f"{100 * np.mean(detections):.1f}%")
        print(f"    calibrated on held-out normals: test normals flagged {100 * np.mean(calibrated_alarms):.1f}% "
              f"(classes {100 * min(calibrated_alarms):.1f}-{100 * max(calibrated_alarms):.1f}%), test anomalies "
              f"flagged {100 * np.mean(calibrated_detections):.1f}%")


if __name__ == "__main__":
    main()
