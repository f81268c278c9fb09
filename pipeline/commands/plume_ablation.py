"""Table 1c of the PLUME paper in one command: several perturbation/guidance variants on the
same cache, the same classes and seeds, side by side with kNN and the published means.

    python -m stages.plume_ablation --cache cache/digits_efficientnet_lite0_224.zarr --dim native \\
        --epochs 20 --knn-metrics metrics/knn_efficientnet_lite0.json --table results/plume_ablation.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pipeline import metrics_file, params
from pipeline.cli import cache_label, check_outputs, info, safe_filename, write_text
from pipeline.commands.options import apply_preset, declared_options, preset_option
from pipeline.commands.plume import STAGE, add_training_figures, plume_about
from pipeline.commands.stage import CONTEXT, cache_options, describe, open_cache, read_paths
from pipeline.distributed import open_client
from pipeline.errors import PipelineError
from pipeline.heads.plume.settings import GUIDANCES, PERTURBATIONS, PlumeParams
from pipeline.heads.settings import SeedsParams
from pipeline.protocol import NORMAL_VS_ANOMALIES, ONE_VS_ALL
from pipeline.report.heads.plume import check_same_cache, plume_ablation_table
from pipeline.report.published import has_published_column

TABLE_1C = "gaussian/none,addmult/none,linear/none,linear/mean,linear/contrastive"
# The variant is the table's rows; no head of the ablation is saved, so none needs a threshold.
NOT_OPTIONS = ("perturbation", "guidance", "threshold_quantile")


def parse_variants(value: str) -> list[tuple[str, str]]:
    variants = []
    for item in value.split(","):
        perturbation, _, guidance = item.strip().partition("/")
        if perturbation not in PERTURBATIONS or guidance not in GUIDANCES:
            raise click.BadParameter(f"{item.strip()!r}: write PERTURBATION/GUIDANCE with a perturbation in "
                                     f"{', '.join(PERTURBATIONS)} and a guidance in {', '.join(GUIDANCES)}")
        variants.append((perturbation, guidance))
    return variants


@click.command(context_settings=CONTEXT)
@cache_options("plume")
@declared_options("plume", PlumeParams, SeedsParams, skip=NOT_OPTIONS)
@preset_option(PlumeParams.PRESETS)
@click.option("--variants", default=TABLE_1C, show_default=True, callback=lambda c, p, v: parse_variants(v),
              help="Comma-separated PERTURBATION/GUIDANCE pairs (the default is the paper's table 1c; "
                   "add gaussian/contrastive, addmult/contrastive, add/contrastive, mult/contrastive for "
                   "the rest of tables 1c and 8).")
@click.option("--knn-metrics", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A kNN metrics file on the same cache (python -m stages.knn) to add as a row.")
@click.option("--metrics", "metrics_path", default="metrics/plume_ablation.json", show_default=True,
              help="Metrics JSON with one section per variant (same layout as python -m stages.plume).")
@click.option("--plots", "plots_dir", default=None,
              help="Folder for ROC and training curves, one subfolder per variant.")
@click.option("--table", "table_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the Markdown table here.")
@click.pass_context
def main(ctx: click.Context, cache_path: str, protocol: str, classes: Any, expect: tuple[str, ...], scheduler: str,
         variants: list[tuple[str, str]], knn_metrics: str | None, metrics_path: str, plots_dir: str | None,
         table_path: str | None, preset: str | None, seeds: tuple[int, ...], **settings: Any) -> None:
    """Train every PLUME variant on every chosen class and seed and lay the AUROCs out like the
    paper's ablation table (final epoch and, separately named, best epoch)."""
    from pipeline.devices import resolve_device
    from pipeline.evaluate import evaluate_one_vs_all, metrics_payload, write_plots
    from pipeline.heads.plume.head import PlumeHead

    params.load_params()  # a params.yaml that fails its check stops here, before anything is read or written
    settings = apply_preset(ctx, settings, PlumeParams.PRESETS, preset)
    check_outputs(files={"--metrics": metrics_path, "--table": table_path}, folders={"--plots": plots_dir},
                  inputs={"--cache": cache_path, **read_paths(ctx),
                          "--knn-metrics": knn_metrics and [knn_metrics, metrics_file.sidecar_path(knn_metrics)]})
    settings["device"] = str(resolve_device(settings["device"]))
    seeds = list(seeds)
    # Every variant's settings are checked before the first one trains for hours.
    heads = {f"{p}/{g}": PlumeHead(perturbation=p, guidance=g, threshold_quantile=None, **settings)
             for p, g in variants}
    for head in heads.values():
        head._check_params()
    cache, tasks = open_cache(cache_path, expect, classes, protocol)
    if any(task.by_type for task in tasks):
        raise PipelineError(f"stages.plume_ablation lays out the PLUME paper's one-vs-all table (table 1c), and "
                            f"{cache_path} is evaluated {NORMAL_VS_ANOMALIES}: give --protocol one-vs-all, or run "
                            f"python -m stages.plume --perturbation P --guidance G for each variant.")
    knn = metrics_file.read(knn_metrics) if knn_metrics else None
    if knn is not None:  # before hours of training, not after
        check_same_cache(knn["about"], {**cache_label(cache.metadata), "protocol": ONE_VS_ALL})
    payloads = {}
    # One cluster for all variants: starting workers costs seconds each time.
    with open_client(scheduler) as client:
        for name, head in heads.items():
            results = evaluate_one_vs_all(cache, head, tasks, seeds=seeds, track_epochs=True, desc=f"PLUME {name}",
                                          client=client)
            about = {**describe(STAGE, head, {"seeds": seeds}, seeds), **plume_about(head, cache, seeds)}
            payloads[name] = metrics_payload(results, cache.metadata, about)
            add_training_figures(payloads[name], results)
            if plots_dir is not None:
                variant_dir = Path(plots_dir) / safe_filename(name.replace("/", "_"))
                write_plots(results, variant_dir / "roc", variant_dir / "training")
            info(f"{name}: mean AUROC {100 * payloads[name]['mean']['auroc']:.2f}% (final epoch), "
                 f"{100 * payloads[name]['mean']['best_epoch_auroc']:.2f}% (best epoch)")
    about = next(iter(payloads.values()))["about"]
    metrics_file.write(metrics_path, {"variants": {name: {"mean": p["mean"], "per_class": p["per_class"]}
                                                   for name, p in payloads.items()},
                                      "about": {k: v for k, v in about.items() if k not in ("perturbation", "guidance")}})
    table = plume_ablation_table(payloads, knn=knn, paper_column=has_published_column(about))
    if table_path:
        write_text(table_path, table)
    click.echo(table)


if __name__ == "__main__":
    main()
