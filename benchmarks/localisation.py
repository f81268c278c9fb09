"""The localisation benchmark: image-level heads (kNN, Gaussian) beside the patch heads
(PatchCore, PaDiM) on texture photographs with synthetic defects of several sizes, through the
real commands, one resumable piece per texture and head.

    python benchmarks/localisation_data.py --out data/textures        # the images (synthetic defects)
    python benchmarks/localisation.py --data data/textures --out results/localisation

For each texture folder of ``--data`` (an anomaly folder with masks): ``python -m
pipeline.extract`` into ``cache/localisation/<texture>.zarr`` (pooled features and the patch maps,
``--patch-maps patch``), then ``python -m stages.<head>`` for each head into
``OUT/<texture>/<head>.json`` (with ``--plots OUT/<texture>/plots/<head>``: ROC curves and, for
the patch heads, a heat-map gallery beside them). A piece whose metrics file exists is not run again, so an
interrupted run goes on where it stopped. Then ``OUT/README.md``: per defect size (the defect
types are ``<kind>_<size>``), image AUROC of every head and, for the patch heads, pixel AUROC and
AUPRO (to 30% FPR), means over the kinds and the textures. The defects are synthetic
(benchmarks/localisation_data.py says how they are made); nothing here is chosen on the test set.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

HEADS = ("knn", "gaussian", "patchcore", "padim")
SIZES = ("small", "medium", "large")  # benchmarks/localisation_data.py's, in this order


def run(command: list[str]) -> float:
    """Run a command of the project, stopping on failure; its wall time in seconds."""
    started = time.perf_counter()
    click.echo("$ " + " ".join(command), err=True)
    done = subprocess.run(command)
    if done.returncode:
        raise click.ClickException(f"{' '.join(command)} failed (exit {done.returncode}).")
    return time.perf_counter() - started


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


ALL = "all"


def size_of(defect_type: str) -> str:
    """The size part of a defect type ``<kind>_<size>``."""
    return defect_type.rpartition("_")[2]


def table(out: Path, textures: list[str], heads: list[str], about: str) -> str:
    """The README of OUT, from the metrics files there."""
    from pipeline import metrics_file

    figures: dict[str, dict[str, dict[str, list[float]]]] = {}  # head -> size -> metric -> values
    sizes: list[str] = []
    for texture in textures:
        for head in heads:
            path = out / texture / f"{head}.json"
            if not path.exists():
                continue
            payload = metrics_file.read(path)
            pixel = payload.get("pixel", {}).get("per_class", {})
            # "all": every defect type against the normal images at once (the metrics file's "overall").
            entry = figures.setdefault(head, {}).setdefault(ALL, {})
            entry.setdefault("image", []).append(payload["overall"]["auroc"])
            if "pixel" in payload:
                entry.setdefault("pixel", []).append(payload["pixel"]["overall"]["pixel_auroc"])
                entry.setdefault("aupro", []).append(payload["pixel"]["overall"]["aupro"])
            for defect, metrics in payload["per_class"].items():
                size = size_of(defect)
                if size not in sizes:
                    sizes.append(size)
                entry = figures.setdefault(head, {}).setdefault(size, {})
                entry.setdefault("image", []).append(metrics["auroc"])
                if defect in pixel:
                    entry.setdefault("pixel", []).append(pixel[defect]["pixel_auroc"])
                    entry.setdefault("aupro", []).append(pixel[defect]["aupro"])
    order = [s for s in SIZES if s in sizes] + [s for s in sizes if s not in SIZES] + [ALL]

    def cell(values: list[float] | None) -> str:
        return f"{100 * np.mean(values):.1f}" if values else "-"

    lines = [f"# Localisation benchmark\n\n{about}\n",
             "Image AUROC / pixel AUROC / AUPRO (to 30% FPR, normalised), in percent, per defect size (the mean over "
             "the defect kinds of that size, `<kind>_<size>`, and over the folders) or per defect type (a type "
             "named without a size); `all`: every defect image against the normal ones at once, averaged over the "
             "folders. `-`: no figure (the head makes no anomaly maps, or the images have no "
             "masks).\n",
             "| head | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    for head in heads:
        if head not in figures:
            continue
        row = [" / ".join(cell(figures[head].get(size, {}).get(metric)) for metric in ("image", "pixel", "aupro"))
               for size in order]
        lines.append(f"| {head} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True,
              help="Folder of texture folders (benchmarks/localisation_data.py --out).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/localisation"),
              show_default=True, help="Where the metrics files and README.md go.")
@click.option("--heads", default=",".join(HEADS), show_default=True, help="Comma-separated heads to run.")
@click.option("--backbone", default="efficientnet_lite0", show_default=True)
@click.option("--image-size", default=224, show_default=True, type=int)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("cache/localisation"),
              show_default=True)
def main(data_dir: Path, out: Path, heads: str, backbone: str, image_size: int, cache_dir: Path) -> None:
    """Run every head on every texture (resumable), then write OUT/README.md."""
    chosen = [h.strip() for h in heads.split(",") if h.strip()]
    textures = sorted(p.name for p in data_dir.iterdir() if (p / "train").is_dir())
    if not textures:
        raise click.ClickException(f"no texture folder (with train/) in {data_dir}.")
    timings = {}
    for texture in textures:
        cache = cache_dir / f"{texture}_{backbone}_{image_size}.zarr"
        timings[f"{texture}/extract"] = run(
            [sys.executable, "-m", "pipeline.extract", "--dataset", "anomaly_folder", "--data-dir",
             str(data_dir / texture), "--backbone", backbone, "--image-size", str(image_size), "--patch-maps",
             "patch", "--maps", "none", "--views", "0", "--out", str(cache), "-q"])
        for head in chosen:
            metrics = out / texture / f"{head}.json"
            if metrics.exists():
                continue
            # --plots: the ROC curves and, for the patch heads, the heat-map gallery (<plots>_maps/).
            timings[f"{texture}/{head}"] = run([sys.executable, "-m", f"stages.{head}", "--cache", str(cache),
                                                "--metrics", str(metrics), "--plots",
                                                str(out / texture / "plots" / head), "-q"])
    synthetic = all("SYNTHETIC" in _text(data_dir / texture / "README.txt") for texture in textures)
    source = ("benchmarks/localisation_data.py: texture photographs with **synthetic** defects and exact masks"
              if synthetic else "real images, laid out as anomaly folders")
    about = (f"Dataset: {', '.join(textures)} from `{data_dir}` ({source}). Backbone {backbone}, "
             f"{image_size}x{image_size} input, protocol normal-vs-anomalies (trained on the normal images only), "
             f"every head with its defaults (params.yaml). "
             f"`python benchmarks/localisation.py --data {data_dir} --out {out}`.")
    (out / "README.md").write_text(table(out, textures, chosen, about))
    # Seconds per piece, kept across resumed runs (a piece's time is that of the run that made it).
    timing_file = out / "timings.json"
    kept = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    timing_file.write_text(json.dumps({**kept, **{k: round(v, 1) for k, v in timings.items()}}, indent=1) + "\n")
    click.echo((out / "README.md").read_text())


if __name__ == "__main__":
    main()
