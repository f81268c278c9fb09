"""Exact k nearest neighbours with a reduced-precision (bfloat16) first pass and a certificate.

A bfloat16 matrix product is 2-4x faster than a float32 one on CPUs with AVX512-BF16 or AMX
and on GPUs. Its 8-bit significands are far too coarse to rank neighbours by, but enough to
find a short list of ``m`` candidates per query, among which the exact k nearest provably lie:

1. **Screen** (``_screen``): centre queries and gallery on the gallery's mean (distances do not
   change; the norms every bound scales with shrink, a lot for CNN features with their large
   common mean), round both to bfloat16 and compute, by one augmented matrix product per block,
   a lower bound on every squared distance. Keep, per query, the ``m`` smallest bounds and the
   smallest bound of everything dropped (``lam``).
2. **Re-rank**: the squared distances of the candidates that can still be among the k nearest
   are computed in float64 from the original float32 rows, as ``sum((q - g)**2)``.
3. **Certify**: when the k-th smallest of those is no larger than ``lam``, no other gallery row
   can be nearer, and the answer is exact. Queries that are not certified are screened again
   with 4x more candidates, then with a float32 product (whose bound is ~100x tighter), then a
   float64 one with 4x more candidates, and what is left (more exact ties than candidates) is
   computed by brute force in float64. Every query's answer is therefore the exact top-k.

The bound (one query q, one gallery row g; c = x - mu exactly, x' = float32(x - mu),
a = bf16(q'), b = bf16(g'); u the float32 unit roundoff)::

    |q - g|^2 = |c_q|^2 + P,   P = |c_g|^2 - 2 c_q.c_g
    |c_q.c_g - a.b| <= alpha |c_g| + |a| beta,   alpha >= |c_q - a|, beta >= |c_g - b|
                                                 (per-row residuals, centring error included)
    P >= n_g - 2 a.b - 2 alpha nu_g - 2 kappa beta_g,   nu_g >= |c_g|, kappa >= |a|, n_g <= |c_g|^2

The right-hand side is one matrix product of augmented rows, ``[-2a, 1, 1, 1, -alpha, -kappa,
-tau, -tau']`` against ``[b, n_g (3 bfloat16 pieces), 2 nu, 2 beta, 1, 1]``, so the per-pair
residual terms cost nothing. Its own errors are bounded too: the products of bfloat16 numbers
are exact in float32 and are summed in float32 (any order: gamma_K times the sum of the terms'
magnitudes, K = d + 7); on a CPU the result comes back rounded to bfloat16, so each block is
shifted by a per-query ``tau`` (the current ``lam``), which makes the values near the decision
small and their rounding (at most 2 units in the last place, safe for truncation as well) tiny.
The float64 distances of the re-rank are within gamma_{d+2} (float64) of the exact ones, and
the certificate allows for that as well.

Assumption, checked once per process (``_check_accumulation``): the library's bfloat16 product
accumulates in float32 (oneDNN on CPUs; cuBLAS with ``out_dtype=float32`` on GPUs).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from pipeline.errors import PipelineError

U64 = 2.0 ** -53
# Relative slack added to every float64 bound for the few roundings of the bound's own
# arithmetic (each a few float64 operations on the magnitudes involved, so far below 2^-40).
BOUND_SLACK = 2.0 ** -40
GROWTH = 4  # a query not certified is screened again with this many times more candidates


def _unit(dtype: torch.dtype) -> float:
    """Unit roundoff (half the machine epsilon) of a floating dtype."""
    return torch.finfo(dtype).eps / 2


def _gamma(n: int, u: float) -> float:
    """The standard bound on the relative error of a sum of n terms: n u / (1 - n u)."""
    if n * u >= 0.5:
        raise PipelineError(f"vectors of {n} dimensions are too long for a certified reduced-precision product.")
    return n * u / (1 - n * u)


# --- the matrix product of a screening pass --------------------------------------------------

@dataclass(frozen=True)
class Product:
    """How one screening pass multiplies: the input dtype, the product itself, and the unit
    roundoffs of its accumulation and of its output (which may be coarser than the sum)."""

    dtype: torch.dtype
    multiply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    accumulation: float
    output: float


def _bf16_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mm(a, b)


def _fp32_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mm(a, b, out_dtype=torch.float32)


def _fp32_out_emulated(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # The same numbers as the GPU's bf16 x bf16 -> fp32 product (exact products, float32
    # sums), for running that branch on CPU tensors in the tests.
    return torch.mm(a.float(), b.float())


def product_for(precision: str, device: torch.device) -> Product:
    """The product of a screening pass in ``precision`` ("bfloat16", "float32" or "float64")
    on ``device``.

    bfloat16 on a CPU: PyTorch returns the float32 sums rounded to bfloat16 (2 units in the
    last place allowed for, so truncating libraries are covered too). On a GPU the float32
    sums come back as they are (``out_dtype``). float32 and float64: the sums themselves.
    """
    if precision in ("float32", "float64"):
        dtype = getattr(torch, precision)
        return Product(dtype, torch.mm, _unit(dtype), 2 * _unit(dtype))
    if precision != "bfloat16":
        raise ValueError(precision)
    if device.type == "cuda":
        return Product(torch.bfloat16, _fp32_out, 2.0 ** -24, 2.0 ** -23)
    return Product(torch.bfloat16, _bf16_out, 2.0 ** -24, 2.0 ** -7)


EMULATED_GPU_PRODUCT = Product(torch.bfloat16, _fp32_out_emulated, 2.0 ** -24, 2.0 ** -23)

_accumulation_checked: set = set()


def _check_accumulation(product: Product, device: torch.device) -> None:
    """Refuse a bfloat16 product whose sums are not float32 (once per process and device):
    256 + 1279 / 64 - 256 comes out near 0 when sums are kept in bfloat16, within the bound
    of the screen when they are float32."""
    key = (product, str(device))
    if key in _accumulation_checked or product.dtype != torch.bfloat16:
        return
    width = 1288
    a = torch.ones(64, width, dtype=product.dtype, device=device)
    b = torch.full((64, width), 1 / 64, dtype=product.dtype, device=device)
    b[:, 0], b[:, -1] = 256.0, -256.0
    exact = (width - 2) / 64
    got = product.multiply(a, b.T).double()  # the second factor transposed, as in _screen
    worst = float(got.flatten()[(got - exact).abs().argmax()])
    allowed = product.output * exact + _gamma(width, product.accumulation) * (512 + exact)
    if abs(worst - exact) > allowed:
        raise PipelineError(f"this machine's bfloat16 matrix product does not accumulate in float32 "
                            f"({worst} for {exact}), so a bfloat16 kNN pass cannot be certified; use "
                            f"precision float32.")
    _accumulation_checked.add(key)


# --- per-row quantities ----------------------------------------------------------------------

def _round_up(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Non-negative float64 values as ``dtype`` numbers no smaller than them, and no positive
    value below the smallest normal number (which a product may flush to zero)."""
    if dtype == torch.float64:
        return values * (1 + 4 * U64)
    rounded = (values * (1 + 4 * _unit(dtype))).to(dtype)
    rounded = torch.where(values > 0, rounded.clamp_min(torch.finfo(dtype).tiny), rounded)
    assert bool((rounded.double() >= values).all())
    return rounded


def _pieces(values: torch.Tensor, dtype: torch.dtype, count: int) -> list[torch.Tensor]:
    """``values`` (float64) as a sum of ``count`` numbers of ``dtype``, largest first: each
    remainder is exact in float64 (Sterbenz), and shrinks by the dtype's rounding each time."""
    pieces, rest = [], values
    for _ in range(count):
        piece = rest.to(dtype)
        pieces.append(piece)
        rest = rest - piece.double()
    return pieces


@dataclass
class _Rows:
    """One side's rows, centred and reduced, with the per-row bounds of the screen. With c the
    exact centred row and a its reduced copy: ``residual`` >= |c - a|, ``norm`` >= |c| (gallery)
    or >= |a| (queries), ``reduced_norm`` >= |a|, ``square_low`` <= |c|^2 <= ``square_high``."""

    reduced: torch.Tensor
    norm: torch.Tensor      # in the product's dtype
    residual: torch.Tensor  # in the product's dtype
    reduced_norm: torch.Tensor
    square_low: torch.Tensor
    square_high: torch.Tensor


def _rows(x: torch.Tensor, mean: torch.Tensor, dtype: torch.dtype, gallery: bool) -> _Rows:
    # Row sums in the working precision (float32 for a bfloat16 product): their error,
    # gamma_{d+1} relative, matters little next to the residuals'.
    work = torch.float64 if dtype == torch.float64 else torch.float32
    unit = _unit(work)
    u = unit / (1 - unit)  # |c - fl(x - mean)| <= u |fl(x - mean)|, element by element
    gamma = _gamma(x.shape[1] + 1, unit)
    centred = x.to(work) - mean.to(work)
    reduced = centred.to(dtype)
    squares = torch.linalg.vecdot(centred, centred).double()
    # centred - reduced is exact in the working precision (the low bits of each element).
    low_bits = centred - reduced.to(work)
    residual_squares = torch.linalg.vecdot(low_bits, low_bits).double()
    centred_norm = (squares / (1 - gamma)).sqrt() * (1 + 4 * U64)
    residual = (residual_squares / (1 - gamma)).sqrt() * (1 + 4 * U64) + u * centred_norm
    reduced_norm = centred_norm + residual  # |a| <= |fl(x - mean)| + |fl(x - mean) - a|
    norm = centred_norm / (1 - u) if gallery else reduced_norm
    return _Rows(reduced, _round_up(norm, dtype), _round_up(residual, dtype), reduced_norm,
                 squares / (1 + gamma) / (1 + u) ** 2, squares / (1 - gamma) / (1 - u) ** 2)


# --- one screening pass ------------------------------------------------------------------------

@dataclass
class _Shortlist:
    """Per query: the ``m`` candidates with the smallest lower bounds (float64 bounds on the
    squared distance, gallery row indices; +inf / -1 where fewer), and ``lam``, a lower bound
    on the squared distance of every row that is not a candidate."""

    low: torch.Tensor
    high: torch.Tensor
    index: torch.Tensor
    lam: torch.Tensor


@dataclass
class _Block:
    """One gallery block ready for the screen: the augmented rows [b, n_g (3 pieces), 2 nu,
    2 beta, 1, 1] (transposed), the per-row terms of the bounds, and the block's largest ones."""

    start: int
    right: torch.Tensor
    nu: torch.Tensor         # >= |c_g|, float64
    beta: torch.Tensor       # >= |c_g - b|, float64
    shortfall: torch.Tensor  # >= |c_g|^2 - (the pieces' sum), float64
    terms: tuple[float, float, float, float, float]  # largest |b|, pieces' magnitude, nu, beta; row norm


def _prepare(gallery: torch.Tensor, mean: torch.Tensor, dtype: torch.dtype, start: int, stop: int) -> _Block:
    g = _rows(gallery[start:stop], mean, dtype, gallery=True)
    # Three pieces are within (2u)^3 of what they split (u: the dtype's unit roundoff, doubled
    # for rounding through float32); split a little less than |c_g|^2 so that they stay below.
    short = (2 * _unit(dtype)) ** 3 * 2
    pieces = _pieces(g.square_low * (1 - short), dtype, 3)
    square = sum(p.double().abs() for p in pieces)  # the pieces' magnitudes, >= their sum
    shortfall = g.square_high - g.square_low * (1 - short) ** 2  # |c_g|^2 less the pieces' sum, at most
    nu, beta = g.norm.double(), g.residual.double()
    right = torch.cat([g.reduced, *(p[:, None] for p in pieces), 2 * g.norm[:, None], 2 * g.residual[:, None],
                       torch.ones(stop - start, 2, dtype=dtype, device=gallery.device)], 1).T
    largest = [float(v.max()) for v in (g.reduced_norm, square, nu, beta)]
    row_norm = largest[0] + largest[1] + 2 * largest[2] + 2 * largest[3] + 2
    return _Block(start, right, nu, beta, shortfall, (*largest, row_norm))


def _screen(blocks: list[_Block], queries: torch.Tensor, mean: torch.Tensor, m: int, product: Product) -> _Shortlist:
    """The m candidates of each query (one tile of them), by lower bounds from a
    reduced-precision product, block by block."""
    device, dtype, (nq, d) = queries.device, product.dtype, queries.shape
    width = d + 7  # K, the augmented rows' length
    q = _rows(queries, mean, dtype, gallery=False)
    # [-2a, 1, 1, 1, -alpha, -kappa, -tau (2 pieces)]; the tau columns are set per block.
    left = torch.cat([-2 * q.reduced, torch.ones(nq, 3, dtype=dtype, device=device),
                      -q.residual[:, None], -q.norm[:, None], torch.zeros(nq, 2, dtype=dtype, device=device)], 1)
    alpha, kappa = q.residual.double(), q.norm.double()  # alpha >= |c_q - a|, kappa >= |a|
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=device)
    out = _Shortlist(inf.expand(nq, m).clone(), inf.expand(nq, m).clone(),
                     torch.full((nq, m), -1, dtype=torch.long, device=device), inf.expand(nq).clone())
    gamma = _gamma(width + 1, product.accumulation)  # + 1: float64 products are rounded too
    # Subnormal inputs, products and sums may be flushed to zero: per product at most the
    # smallest normal number times the other factor, per sum at most that number.
    tiny = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).tiny
    for block in blocks:
        b_max, square_max, nu_max, beta_max, right_norm = block.terms
        # Shift by the current threshold, so that the values that decide are small and so is
        # their rounding (tau = 0 until there is one).
        tau_pieces = _pieces(torch.where(torch.isfinite(out.lam), out.lam - q.square_low, 0.0), dtype, 2)
        left[:, -2], left[:, -1] = -tau_pieces[0], -tau_pieces[1]
        tau = (tau_pieces[0].double() + tau_pieces[1].double())[:, None]
        tau_size = tau_pieces[0].double().abs() + tau_pieces[1].double().abs()
        # The sum's error: gamma_K times its terms' magnitudes, with the block's largest rows.
        terms = 2 * kappa * b_max + square_max + 2 * alpha * nu_max + 2 * kappa * beta_max + tau_size
        left_norm = 3 * kappa + alpha + tau_size + 2
        error = (gamma * terms + tiny * (width ** 0.5 * (left_norm + right_norm) + 2 * width))[:, None]
        # The lower bound of a product value o is base + o - rate |o|: the output's rounding, the
        # sum's error, and slack for this float64 arithmetic (rate's share of it grows with |o|).
        base = (q.square_low[:, None] + tau - torch.finfo(dtype).tiny - error
                - BOUND_SLACK * (tau.abs() + error + q.square_high[:, None]))
        rate = product.output + BOUND_SLACK
        cutoff = None
        if bool(torch.isfinite(out.lam).all()):
            # Values whose bound would be lam or more change nothing: neither kept nor lowering lam.
            gap = out.lam[:, None] - base
            theta = gap / torch.where(gap >= 0, 1 - rate, 1 + rate)
            cutoff = theta + BOUND_SLACK * (theta.abs() + out.lam[:, None].abs() + base.abs())
        values, where, more = _smallest(product.multiply(left, block.right), m + 1, cutoff)
        real = torch.isfinite(values)
        o = torch.where(real, values.double(), 0.0)
        low = torch.where(real, base + o - rate * o.abs(), torch.inf)
        # The upper bound adds back the residual terms twice over and the norm pieces' shortfall.
        spread = (4 * (alpha[:, None] * block.nu[where] + kappa[:, None] * block.beta[where])
                  + block.shortfall[where]) * (1 + BOUND_SLACK)
        high = q.square_high[:, None] + tau + o + rate * o.abs() + torch.finfo(dtype).tiny + error + spread
        high = torch.where(real, high + BOUND_SLACK * (tau.abs() + error + q.square_high[:, None]), torch.inf)
        # The values of the block not taken are no smaller than the largest taken, and the
        # bounds grow with the value; all those taken join the shortlist.
        block_lam = torch.where(more, low.amax(1), torch.inf)
        _merge(out, low, high, torch.where(real, where + block.start, -1), block_lam, m)
    return out


GROUP = 16  # columns of a product block whose smallest value is tested first against the cutoff


def _smallest(o: torch.Tensor, count: int, cutoff: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of the product block ``o``: its ``count`` smallest values (unsorted) and their
    columns, or, given a float64 ``cutoff`` per row (a value at or above it does not matter),
    those below it, at most ``count``, padded with inf; and per row whether a value that may
    matter was left out. With a cutoff, most of the block is passed over: the minimum of each
    group of GROUP columns is tested first (one elementwise pass), then only the groups that
    hold a value below the cutoff are looked at, unless so many are that a top-k is cheaper."""
    rows, columns = o.shape
    hits = None
    if cutoff is not None and columns % GROUP == 0:
        limit = cutoff.to(o.dtype)
        limit = torch.where(limit.double() < cutoff, torch.nextafter(limit, torch.full_like(limit, torch.inf)), limit)
        span = columns // GROUP  # group j: the columns j, j + span, ..., j + (GROUP - 1) span
        hits = o.view(rows, GROUP, span).amin(1) < limit
        # Gathering costs more than top-k when many groups are hit (a loose cutoff).
        if int(hits.sum()) > count * rows:
            hits = None
    if hits is None:
        values, where = torch.topk(o, min(count, columns), dim=1, largest=False, sorted=False)
        return values, where, torch.full((rows,), columns > count, device=o.device)
    hit_rows, hit_groups = hits.nonzero(as_tuple=True)
    hit_columns = hit_groups[:, None] + span * torch.arange(GROUP, device=o.device)
    candidates = o[hit_rows[:, None], hit_columns]
    below = candidates < limit[hit_rows]
    row_of = hit_rows[:, None].expand_as(hit_columns)[below]  # in row order, as nonzero gives them
    values, where = candidates[below], hit_columns[below]
    counts = torch.bincount(row_of, minlength=rows)
    slot = torch.arange(len(row_of), device=o.device) - (counts.cumsum(0) - counts)[row_of]
    size = max(1, int(counts.max())) if len(row_of) else 1
    dense = o.new_full((rows, size), torch.inf)
    dense[row_of, slot] = values
    dense_where = torch.zeros((rows, size), dtype=torch.long, device=o.device)
    dense_where[row_of, slot] = where
    if size > count:
        dense, pick = torch.topk(dense, count, dim=1, largest=False, sorted=False)
        dense_where = dense_where.gather(1, pick)
    return dense, dense_where, counts > count


def _merge(out: _Shortlist, low: torch.Tensor, high: torch.Tensor, index: torch.Tensor,
           block_lam: torch.Tensor, m: int) -> None:
    """Keep the m smallest lower bounds of the old and new candidates; what is dropped lowers lam."""
    low = torch.cat([out.low, low], 1)
    order = low.argsort(1)
    low = low.gather(1, order)
    high = torch.cat([out.high, high], 1).gather(1, order)
    index = torch.cat([out.index, index], 1).gather(1, order)
    out.lam = torch.minimum(out.lam, torch.minimum(block_lam, low[:, m:].amin(1)))
    out.low, out.high, out.index = low[:, :m], high[:, :m], index[:, :m]


# --- exact distances and the certificate -------------------------------------------------------

def exact_distances(gallery: torch.Tensor, queries: torch.Tensor, query_rows: torch.Tensor,
                    gallery_rows: torch.Tensor, max_entries: int = 1 << 20) -> torch.Tensor:
    """sum((q - g)^2) in float64 for the pairs (query_rows[i], gallery_rows[i]), from the float32
    rows: every term is non-negative, so it is within gamma_{d+2} (float64) of the exact value."""
    out = torch.empty(len(query_rows), dtype=torch.float64, device=queries.device)
    step = max(1, max_entries // max(1, queries.shape[1]))
    for s in range(0, len(query_rows), step):
        diff = queries[query_rows[s:s + step]].double() - gallery[gallery_rows[s:s + step]].double()
        out[s:s + step] = diff.square_().sum(1)
    return out


def _certify(gallery: torch.Tensor, queries: torch.Tensor, short: _Shortlist, k: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(certified mask, distances, indices): re-rank the candidates that can still be among the
    k nearest, and certify the queries whose k-th distance is no larger than lam."""
    g = _gamma(queries.shape[1] + 2, U64) + BOUND_SLACK  # exact_distances' relative error, and the check's
    upper = torch.kthvalue(short.high * (1 + g), k, dim=1).values
    needed = (short.low.clamp_min(0) * (1 - g) <= upper[:, None]) & (short.index >= 0)
    query_rows, slots = needed.nonzero(as_tuple=True)
    distances = torch.full_like(short.low, float("inf"))
    distances[query_rows, slots] = exact_distances(gallery, queries, query_rows, short.index[query_rows, slots])
    values, where = torch.topk(distances, k, dim=1, largest=False)
    certified = short.lam.clamp_min(0) * (1 - g) >= values[:, -1]
    return certified, values, short.index.gather(1, where)


def _brute_force(gallery: torch.Tensor, query: torch.Tensor, k: int,
                 max_entries: int = 1 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest ``exact_distances`` of one query over the whole gallery (for the few
    queries no screen could certify: more than m exact ties)."""
    step = max(1, max_entries // max(1, len(query)))
    distances = torch.cat([(gallery[s:s + step].double() - query.double()).square_().sum(1)
                           for s in range(0, len(gallery), step)])
    values, where = torch.topk(distances, min(k, len(distances)), largest=False)
    pad = k - len(values)
    return (torch.cat([values, values.new_full((pad,), float("inf"))]),
            torch.cat([where, where.new_full((pad,), -1)]))


# --- the search --------------------------------------------------------------------------------

@dataclass
class Certified:
    """Exact k nearest neighbours of every query: squared distances (float64, ascending) and
    gallery row indices, and which pass answered each query: 0 the bfloat16 screen, 1 the
    screen with GROWTH x more candidates, 2 a float32 screen, 3 a float64 screen with GROWTH x
    more candidates (for many ties), 4 brute force."""

    distances: torch.Tensor
    indices: torch.Tensor
    answered_by: torch.Tensor

    PASSES = ("bfloat16 screen", "bfloat16 screen with more candidates", "float32 screen", "float64 screen",
              "brute force")


def certified_nearest(gallery: torch.Tensor, queries: torch.Tensor, k: int, candidates: int,
                      query_block: int = 1024, gallery_block: int = 8192, workers: int | None = None,
                      product: Product | None = None) -> Certified:
    """The exact k nearest gallery rows of every query (float32 tensors on one device), with a
    bfloat16 screen keeping ``candidates`` (> k) per query; see the module's notes.

    On a CPU the work is split into independent pieces (gallery blocks to prepare, query tiles
    to screen and certify) shared among ``workers`` threads (default: torch's thread count),
    each with one torch thread: no thread ever waits for another, which keeps the cores busy
    on a machine shared with other processes. Memory: a bfloat16 copy of the gallery (half its
    float32 size) and per worker one (query_block x gallery_block) product.
    """
    device, nq = queries.device, len(queries)
    distances = torch.full((nq, k), float("inf"), dtype=torch.float64, device=device)
    indices = torch.full((nq, k), -1, dtype=torch.long, device=device)
    answered_by = torch.full((nq,), len(Certified.PASSES) - 1, dtype=torch.long, device=device)
    left = torch.arange(nq, device=device)
    workers = max(1, workers or torch.get_num_threads()) if device.type == "cpu" else 1
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
    run = pool.map if workers > 1 else map
    try:
        if len(gallery) > candidates + 1:
            bf16 = product or product_for("bfloat16", device)
            _check_accumulation(bf16, device)
            first = min(gallery_block, 2048)  # a small first block: see _screen's tau
            edges = [0] + list(range(first, len(gallery), gallery_block)) + [len(gallery)]
            spans = list(zip(edges[:-1], edges[1:]))
            # Any centre keeps the bounds valid; the mean makes them tight.
            mean = sum(run(lambda span: gallery[span[0]:span[1]].sum(0), spans)) / len(gallery)
            passes = {0: (bf16, candidates), 1: (bf16, GROWTH * candidates), 2: (product_for("float32", device), candidates),
                      3: (product_for("float64", device), GROWTH * candidates)}
            if device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
                del passes[2]  # TensorFloat-32 products would round the inputs beyond the bound
            prepared: dict = {}  # the bfloat16 passes share their gallery blocks
            for number, (pass_product, m) in passes.items():
                if not len(left):
                    break
                if len(gallery) <= m + 1:  # then the brute force is as quick
                    continue
                if pass_product.dtype not in prepared:
                    prepared = {pass_product.dtype: list(run(
                        lambda span: _prepare(gallery, mean, pass_product.dtype, *span), spans))}
                blocks = prepared[pass_product.dtype]
                rows = min(query_block, -(-len(left) // workers))
                tiles = [left[s:s + rows] for s in range(0, len(left), rows)]
                # Each tile of queries is screened and certified on its own.
                for tile, (certified, values, where) in zip(tiles, run(
                        lambda tile: _certify(gallery, queries[tile], _screen(blocks, queries[tile], mean, m,
                                                                              pass_product), k), tiles)):
                    done = tile[certified]
                    distances[done], indices[done], answered_by[done] = values[certified], where[certified], number
                left = left[answered_by[left] == len(Certified.PASSES) - 1]
        for i, (values, where) in zip(left.tolist(), run(lambda i: _brute_force(gallery, queries[i], k), left.tolist())):
            distances[i], indices[i] = values, where
    finally:
        pool.shutdown()
        # The pool's threads set torch's process-wide default too; give back this thread's.
        torch.set_num_threads(threads)
    return Certified(distances, indices, answered_by)


def merge(total: Certified | None, part: Certified, offset: int, k: int) -> Certified:
    """One result over a gallery given in pieces: the result so far and one over the piece
    whose first row is ``offset``."""
    indices = torch.where(part.indices >= 0, part.indices + offset, part.indices)
    if total is None:
        return Certified(part.distances, indices, part.answered_by)
    values, where = torch.topk(torch.cat([total.distances, part.distances], 1), k, dim=1, largest=False)
    return Certified(values, torch.cat([total.indices, indices], 1).gather(1, where),
                     torch.maximum(total.answered_by, part.answered_by))
