"""Synthetic telemetry/batch workloads with a known, learnable runtime structure.

A fixed "world" (kinds, tenants, their mixes, per-kind base runtimes and
service objectives) is sampled with ``numpy.random.default_rng(seed)``, so a
seed fixes the trace and different seeds give different traces of the same
world. Times are seconds.

Runtime model (per task)::

    runtime_s = base_s[kind]
                * (payload_bytes / payload_median_bytes[kind]) ** slope[kind]  # power law
                * (1 + ITEMS_WEIGHT * log1p(n_items / ITEMS_KNEE))             # saturating
                * (1 + SPANS_WEIGHT * log1p(n_spans))                          # traces only
                * CODEC_FACTOR[codec]
                * lognormal(0, NOISE_SIGMA)
                * outlier                       # 1, or a Pareto tail for OUTLIER_SHARE of tasks
    clipped to [MIN_RUNTIME_S, MAX_RUNTIME_S]

Scenarios (:data:`SCENARIOS`):

- ``mixed``: Poisson arrivals, tenants in 3 regions.
- ``bursty``: Markov-modulated on/off arrivals (bursts at BURST_RATE_FACTOR x the
  mean rate, quiet spells between) with the same mean load.
- ``drift``: Poisson arrivals; from the middle task on, the per-kind base times
  are rescaled (DRIFT_BASE_FACTOR) and the payload slopes change (DRIFT_SLOPE_DELTA).
- ``tree``: each root has 1-3 levels of children (fan-out 1-4, some children
  joining two parents, ``parent_id = "a;b"``); the whole tree arrives with its root
  and children are held until their parents finish.

Arrivals are finally stretched (:func:`ray_sched.workloads.window.rescale_to_load`)
so the offered load on ``slots`` is exactly ``load`` (up to microsecond rounding).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ray_sched.errors import ConfigError
from ray_sched.task import PARENT_SEPARATOR
from ray_sched.trace import validate_frame
from ray_sched.workloads.window import check_parameters, contract_order, rescale_to_load

SCENARIOS = ("mixed", "bursty", "drift", "tree")

KINDS = ("metrics", "traces", "logs", "ml-infer", "etl")
#: Runtime of a task with the kind's median payload, before noise (s); mean over the
#: mix is about 0.25 s so a 1,500-task trace at 8 slots, load 0.85, spans about a minute.
BASE_RUNTIME_S = {"metrics": 0.022, "traces": 0.055, "logs": 0.09, "ml-infer": 0.17, "etl": 0.3}
#: Median payload per kind (bytes): small metric batches, large ETL files.
PAYLOAD_MEDIAN_BYTES = {"metrics": 16_384, "traces": 131_072, "logs": 524_288,
                        "ml-infer": 262_144, "etl": 8_388_608}
#: Spread of payload sizes (sigma of log bytes).
PAYLOAD_SIGMA = 1.0
#: Elasticity of runtime to payload size (runtime ~ payload ** slope): sub-linear kinds
#: are overhead-bound, ETL is near-linear.
PAYLOAD_SLOPE = {"metrics": 0.35, "traces": 0.55, "logs": 0.75, "ml-infer": 0.25, "etl": 0.9}
#: Bytes per item (data point, span, log line, inference input, row) per kind.
ITEM_BYTES = {"metrics": 64, "traces": 512, "logs": 256, "ml-infer": 4_096, "etl": 1_024}
#: Noise between payload size and item count (sigma of log items).
ITEMS_SIGMA = 0.3
#: Per-item overhead saturates: items beyond the knee add only logarithmically.
ITEMS_KNEE = 1_000
ITEMS_WEIGHT = 0.15
#: Spans per trace batch add a logarithmic cost (tail-sampling / assembly), traces only.
SPANS_WEIGHT = 0.08
#: String feature: wire encoding and its decode cost factor (JSON is slower than protobuf).
CODECS = ("otlp-proto", "otlp-json", "gzip-json")
CODEC_SHARES = (0.6, 0.3, 0.1)
CODEC_FACTOR = {"otlp-proto": 1.0, "otlp-json": 1.5, "gzip-json": 2.2}
#: Multiplicative runtime noise (sigma of log runtime) nobody can predict.
NOISE_SIGMA = 0.3
#: Share of tasks hit by a heavy-tailed slowdown (GC pause, cold cache, retry storm) ...
OUTLIER_SHARE = 0.02
#: ... of factor OUTLIER_MIN_FACTOR * Pareto(OUTLIER_PARETO_ALPHA), at most OUTLIER_MAX_FACTOR
#: so one task cannot dominate a short replay.
OUTLIER_MIN_FACTOR = 3.0
OUTLIER_PARETO_ALPHA = 1.5
OUTLIER_MAX_FACTOR = 30.0
#: Floor on a generated runtime (s): replay cannot time anything shorter meaningfully.
MIN_RUNTIME_S = 1e-3
#: Ceiling on a generated runtime (s): no task may outlast a third of a one-minute replay.
MAX_RUNTIME_S = 20.0
#: Times are rounded to microseconds, which keeps CSV examples small.
TIME_DECIMALS = 6

TENANTS = ("acme", "globex", "initech", "umbrella", "hooli")
#: Zipf exponents for tenant shares and for each tenant's preference over kinds.
TENANT_ZIPF = 1.2
KIND_ZIPF = 1.0
#: Regions (``mixed`` only); a tenant's tasks stay in its home region this often.
REGIONS = ("us-east", "eu-west", "ap-south")
HOME_REGION_SHARE = 0.8

#: Declared priority by kind, for DECLARED_PRIORITY_SHARE of that kind's tasks.
PRIORITY_BY_KIND = {"ml-infer": 6, "metrics": 3}
DECLARED_PRIORITY_SHARE = 0.7
#: The premium tenant adds PREMIUM_BOOST to what its tasks declare (at least PREMIUM_BOOST).
PREMIUM_TENANT = "globex"
PREMIUM_BOOST = 2
#: A few tasks anywhere are declared most urgent.
URGENT_SHARE = 0.02
URGENT_PRIORITY = 9
#: Service objectives (relative deadlines, s), the same for every task of a kind: about
#: 3x the kind's median runtime before drift. Kinds not listed have no deadline.
DEADLINE_S = {"metrics": 0.1, "traces": 0.3, "ml-infer": 0.65}

#: Rare 2-slot tasks: this share of ETL tasks.
TWO_CPU_SHARE = {"etl": 0.15}

#: ``bursty``: Markov-modulated on/off Poisson process, rates relative to the mean rate.
BURST_RATE_FACTOR = 3.5
QUIET_RATE_FACTOR = 0.25
#: Mean number of arrivals in one burst (sets the time scale of the on/off switching).
BURST_MEAN_ARRIVALS = 40.0

#: ``drift``: second-half base-time factor per kind (cheap kinds get dear and vice
#: versa) and the change in each kind's payload slope (some steepen, some flatten).
DRIFT_BASE_FACTOR = {"metrics": 3.0, "traces": 0.5, "logs": 2.0, "ml-infer": 0.4, "etl": 1.0}
DRIFT_SLOPE_DELTA = {"metrics": 0.3, "traces": 0.2, "logs": -0.3, "ml-infer": 0.4, "etl": -0.3}

#: ``tree``: levels of children below a root, fan-out per parent, join probability.
TREE_LEVELS = (1, 3)
TREE_FAN_OUT = (1, 4)
#: Chance that a child (level >= 2) also waits for a second parent of the level above.
TREE_JOIN_SHARE = 0.2
#: A tree holds at most n // TREE_MIN_TREES tasks (at least 1), so even a small trace has
#: several arrival instants over which to spread the load.
TREE_MIN_TREES = 8
#: Offered load needs an arrival span, hence at least two tasks (two arrival instants).
MIN_TASKS = 2


def generate(scenario: str, *, n: int, slots: int, load: float, seed: int) -> pd.DataFrame:
    """Generate a synthetic trace that passes :func:`ray_sched.trace.validate_frame`.

    Args:
        scenario: one of :data:`SCENARIOS`.
        n: number of tasks (rows).
        slots: slot count the offered load refers to.
        load: offered load, ``sum(runtime_s * cpu) / (slots * arrival span)``.
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same frame.

    Returns:
        frame of shape (n, n_columns), sorted by ``arrival_s``; times in seconds.
        Columns: task_id, arrival_s, runtime_s, kind, tenant, region (``mixed``),
        priority, deadline_s (empty for kinds without an objective), parent_id
        (``tree``), cpu, and the features payload_bytes, n_items, n_spans, codec.

    Raises:
        ConfigError: an unknown scenario or a parameter out of range.

    Example:
        >>> frame = generate("mixed", n=300, slots=8, load=0.85, seed=1)
        >>> len(frame)
        300
    """
    if scenario not in SCENARIOS:
        raise ConfigError(f"scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    check_parameters(slots=slots, load=load, n=n)
    if n < MIN_TASKS:
        raise ConfigError(f"n must be an integer >= {MIN_TASKS} (a load needs two arrival "
                          f"instants), got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    rng = np.random.default_rng(seed)

    parents, group = (_forest(n, rng) if scenario == "tree"
                      else (None, np.arange(n)))
    n_groups = int(group[-1]) + 1
    tenant = rng.choice(len(TENANTS), size=n_groups, p=_zipf_shares(len(TENANTS),
                                                                    TENANT_ZIPF))[group]
    kind = _draw_kinds(tenant, rng)
    payload, n_items, n_spans, codec = _draw_features(kind, rng)
    second_half = (np.arange(n) >= n // 2) if scenario == "drift" else np.zeros(n, bool)
    runtime = _runtimes(kind, payload, n_items, n_spans, codec, second_half, rng)
    cpu = np.ones(n)
    for k, share in TWO_CPU_SHARE.items():
        cpu[(kind == KINDS.index(k)) & (rng.random(n) < share)] = 2.0
    priority = _priorities(kind, tenant, rng)
    # Arrivals are drawn after every task attribute, so that with one seed the
    # scenarios share their tasks and differ only in what each one changes.
    group_arrival = (_on_off_arrivals(n_groups, rng) if scenario == "bursty"
                     else _poisson_arrivals(n_groups, rng))

    kind_names = np.array(KINDS, dtype=object)[kind]
    frame = pd.DataFrame({
        "task_id": _ids(scenario, n),
        "arrival_s": group_arrival[group],
        "runtime_s": runtime,
        "kind": kind_names,
        "tenant": np.array(TENANTS, dtype=object)[tenant],
        "priority": priority,
        "deadline_s": pd.Series(kind_names).map(DEADLINE_S).to_numpy(dtype=float),
        "cpu": cpu,
        "payload_bytes": payload,
        "n_items": n_items,
        "n_spans": n_spans,
        "codec": np.array(CODECS, dtype=object)[codec],
    })
    if scenario == "mixed":
        frame["region"] = _regions(tenant, rng)
    if parents is not None:
        frame["parent_id"] = _parent_text(frame["task_id"].to_numpy(), parents)
    frame, _ = rescale_to_load(frame, slots, load)
    frame["arrival_s"] = frame["arrival_s"].round(TIME_DECIMALS)
    return validate_frame(contract_order(frame), source=f"<generate {scenario} seed={seed}>")


# ----------------------------------------------------------------------------- population


def _zipf_shares(count: int, exponent: float) -> np.ndarray:
    """Shares proportional to ``1 / rank ** exponent``, rank 1..count."""
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    return weights / weights.sum()


def _draw_kinds(tenant: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Kind index per task: tenant ``t`` ranks kinds starting from kind ``t`` (Zipf)."""
    n_kinds = len(KINDS)
    shares = _zipf_shares(n_kinds, KIND_ZIPF)
    # preference[t, k] = share of the rank that kind k has for tenant t.
    ranks = (np.arange(n_kinds)[None, :] - np.arange(len(TENANTS))[:, None]) % n_kinds
    cumulative = np.cumsum(shares[ranks], axis=1)
    draws = rng.random(len(tenant))
    return np.minimum((draws[:, None] > cumulative[tenant]).sum(axis=1), n_kinds - 1)


def _per_kind(table: dict[str, float], kind: np.ndarray) -> np.ndarray:
    return np.array([table[k] for k in KINDS], dtype=float)[kind]


def _draw_features(kind: np.ndarray, rng: np.random.Generator):
    """payload_bytes, n_items, n_spans (traces only, else 0), codec index; arrays of (n,)."""
    n = len(kind)
    payload = np.maximum(1, np.round(_per_kind(PAYLOAD_MEDIAN_BYTES, kind)
                                     * rng.lognormal(0.0, PAYLOAD_SIGMA, n))).astype(np.int64)
    n_items = np.maximum(1, np.round(payload / _per_kind(ITEM_BYTES, kind)
                                     * rng.lognormal(0.0, ITEMS_SIGMA, n))).astype(np.int64)
    n_spans = np.where(kind == KINDS.index("traces"), n_items, 0).astype(np.int64)
    codec = rng.choice(len(CODECS), size=n, p=CODEC_SHARES)
    return payload, n_items, n_spans, codec


def _runtimes(kind, payload, n_items, n_spans, codec, second_half, rng) -> np.ndarray:
    """The runtime model of the module docstring; ``second_half`` rows use the drifted model."""
    n = len(kind)
    base = _per_kind(BASE_RUNTIME_S, kind) * np.where(
        second_half, _per_kind(DRIFT_BASE_FACTOR, kind), 1.0)
    slope = _per_kind(PAYLOAD_SLOPE, kind) + np.where(
        second_half, _per_kind(DRIFT_SLOPE_DELTA, kind), 0.0)
    size_term = (payload / _per_kind(PAYLOAD_MEDIAN_BYTES, kind)) ** slope
    items_term = 1.0 + ITEMS_WEIGHT * np.log1p(n_items / ITEMS_KNEE)
    spans_term = 1.0 + SPANS_WEIGHT * np.log1p(n_spans)
    codec_term = np.array([CODEC_FACTOR[c] for c in CODECS])[codec]
    noise = rng.lognormal(0.0, NOISE_SIGMA, n)
    outlier = np.where(
        rng.random(n) < OUTLIER_SHARE,
        np.minimum(OUTLIER_MIN_FACTOR * (1.0 + rng.pareto(OUTLIER_PARETO_ALPHA, n)),
                   OUTLIER_MAX_FACTOR),
        1.0)
    runtime = base * size_term * items_term * spans_term * codec_term * noise * outlier
    return np.clip(runtime, MIN_RUNTIME_S, MAX_RUNTIME_S).round(TIME_DECIMALS)


def _priorities(kind: np.ndarray, tenant: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mostly 0; some kinds declare a level, the premium tenant more, a few tasks 9."""
    n = len(kind)
    declared = np.where(rng.random(n) < DECLARED_PRIORITY_SHARE,
                        _per_kind({k: PRIORITY_BY_KIND.get(k, 0) for k in KINDS}, kind), 0)
    premium = tenant == TENANTS.index(PREMIUM_TENANT)
    declared = np.where(premium, np.maximum(declared + PREMIUM_BOOST, PREMIUM_BOOST), declared)
    declared = np.where(rng.random(n) < URGENT_SHARE, URGENT_PRIORITY, declared)
    return np.clip(declared, 0, URGENT_PRIORITY).astype(np.int64)


def _regions(tenant: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each tenant's home region (tenant index mod 3) with HOME_REGION_SHARE, else another."""
    home = tenant % len(REGIONS)
    away = (home + rng.integers(1, len(REGIONS), len(tenant))) % len(REGIONS)
    region = np.where(rng.random(len(tenant)) < HOME_REGION_SHARE, home, away)
    return np.array(REGIONS, dtype=object)[region]


def _ids(scenario: str, n: int) -> np.ndarray:
    width = max(5, len(str(n - 1)))
    return np.char.add(f"{scenario}-", np.char.zfill(np.arange(n).astype(str), width)).astype(
        object)


# ----------------------------------------------------------------------------- arrivals


def _poisson_arrivals(count: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-rate Poisson arrival times starting at 0 (rescaled to the load afterwards)."""
    gaps = rng.exponential(1.0, count)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def _on_off_arrivals(count: int, rng: np.random.Generator) -> np.ndarray:
    """Markov-modulated on/off Poisson arrivals with mean rate 1, starting at 0.

    On spells last Exp(BURST_MEAN_ARRIVALS / BURST_RATE_FACTOR) at rate BURST_RATE_FACTOR;
    off spells are long enough that the time-average rate is 1.
    """
    on_share = (1.0 - QUIET_RATE_FACTOR) / (BURST_RATE_FACTOR - QUIET_RATE_FACTOR)
    mean_on = BURST_MEAN_ARRIVALS / BURST_RATE_FACTOR
    mean_off = mean_on * (1.0 - on_share) / on_share
    times: list[np.ndarray] = []
    total, clock = 0, 0.0
    on = bool(rng.random() < on_share)
    while total < count:
        duration = rng.exponential(mean_on if on else mean_off)
        rate = BURST_RATE_FACTOR if on else QUIET_RATE_FACTOR
        k = int(rng.poisson(rate * duration))
        times.append(clock + np.sort(rng.random(k)) * duration)
        total += k
        clock += duration
        on = not on
    arrivals = np.concatenate(times)[:count]
    return arrivals - arrivals[0]


# ----------------------------------------------------------------------------- trees


def _forest(n: int, rng: np.random.Generator) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Parent rows of each of ``n`` tasks and the tree (group) each belongs to.

    Trees are laid out one after another, parents before children, so cutting a
    tree at its size cap, or the last tree at ``n``, keeps every link valid.
    """
    parents: list[tuple[int, ...]] = []
    group: list[int] = []
    max_tree = max(1, n // TREE_MIN_TREES)
    tree = 0
    while len(parents) < n:
        level = [len(parents)]
        parents.append(())
        group.append(tree)
        size = 1
        for depth in range(int(rng.integers(TREE_LEVELS[0], TREE_LEVELS[1] + 1))):
            below = []
            for parent in level:
                for _ in range(int(rng.integers(TREE_FAN_OUT[0], TREE_FAN_OUT[1] + 1))):
                    if size == max_tree:
                        break
                    size += 1
                    links: tuple[int, ...] = (parent,)
                    if depth >= 1 and len(level) > 1 and rng.random() < TREE_JOIN_SHARE:
                        other = level[int(rng.integers(len(level)))]
                        if other != parent:
                            links = (parent, other)
                    below.append(len(parents))
                    parents.append(links)
                    group.append(tree)
            level = below
        tree += 1
    return parents[:n], np.array(group[:n])


def _parent_text(ids: np.ndarray, parents: list[tuple[int, ...]]) -> list[str | None]:
    return [PARENT_SEPARATOR.join(ids[list(p)]) if p else None for p in parents]
