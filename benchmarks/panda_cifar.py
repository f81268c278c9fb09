"""DN2 kNN against PANDA-Early and PANDA-EWC on the same images, one class at a time, resumable.

PANDA's claim (Reiss et al., CVPR 2021, table 1) is that adapting the backbone to the normal
class improves DN2's kNN: 92.5 -> 96.2 mean AUROC on CIFAR-10 at 224x224 with ResNet152. This
runner measures the same comparison with the project's backbones on a cache that holds
full-resolution trunk maps (``extract --trunk-maps``):

    python benchmarks/panda_cifar.py --cache cache/cifar10sub1000_efficientnet_lite0_224.zarr \\
        --out results/panda_cifar224

For each class in turn (one-vs-all: the class's training images are normal, the whole test set
is scored) it runs ``stages.knn`` (DN2, k = 2), ``stages.panda --preset paper`` (PANDA-Early:
15 epochs, no EWC) and ``stages.panda --preset ewc`` (PANDA-EWC: 50 epochs, the normal class's
Fisher), each with its own metrics file under OUT/<class>/. A class's files are written when its
run finishes; a later run skips every file that exists, so the table can be made across
several sittings. The test set is scored once at the end of training, which is the figure
reported (PANDA's early stopping is a fixed epoch count chosen without the test set), and at a
few fixed epochs (``--curve-epochs``) for the curve only, labelled as such in the files.

OUT/README.md is rewritten from the metrics files after every class, with the wall time of
each piece (OUT/timings.json).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

# (file name, words, the stage's arguments)
METHODS = (
    ("knn", "DN2 (kNN, k = 2, frozen features)", ["-m", "stages.knn", "--k", "2"]),
    ("panda_early", "PANDA-Early (15 epochs, no EWC)", ["-m", "stages.panda", "--preset", "paper"]),
    ("panda_ewc", "PANDA-EWC (50 epochs, normal-class Fisher, lambda 1e4)", ["-m", "stages.panda", "--preset", "ewc"]),
)


def run(command: list[str]) -> float:
    """Run one stage; its wall seconds. A failure stops the runner (the files made so far stay)."""
    started = time.perf_counter()
    done = subprocess.run(command)
    if done.returncode:
        raise click.ClickException(f"{' '.join(command)} failed (exit {done.returncode}).")
    return time.perf_counter() - started


def table(out: Path, classes: list[str], about: str, timings: dict) -> str:
    """OUT/README.md from the metrics files there: AUROC per class and method, and their means
    over the classes every method has finished."""
    from pipeline import metrics_file

    auroc: dict[str, dict[str, float]] = {}
    for name in classes:
        for method, _, _ in METHODS:
            path = out / name / f"{method}.json"
            if path.exists():
                auroc.setdefault(method, {})[name] = 100 * metrics_file.read(path)["per_class"][name]["auroc"]
    lines = [f"# DN2 against PANDA, one class at a time\n\n{about}\n",
             "AUROC in percent, each method on the same training and test images; the figure is the test set "
             "scored once, after the last epoch (the curves under `<class>/curves_*` hold the test AUROC at a few "
             "fixed epochs, which peek at the test set and choose nothing). `-`: not run yet. Each mean is over "
             "the classes that method has finished, beside DN2's mean on the same classes.\n",
             "| method | " + " | ".join(classes) + " | mean | classes | DN2, same classes |",
             "|---|" + "---|" * (len(classes) + 3)]
    for method, words, _ in METHODS:
        done = auroc.get(method, {})
        cells = [f"{done[c]:.1f}" if c in done else "-" for c in classes]
        both = [c for c in done if c in auroc.get("knn", {})]
        mean = f"{sum(done.values()) / len(done):.1f}" if done else "-"
        knn_mean = f"{sum(auroc['knn'][c] for c in both) / len(both):.1f}" if both else "-"
        lines.append(f"| {words} | " + " | ".join(cells) + f" | {mean} | {len(done)} | {knn_mean} |")
    seconds = {m: sum(v for k, v in timings.items() if k.endswith(f"/{m}")) for m, _, _ in METHODS}
    lines.append("\nWall time (2 shared CPU cores; each piece's time in timings.json): "
                 + ", ".join(f"{words.split(' (')[0]} {seconds[m] / 60:.1f} min" for m, words, _ in METHODS) + ".")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--cache", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A one-vs-all feature cache with full-resolution trunk maps (extract --trunk-maps).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results/panda_cifar224"),
              show_default=True, help="Where the per-class metrics files, curves and README.md go.")
@click.option("--classes", default="all", show_default=True,
              help="Comma-separated class names to run, in this order, or all.")
@click.option("--curve-epochs", default="1,5,10,15", show_default=True,
              help="Epochs after which the PANDA runs also score the test set, for the curve only.")
@click.option("--max-classes", type=click.IntRange(min=1), default=None,
              help="Stop after this many classes have been run in this sitting (resume later).")
@click.option("--methods", default=",".join(m for m, _, _ in METHODS), show_default=True,
              help="Comma-separated methods to run (for example knn,panda_early for every class first, "
                   "panda_ewc later).")
def main(cache: Path, out: Path, classes: str, curve_epochs: str, max_classes: int | None, methods: str) -> None:
    """Run DN2, PANDA-Early and PANDA-EWC per class (resumable), then write OUT/README.md."""
    from pipeline.store.cache import FeatureCache

    store = FeatureCache.open(str(cache))
    every_class = list(store.classes)  # the README's table covers them all, whichever this sitting runs
    names = every_class if classes == "all" else [c.strip() for c in classes.split(",") if c.strip()]
    unknown = sorted(set(names) - set(store.classes))
    if unknown:
        raise click.ClickException(f"no such class in {cache}: {', '.join(unknown)}.")
    meta = store.metadata
    n_train = len(store.labels("train"))
    about = (f"Dataset {meta['dataset']['name']} ({n_train} training images over {len(store.classes)} classes, "
             f"{len(store.labels('test'))} test images), backbone {meta['backbone']['name']} (frozen for DN2; PANDA "
             f"adapts the layers after the cached trunk maps), {meta['preprocessing']['image_size']}x"
             f"{meta['preprocessing']['image_size']} input, protocol one-vs-all. "
             f"`python benchmarks/panda_cifar.py --cache {cache} --out {out}`.")
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = sorted(set(chosen) - {m for m, _, _ in METHODS})
    if unknown:
        raise click.ClickException(f"no such method: {', '.join(unknown)} (known: "
                                   f"{', '.join(m for m, _, _ in METHODS)}).")
    timing_file = out / "timings.json"
    timings = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    ran = 0
    for name in names:
        if max_classes is not None and ran >= max_classes:
            break
        todo = [m for m in METHODS if m[0] in chosen and not (out / name / f"{m[0]}.json").exists()]
        for method, _, arguments in todo:
            command = [sys.executable, *arguments, "--cache", str(cache), "--classes", name,
                       "--metrics", str(out / name / f"{method}.json"), "-q"]
            if method != "knn":
                command += ["--curves", str(out / name / f"curves_{method}"), "--curve-epochs", curve_epochs]
            timings[f"{name}/{method}"] = round(run(command), 1)
            timing_file.parent.mkdir(parents=True, exist_ok=True)
            timing_file.write_text(json.dumps(timings, indent=1) + "\n")
        ran += bool(todo)
        (out / "README.md").write_text(table(out, every_class, about, timings))
    (out / "README.md").write_text(table(out, every_class, about, timings))
    click.echo((out / "README.md").read_text())


if __name__ == "__main__":
    main()
