"""The default-by-measurement check of issue #35: int8 features against float32 ones, per class
and mean AUROC of the kNN and Gaussian heads (one-vs-all), from their metrics files.

    python benchmarks/int8_auroc.py results/precision_int8 cifar10jpg fashionmnist \
        --out results/precision_int8/auroc_int8_vs_float32.md

Reads <folder>/<dataset>_{float32,int8}_{knn,gaussian}.json (written by python -m stages.knn /
stages.gaussian --cache <the cache> --metrics ...). The rule set beforehand: int8 may become the
default if, for every head and dataset, the mean AUROC moves by at most 0.3 points and no class by
more than 1 point.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

MEAN_BOUND, CLASS_BOUND = 0.3, 1.0  # AUROC points


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("datasets", nargs=-1, required=True)
@click.option("--out", default=None, help="Also write the table to this file.")
def main(folder: str, datasets: tuple[str, ...], out: str | None) -> None:
    lines, verdicts = [], []
    for dataset in datasets:
        for head in ("knn", "gaussian"):
            files = {p: Path(folder) / f"{dataset}_{p}_{head}.json" for p in ("float32", "int8")}
            if not all(f.is_file() for f in files.values()):
                lines.append(f"{dataset} {head}: missing {', '.join(str(f) for f in files.values() if not f.is_file())}")
                verdicts.append(None)
                continue
            runs = {p: json.loads(f.read_text()) for p, f in files.items()}
            classes = list(runs["float32"]["per_class"])
            lines += [f"### {dataset}, {head} (AUROC %, one-vs-all)", "",
                      "| class | float32 | int8 | int8 - float32 |", "|---|---|---|---|"]
            worst = 0.0
            for name in classes:
                a, b = (100 * runs[p]["per_class"][name]["auroc"] for p in ("float32", "int8"))
                worst = max(worst, abs(b - a))
                lines.append(f"| {name} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
            a, b = (100 * runs[p]["mean"]["auroc"] for p in ("float32", "int8"))
            lines.append(f"| **mean** | {a:.2f} | {b:.2f} | **{b - a:+.2f}** |")
            within = abs(b - a) <= MEAN_BOUND and worst <= CLASS_BOUND
            verdicts.append(within)
            lines += ["", f"mean moved {b - a:+.2f} (bound {MEAN_BOUND}), largest class move {worst:.2f} (bound "
                          f"{CLASS_BOUND}): {'within' if within else 'OUTSIDE'} the rule", ""]
    if any(v is None for v in verdicts):
        lines.append("Verdict: incomplete (some runs are missing).")
    else:
        lines.append(f"Verdict: int8 {'passes' if all(verdicts) else 'fails'} the rule for the default.")
    text = "\n".join(lines)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
