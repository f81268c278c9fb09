"""PatchCore's coreset selection and patch scoring: this project's against anomalib's PatchCore
code, on the same patch features, timed in one process.

What it measures, on a feature cache made with ``extract --patch-maps patch`` (by default the
brick texture with synthetic defects of benchmarks/localisation_data.py, EfficientNet-Lite0 at
224 pixels, the stride8 + stride16 maps):

1. The training patch bank, built as the PatchCore head builds it (``model.patch_features``,
   3 x 3 neighbourhoods, the concatenated channels kept whole: 40 + 112 = 152): all training
   images' patches, rows x 152 float32 (60 x 28 x 28 = 47,040 rows for brick).
2. Greedy k-center coreset selection at ``--fraction`` (0.1):
   - as each library ships it: the project's ``greedy_coreset`` (128-d Gaussian projection)
     against anomalib's ``KCenterGreedy`` (its own sparse random projection, whose dimension is
     the Johnson-Lindenstrauss bound for eps = 0.9: 265 here, more than the 152 it starts from);
   - on the same points: both on the project's 128-d projection of the rows, with no further
     projection (``greedy_coreset(..., projection_dim=None)``; ``KCenterGreedy`` projects only a
     2-D embedding, so it is handed the points as (n, 1, 128), which it flattens back), from the
     same first row (anomalib draws it with ``torch.randint`` from torch's global generator,
     seeded here as ``coreset_draws`` seeds its own: the same draw). The chosen index sequences
     are compared step by step, and with an exact float64 run of the same greedy rule, to tell a
     float32 near-tie from a real difference.
   Alternating, ``--repeats`` runs each, median; the ratio is anomalib's time over the
   project's. anomalib's tqdm bar is switched off (TQDM_DISABLE=1).
3. Patch scores: every test patch's distance to its nearest coreset row (the head's bank: the
   rows the project's coreset keeps), the project's ``nearest_distances`` (its kNN engine)
   against ``PatchcoreModel.nearest_neighbors`` (anomalib's chunked ``euclidean_dist`` + min;
   called on a stand-in holding only ``memory_bank``, so no backbone is built), same timing
   scheme, and the largest difference between their distances (and of each from float64 on a
   sample of queries).
4. Peak memory of each of the four computations: a fresh subprocess per method imports both
   libraries, loads the inputs, resets its peak resident set (``/proc/self/clear_refs``, 5) and
   runs the method once; reported as the peak (VmHWM) less the resident set just before the call,
   and the process's whole peak. /proc's VmHWM rather than ``resource.getrusage``: on Linux a
   child's ru_maxrss keeps the peak of the process it was forked from across the exec (every
   probe read the parent's 1.9 GB). Sizes are in MB (10^6 bytes).

Everything runs on the CPU with torch's default thread count, in a process whose glibc mmap
threshold is fixed at 1 MB (``_fix_mmap_threshold``, see ``main``): without it anomalib's
same-points run grew without bound (23 GB, killed by the OOM killer). Timings are ratios within one run:
on a shared machine the absolute seconds move with the load (the load average is recorded).

The environment: anomalib is not in the project's venv (its own extra, ``bench-anomalib``, not ``bench``: it brings
Lightning, timm, kornia, OpenCV and pandas for this one comparison; installed after the project
it resolves without conflict, though the project's dvc pins omegaconf to 2.3.x). Make a venv
with the project's torch, then anomalib, then the project:

    python3 -m venv /work/venvs/anomalib && . /work/venvs/anomalib/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1
    pip install -e '.[bench-anomalib]'   # anomalib==2.7.0
    python -c "import pipeline.heads.patchcore.model, anomalib"

Run (about half an hour on 2 cores: anomalib's coreset loop is the slow part):

    python benchmarks/patchcore_speed.py --cache cache/localisation/brick_efficientnet_lite0_224.zarr

It writes ``results/bench_patchcore_speed.txt`` (``--out``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's coreset progress bar, read when tqdm is imported

import datetime
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import torch

from pipeline.evaluate import read_features
from pipeline.heads.knn.engine import _fix_mmap_threshold, knn_distances
from pipeline.heads.patchcore.head import PATCHES_PER_BLOCK, PatchCoreHead
from pipeline.heads.patchcore.model import (
    Bank,
    coreset_draws,
    coreset_size,
    greedy_coreset,
    nearest_distances,
    patch_features,
    project,
)
from pipeline.heads.patchcore.settings import PatchCoreParams
from pipeline.heads.patches import patch_layers, row_blocks
from pipeline.store import FeatureCache

warnings.filterwarnings("ignore", category=FutureWarning)  # timm / anomalib import-time notices

PROJECTION_DIM = PatchCoreParams.projection_dim  # 128, the head's default
NEIGHBOURHOOD = PatchCoreParams.neighbourhood    # 3
DIM = PatchCoreParams.dim                        # 1024: more than the maps' channels, so all are kept
MB = 1e6
PROBE_LIMIT_GB = 8  # a memory probe past this is stopped and reported as such
EXACT_SAMPLE = 2000  # test patches whose nearest distance is also computed in float64


# --- the inputs, as the head makes them --------------------------------------------------------

def patch_rows(cache: FeatureCache, split: str, images: int | None) -> tuple[np.ndarray, list[str], int]:
    """The split's patch vectors, (images x H x W, dim) float32, built a block of images at a time
    as ``PatchCoreHead._fit`` builds its bank; with the layers read and the images used."""
    features = read_features(cache, split, trunk=True)
    layers = patch_layers(features, None, "PatchCore")
    count = len(features.trunk[layers[0]]) if images is None else min(images, len(features.trunk[layers[0]]))
    channels = sum(int(features.trunk[name].shape[1]) for name in layers)
    dim = min(DIM, channels)
    height, width = features.trunk[layers[0]].shape[2:]
    per_image = height * width
    rows = np.empty((count * per_image, dim), dtype=np.float32)
    for block in row_blocks(count, max(1, PATCHES_PER_BLOCK // per_image)):
        rows[block.start * per_image:block.stop * per_image] = \
            patch_features(features, layers, block, NEIGHBOURHOOD, dim).reshape(-1, dim).numpy()
    return rows, layers, count


# --- the two implementations -------------------------------------------------------------------

def project_coreset(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """The project's coreset as the head chooses it: 128-d Gaussian projection, CPU."""
    return greedy_coreset(rows, count, PROJECTION_DIM, seed)


def anomalib_coreset(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """anomalib's coreset as its PatchCore chooses it (``PatchcoreModel.subsample_embedding``):
    ``KCenterGreedy`` on the 2-D embedding, with its sparse random projection. Its random numbers
    come from torch's and NumPy's global generators, seeded here for a repeatable run."""
    from anomalib.models.components.sampling import KCenterGreedy

    torch.manual_seed(seed)
    np.random.seed(seed)
    return np.asarray(KCenterGreedy(torch.from_numpy(rows), fraction).select_coreset_idxs(), dtype=np.int64)


def project_coreset_on_points(points: np.ndarray, count: int, seed: int) -> np.ndarray:
    """The project's greedy loop on given points, no projection; first row from ``coreset_draws``."""
    return greedy_coreset(points, count, None, seed)


def anomalib_coreset_on_points(points: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """anomalib's greedy loop on the same points with no projection: ``KCenterGreedy`` projects
    only a 2-D embedding and takes any other as it is (flattened per row), so the points go in
    as (n, 1, d). Its first row is ``torch.randint(n, (1,))`` on torch's global generator, which
    seeded with ``seed`` draws what ``coreset_draws(d, n, None, seed)`` draws."""
    from anomalib.models.components.sampling import KCenterGreedy

    torch.manual_seed(seed)
    embedding = torch.from_numpy(points).reshape(len(points), 1, -1)
    return np.asarray(KCenterGreedy(embedding, fraction).select_coreset_idxs(), dtype=np.int64)


def project_scores(bank: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The project's patch scores: ``nearest_distances`` (the kNN engine, float32), float64 out."""
    return nearest_distances(Bank(torch.from_numpy(bank)), torch.from_numpy(queries))


def anomalib_scores(bank: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """anomalib's patch scores: ``PatchcoreModel.nearest_neighbors(embedding, n_neighbors=1)``,
    its own code, on a stand-in object that holds only what the method reads (``memory_bank``
    and the static ``euclidean_dist``), so that no backbone is built."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = SimpleNamespace(memory_bank=torch.from_numpy(bank), euclidean_dist=PatchcoreModel.euclidean_dist)
    with torch.inference_mode():
        distances, _ = PatchcoreModel.nearest_neighbors(model, torch.from_numpy(queries), n_neighbors=1)
    return distances.numpy()


# --- measuring ---------------------------------------------------------------------------------

def alternate(runs: dict[str, callable], repeats: int) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Each run ``repeats`` times, taking turns (A B A B ...): wall seconds, last result each."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, object] = {}
    for repeat in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            results[name] = run()
            seconds[name].append(time.perf_counter() - started)
            click.echo(f"  {name} #{repeat + 1}: {seconds[name][-1]:.2f} s (load {os.getloadavg()[0]:.2f})", err=True)
    return seconds, results


def exact_greedy(points: np.ndarray, count: int, start: int) -> np.ndarray:
    """The greedy k-center rule in float64 (centred points, squared distances): the reference for
    which of two float32 runs keeps to the exact choice longer."""
    x = points.astype(np.float64)
    x -= x.mean(0)
    norms = np.einsum("ij,ij->i", x, x)
    nearest = np.full(len(x), np.inf)
    chosen = np.empty(count, dtype=np.int64)
    index = start
    for step in range(count):
        chosen[step] = index
        np.minimum(nearest, norms - 2.0 * (x @ x[index]) + norms[index], out=nearest)
        index = int(np.argmax(nearest))
    return chosen


def first_difference(a: np.ndarray, b: np.ndarray) -> int | None:
    """The first step where two index sequences differ (None: identical)."""
    differ = np.flatnonzero(a[:min(len(a), len(b))] != b[:min(len(a), len(b))])
    if len(differ):
        return int(differ[0])
    return None if len(a) == len(b) else min(len(a), len(b))


def distances_to(points: np.ndarray, chosen: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float64 distance of each of ``rows`` to its nearest of ``points[chosen]``."""
    x = points.astype(np.float64)
    centres = x[chosen]
    out = np.empty(len(rows))
    for i, row in enumerate(rows):
        out[i] = np.sqrt(((centres - x[row]) ** 2).sum(1).min())
    return out


def coverage_radius(rows: np.ndarray, chosen: np.ndarray) -> float:
    """The k-center objective in the rows' own space: the largest distance of a training row to
    its nearest chosen row (the project's exact engine, float32)."""
    return float(np.sqrt(knn_distances(rows[np.sort(chosen)], rows, k=1)[:, 0].max()))


# --- peak memory in a fresh process ------------------------------------------------------------

METHODS = ("project_coreset", "anomalib_coreset", "project_scores", "anomalib_scores")


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else -1


def _guard(limit_kb: int = PROBE_LIMIT_GB << 20) -> None:
    """End this process if its resident set passes ``limit_kb`` (a shared machine)."""
    def watch() -> None:
        while _status_kb("VmRSS") < limit_kb:
            time.sleep(0.1)
        print(json.dumps({"over_limit_gb": PROBE_LIMIT_GB}), flush=True)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def run_probe(method: str, inputs: Path, fraction: float, seed: int) -> dict:
    """Run one method once in this (fresh) process, with glibc's default malloc settings, on the
    saved inputs; its memory."""
    _guard()
    rows = np.load(inputs / "rows.npy")
    bank, queries = np.load(inputs / "bank.npy"), np.load(inputs / "queries.npy")
    count = coreset_size(len(rows), fraction)
    run = {"project_coreset": lambda: project_coreset(rows, count, seed),
           "anomalib_coreset": lambda: anomalib_coreset(rows, fraction, seed),
           "project_scores": lambda: project_scores(bank, queries),
           "anomalib_scores": lambda: anomalib_scores(bank, queries)}[method]
    # Both libraries imported in every probe (the imports are not part of the call).
    import anomalib.models.components.sampling  # noqa: F401
    import anomalib.models.image.patchcore.torch_model  # noqa: F401
    loaded = _status_kb("VmHWM")  # the peak of the imports and the inputs
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    except OSError:
        reset = False
    before = _status_kb("VmRSS")
    run()
    return {"method": method, "hwm_loaded_kb": loaded, "rss_before_kb": before, "hwm_kb": _status_kb("VmHWM"),
            "hwm_reset": reset}


def memory_of(method: str, inputs: Path, fraction: float, seed: int) -> dict:
    command = [sys.executable, __file__, "--probe", method, "--inputs", str(inputs), "--fraction", str(fraction),
               "--seed", str(seed)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise click.ClickException(f"the memory probe {method} failed: {done.stderr[-2000:]}")
    return json.loads(lines[-1])


# --- the report --------------------------------------------------------------------------------

def machine() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = re.search(r"^Model name:\s*(.+)$", text, re.MULTILINE).group(1).strip()
        cpus = re.search(r"^CPU\(s\):\s*(\d+)", text, re.MULTILINE).group(1)
    except (OSError, subprocess.CalledProcessError, AttributeError):
        model, cpus = platform.processor() or "unknown CPU", str(os.cpu_count())
    return f"{model}, {cpus} cores (lscpu); torch threads {torch.get_num_threads()}"


def median(values: list[float]) -> float:
    return statistics.median(values)


def timing_line(name: str, seconds: list[float]) -> str:
    runs = ", ".join(f"{s:.2f}" for s in seconds)
    return f"  {name:<44} {median(seconds):9.2f} s   (runs: {runs})"


@click.command()
@click.option("--cache", "cache_path", type=click.Path(path_type=Path),
              default=Path("cache/localisation/brick_efficientnet_lite0_224.zarr"), show_default=True,
              help="A feature cache with the full-resolution patch maps (extract --patch-maps patch).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/bench_patchcore_speed.txt"),
              show_default=True, help="The results file.")
@click.option("--fraction", type=float, default=0.1, show_default=True, help="Coreset fraction.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed runs of each method (median).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of both coreset searches.")
@click.option("--train-images", type=int, default=None,
              help="Use only the first N training images (a quick check; default: all).")
@click.option("--test-images", type=int, default=None,
              help="Score only the first N test images (a quick check; default: all).")
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory subprocesses.")
@click.option("--probe", type=click.Choice(METHODS), default=None, hidden=True)
@click.option("--inputs", type=click.Path(path_type=Path), default=None, hidden=True)
def main(cache_path: Path, out: Path, fraction: float, repeats: int, seed: int, train_images: int | None,
         test_images: int | None, no_memory: bool, probe: str | None, inputs: Path | None) -> None:
    if probe is not None:  # the memory subprocess
        click.echo(json.dumps(run_probe(probe, inputs, fraction, seed)))
        return
    import anomalib

    # A fixed 1 MB mmap threshold, as the project's engine sets for its out-of-core runs. With
    # glibc's sliding threshold (raised by the earlier runs' frees of large blocks) anomalib's
    # per-step (n x 128) temporary of the same-points run, 24 MB, comes from the heap, and the
    # resident set grew by ~0.5 GB a second until the OOM killer stopped the run at 23 GB;
    # with the fixed threshold it stays under 2 GB. The probes below keep glibc's defaults.
    _fix_mmap_threshold()
    command = "python benchmarks/patchcore_speed.py " + " ".join(sys.argv[1:])
    loads = [os.getloadavg()]
    cache = FeatureCache.open(cache_path)
    meta = cache.metadata
    rows, layers, n_train = patch_rows(cache, "train", train_images)
    queries, _, n_test = patch_rows(cache, "test", test_images)
    n, dim = rows.shape
    count = coreset_size(n, fraction)
    click.echo(f"bank {n} x {dim}, coreset {count}, queries {len(queries)}", err=True)

    # --- coreset, as shipped
    click.echo("coreset as each library ships it:", err=True)
    shipped_t, shipped = alternate({"project": lambda: project_coreset(rows, count, seed),
                                    "anomalib": lambda: anomalib_coreset(rows, fraction, seed)}, repeats)
    ours, theirs = shipped["project"], shipped["anomalib"]
    overlap_shipped = len(np.intersect1d(ours, theirs)) / count
    radius = {name: coverage_radius(rows, chosen) for name, chosen in shipped.items()}

    # --- coreset on the same points, from the same first row
    matrix, start = coreset_draws(dim, n, PROJECTION_DIM, seed)
    points = project(rows, matrix).numpy()
    _, same_start = coreset_draws(points.shape[1], n, None, seed)
    click.echo("coreset on the same 128-d points:", err=True)
    same_t, same = alternate({"project": lambda: project_coreset_on_points(points, count, seed),
                              "anomalib": lambda: anomalib_coreset_on_points(points, fraction, seed)}, repeats)
    p, a = same["project"], same["anomalib"]
    exact = exact_greedy(points, count, same_start)
    split = first_difference(p, a)
    agreement = [f"  first row: project {p[0]}, anomalib {a[0]} (coreset_draws: {same_start})",
                 f"  coreset sizes: project {len(p)}, anomalib {len(a)}"]
    if split is None:
        agreement.append(f"  the {count} chosen indices are identical, in the same order")
    else:
        agreement.append(f"  identical for the first {split} of {count} steps; at step {split} the project "
                         f"chose row {p[split]}, anomalib row {a[split]}")
        if split < min(len(p), len(a)):
            d = distances_to(points, p[:split], np.array([p[split], a[split]]))
            agreement.append(f"  their float64 distances to the {split} rows chosen before: {d[0]:.9f} and "
                             f"{d[1]:.9f} (relative gap {abs(d[0] - d[1]) / max(d):.2e}; float32 epsilon "
                             f"{np.finfo(np.float32).eps:.2e})")
        agreement.append(f"  after it the sequences differ; same set of rows: "
                         f"{len(np.intersect1d(p, a)) / count:.1%} of the coreset")
    for name, chosen in (("project", p), ("anomalib", a)):
        step = first_difference(chosen, exact)
        agreement.append(f"  {name} against the float64 greedy run: "
                         + ("identical" if step is None else f"first differs at step {step}"))

    # --- scoring: the test patches against the head's bank (the project's coreset rows)
    bank = np.ascontiguousarray(rows[np.sort(ours)])
    head_check = "not checked (--train-images / --test-images)"
    if train_images is None and test_images is None:  # the inputs are the head's own
        head = PatchCoreHead(coreset_fraction=fraction, seed=seed)
        head.fit(read_features(cache, "train", trunk=True))
        same_bank = np.array_equal(head.bank_.numpy(), bank)
        grids = head.patch_scores(read_features(cache, "test", trunk=True)).reshape(-1)
        same_scores = np.array_equal(grids, project_scores(bank, queries))
        head_check = (f"PatchCoreHead(coreset_fraction={fraction:g}, seed={seed}).fit(train): bank "
                      f"{'identical' if same_bank else 'DIFFERENT'}; its patch_scores(test) "
                      f"{'identical to' if same_scores else 'DIFFER from'} nearest_distances on this bank")
    click.echo("patch scores:", err=True)
    score_t, scored = alternate({"project": lambda: project_scores(bank, queries),
                                 "anomalib": lambda: anomalib_scores(bank, queries)}, repeats)
    ours_d, theirs_d = scored["project"], scored["anomalib"].astype(np.float64)
    sample = np.random.default_rng(seed).choice(len(queries), min(EXACT_SAMPLE, len(queries)), replace=False)
    exact_d = torch.cdist(torch.from_numpy(queries[sample]).double(), torch.from_numpy(bank).double()).min(1) \
        .values.numpy()

    # --- memory, a fresh process per method
    memory = {}
    if not no_memory:
        with tempfile.TemporaryDirectory() as folder:
            np.save(Path(folder) / "rows.npy", rows)
            np.save(Path(folder) / "bank.npy", bank)
            np.save(Path(folder) / "queries.npy", queries)
            for method in METHODS:
                click.echo(f"memory: {method}", err=True)
                memory[method] = memory_of(method, Path(folder), fraction, seed)
    loads.append(os.getloadavg())

    # --- the file
    shape = meta["features"]["patch"]["shapes"]
    image_size = meta["preprocessing"]["image_size"]
    backbone = meta["backbone"]["name"]
    dataset = meta["dataset"].get("folder", meta["dataset"]["name"])
    label = (f"{dataset} texture with synthetic defects (benchmarks/localisation_data.py), {backbone} at "
             f"{image_size} px, layers {' + '.join(layers)} ({', '.join(f'{k} {v}' for k, v in shape.items())})")
    ratio = lambda t: median(t["anomalib"]) / median(t["project"])  # noqa: E731
    lines = [
        "PatchCore coreset selection and patch scoring: this project against anomalib (benchmarks/patchcore_speed.py)",
        "",
        f"date:     {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"machine:  {machine()}",
        f"load:     1-min load average {loads[0][0]:.2f} at the start, {loads[1][0]:.2f} at the end "
        f"(a shared machine: compare the ratios, not the seconds)",
        f"versions: python {platform.python_version()}, torch {torch.__version__}, anomalib {anomalib.__version__}, "
        f"numpy {np.__version__}",
        f"command:  {command}",
        f"data:     {label}",
        f"          {n_train} training images -> bank {n} x {dim} float32 = {rows.nbytes / MB:.1f} MB; "
        f"coreset {count} rows ({fraction:g}) = {bank.nbytes / MB:.2f} MB",
        f"          {n_test} test images -> {len(queries)} patches x {dim} = {queries.nbytes / MB:.1f} MB",
        f"check:    {head_check}",
        f"timing:   wall seconds, median of {repeats} runs each, the two methods taking turns in one process; "
        f"ratio = anomalib / project",
        "",
        f"1. Coreset selection (fraction {fraction:g}, {count} of {n} rows)",
        "   as shipped: project greedy_coreset (128-d Gaussian projection, NumPy loop, 1 BLAS thread) vs",
        f"   anomalib KCenterGreedy (sparse random projection to {_anomalib_dim(n)} dims, torch loop)",
        timing_line("project greedy_coreset", shipped_t["project"]),
        timing_line("anomalib KCenterGreedy", shipped_t["anomalib"]),
        f"  ratio {ratio(shipped_t):.1f}x",
        f"  different projections, so different coresets: {overlap_shipped:.1%} of rows in both; coverage radius "
        f"(largest distance of a training row to its nearest coreset row, {dim}-d): project "
        f"{radius['project']:.3f}, anomalib {radius['anomalib']:.3f}",
        "",
        "   on the same points: the project's 128-d projection, no further projection, same first row",
        timing_line("project greedy_coreset(projection_dim=None)", same_t["project"]),
        timing_line("anomalib KCenterGreedy on (n, 1, 128)", same_t["anomalib"]),
        f"  ratio {ratio(same_t):.1f}x",
        "  selection agreement:",
        *agreement,
        "",
        f"2. Patch scores: {len(queries)} test patches against the {count}-row coreset bank, nearest distance",
        timing_line("project nearest_distances (kNN engine)", score_t["project"]),
        timing_line("anomalib PatchcoreModel.nearest_neighbors", score_t["anomalib"]),
        f"  ratio {ratio(score_t):.1f}x",
        f"  max |project - anomalib| nearest distance: {np.abs(ours_d - theirs_d).max():.3e} "
        f"(distances up to {ours_d.max():.3f}; relative {np.max(np.abs(ours_d - theirs_d) / np.maximum(ours_d, 1e-12)):.2e})",
        f"  against float64 (torch.cdist) on {len(sample)} random test patches: project max error "
        f"{np.abs(ours_d[sample] - exact_d).max():.3e}, anomalib {np.abs(theirs_d[sample] - exact_d).max():.3e}",
    ]
    if memory:
        lines += ["", "3. Peak memory, one fresh process per method (both libraries imported, inputs loaded, then "
                      "/proc/self/clear_refs resets the peak): the peak resident set during the call less the resident "
                      "set just before it (VmHWM - VmRSS), and the process's whole peak (VmHWM, imports and inputs "
                      "included; not getrusage's ru_maxrss, which in a subprocess keeps its parent's peak)"]
        for method in METHODS:
            m = memory[method]
            if "over_limit_gb" in m:
                lines.append(f"  {method:<18} stopped: its resident set passed {m['over_limit_gb']} GB")
                continue
            extra = (m["hwm_kb"] - m["rss_before_kb"]) * 1024 / MB if m["hwm_reset"] else float("nan")
            whole = max(m["hwm_kb"], m["hwm_loaded_kb"]) * 1024 / MB
            lines.append(f"  {method:<18} +{extra:8.1f} MB during the call   process peak {whole:8.1f} MB")
        lines.append(f"  for scale: the bank {rows.nbytes / MB:.1f} MB, its 128-d projection {n * 128 * 4 / MB:.1f} MB, "
                     f"anomalib's {_anomalib_dim(n)}-d projection {n * _anomalib_dim(n) * 4 / MB:.1f} MB, the test "
                     f"patches {queries.nbytes / MB:.1f} MB")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    click.echo(text)


def _anomalib_dim(n: int) -> int:
    """The dimension KCenterGreedy's sparse random projection takes n rows to (its eps, 0.9 in 2.7.0)."""
    from anomalib.models.components.sampling import KCenterGreedy

    projection = KCenterGreedy(torch.zeros(1, 1), 1.0).model
    return int(projection._johnson_lindenstrauss_min_dim(n_samples=n, eps=projection.eps))


if __name__ == "__main__":
    main()
