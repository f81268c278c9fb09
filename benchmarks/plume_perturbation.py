"""PLUME's linear perturbation as a rank-one update vs the explicit D x D matrices.

The authors' code builds ``I + alpha beta^T`` for every sample and applies it with
``torch.bmm``; the project computes ``x + alpha (beta . x)``. Both run here, in the same
process and on the same inputs, round-robin; the ratios are what this script reports:

1. perturbation forward + backward (N x D inputs, gradients to x, alpha and beta);
2. a whole PLUME training step (perturbator, classifier, all losses, AdamW), once with
   each implementation of the map;
3. peak memory of the perturbation forward + backward, each measured in a fresh process
   (high-water mark of the resident set above what the inputs already used; on a GPU,
   ``torch.cuda.max_memory_allocated``).

    python benchmarks/plume_perturbation.py            # N = 32, D = 3072
"""

from __future__ import annotations

import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click
import torch

from pipeline.heads.plume import model as plume_model
from pipeline.heads.plume.head import PlumeHead
from pipeline.heads.plume.model import explicit_linear_perturbation, linear_perturbation

IMPLEMENTATIONS = {"rank_one": linear_perturbation, "explicit_bmm": explicit_linear_perturbation}


def inputs(n: int, d: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, alpha, beta = (torch.randn(n, d, generator=g).to(device).requires_grad_() for _ in range(3))
    return x, alpha, beta


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def perturbation_step(fn, x, alpha, beta) -> None:
    out = fn(x, alpha, beta)
    out.square().sum().backward()
    x.grad = alpha.grad = beta.grad = None


@contextlib.contextmanager
def linear_map(fn):
    """Make PLUME's training use ``fn`` for the linear perturbation."""
    saved = plume_model.linear_perturbation
    plume_model.linear_perturbation = fn
    try:
        yield
    finally:
        plume_model.linear_perturbation = saved


def training_step_timer(n: int, d: int, device: torch.device):
    features = torch.randn(4 * n, d).numpy()
    # The paper's eq. 1 (no held-out rows, no step floor, no shift limit): one epoch of one step
    # builds the modules; the timed steps below reuse them.
    head = PlumeHead.preset("paper", dim="native", epochs=1, batch_size=n, lr=1e-4, device=str(device),
                            threshold_quantile=None)
    head.fit(features[:n])
    perturbator = plume_model.Perturbator(d, "linear").to(device)
    params = [*head.classifier_.parameters(), *perturbator.parameters()]
    optimiser = torch.optim.AdamW(params, lr=1e-4)
    batch = torch.as_tensor(features[:n], device=device)

    def step() -> None:
        losses = head._losses(batch, perturbator)
        optimiser.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimiser.step()
    return step


def round_robin(tasks: dict, repeats: int, device: torch.device) -> dict[str, list[float]]:
    times = {name: [] for name in tasks}
    for name, task in tasks.items():  # warm-up
        task()
    for _ in range(repeats):
        for name, task in tasks.items():
            sync(device)
            start = time.perf_counter()
            task()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def resident_peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_child(name: str, n: int, d: int, device_name: str) -> None:
    """Run in a fresh process: extra peak memory of one forward+backward above the inputs."""
    device = torch.device(device_name)
    x, alpha, beta = inputs(n, d, device)
    if device.type == "cuda":
        perturbation_step(IMPLEMENTATIONS[name], x, alpha, beta)  # kernels loaded
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        perturbation_step(IMPLEMENTATIONS[name], x, alpha, beta)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        # The resident-set high-water mark (VmHWM), after the inputs exist and after the
        # first step, in a process that did nothing else. Not ru_maxrss: Linux carries it
        # over exec, so a child of a large parent would start at the parent's peak.
        before = resident_peak_bytes()
        perturbation_step(IMPLEMENTATIONS[name], x, alpha, beta)
        peak = resident_peak_bytes() - before
    print(json.dumps({"peak_bytes": peak}))


def peak_memory(name: str, n: int, d: int, device: torch.device) -> int:
    code = f"import benchmarks.plume_perturbation as b; b.peak_memory_child('{name}', {n}, {d}, '{device}')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


@click.command()
@click.option("--n", default=32, show_default=True, help="Batch size N.")
@click.option("--d", default=3072, show_default=True, help="Feature dimension D.")
@click.option("--repeats", default=10, show_default=True, help="Timed rounds (after one warm-up).")
@click.option("--device", default="auto", show_default=True)
def main(n: int, d: int, repeats: int, device: str) -> None:
    from pipeline.cli import resolve_device

    device_ = resolve_device(device)
    torch.manual_seed(0)
    x, alpha, beta = inputs(n, d, device_)
    with torch.no_grad():
        explicit = explicit_linear_perturbation(x, alpha, beta)
        diff = ((linear_perturbation(x, alpha, beta) - explicit).abs().max() / explicit.abs().max()).item()
    print(f"PLUME linear perturbation, N = {n}, D = {d}, device {device_}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; max |rank_one - explicit| / max |explicit| = {diff:.1e}")

    perturb_times = round_robin({name: (lambda fn=fn: perturbation_step(fn, x, alpha, beta))
                                 for name, fn in IMPLEMENTATIONS.items()}, repeats, device_)
    step = training_step_timer(n, d, device_)
    steps = {}
    for name, fn in IMPLEMENTATIONS.items():
        steps[name] = lambda fn=fn: _with_map(fn, step)
    step_times = round_robin(steps, max(repeats // 2, 3), device_)
    memory = {name: peak_memory(name, n, d, device_) for name in IMPLEMENTATIONS}

    def row(label: str, times: dict[str, list[float]]) -> None:
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{label:<38} rank_one {1e3 * med['rank_one']:10.3f} ms   explicit_bmm {1e3 * med['explicit_bmm']:10.3f} ms"
              f"   ratio {med['explicit_bmm'] / med['rank_one']:8.1f}x  (median of {len(times['rank_one'])})")

    row("perturbation forward+backward", perturb_times)
    row("whole training step (D-dim VAE + MLP)", step_times)
    print(f"{'peak memory of forward+backward':<38} rank_one {memory['rank_one'] / 2**20:10.1f} MB   "
          f"explicit_bmm {memory['explicit_bmm'] / 2**20:10.1f} MB   ratio "
          f"{memory['explicit_bmm'] / max(memory['rank_one'], 1):8.1f}x  (N*D*D*4 bytes = {n * d * d * 4 / 2**20:.0f} MB)")


def _with_map(fn, step) -> None:
    with linear_map(fn):
        step()


if __name__ == "__main__":
    main()
