"""How slots are split over local schedulers, nodes and regions (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass

from ray_sched.errors import ConfigError


@dataclass(frozen=True)
class NodeInfo:
    """A Ray node able to run tasks: its id and CPU count."""

    node_id: str
    cpus: float


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` integers differing by at most one, largest first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def split_by_weight(total: int, weights: list[float]) -> list[int]:
    """``total`` split proportionally to ``weights`` (largest remainders), each part >= 1."""
    parts = len(weights)
    if total < parts:
        raise ConfigError(f"{total} slot(s) cannot be split over {parts} local schedulers; "
                          f"give --slots >= {parts}")
    weights = [w if w > 0 else 0.0 for w in weights]
    weight_sum = sum(weights)
    if weight_sum == 0:
        return split_evenly(total, parts)
    shares = [total * w / weight_sum for w in weights]
    counts = [int(s) for s in shares]
    order = sorted(range(parts), key=lambda i: shares[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    for i in range(parts):  # every part gets at least one, taken from the largest
        if counts[i] == 0:
            counts[max(range(parts), key=lambda j: counts[j])] -= 1
            counts[i] = 1
    return counts


def plan_local_schedulers(nodes: list[NodeInfo], slots: int, *, count: int | None = None,
                          regions: list[str] | None = None) -> list[dict]:
    """Decide the local schedulers: name, node, slots and region of each.

    Default: one per node, with the slots split in proportion to each node's CPUs.
    With ``count``: that many, spread over the nodes in turn, slots split evenly.
    With ``regions``: scheduler *i* serves the *i*-th of the sorted distinct regions, in
    turn (when there
    are fewer schedulers than regions, the regions left without one are served by any).

    Raises:
        ConfigError: no node, fewer slots than schedulers, or a count < 1.
    """
    if not nodes:
        raise ConfigError("no alive Ray node with CPUs to run local schedulers on")
    if slots < 1:
        raise ConfigError(f"--slots must be >= 1, got {slots}")
    if count is None:
        count = len(nodes)
        per_scheduler = split_by_weight(slots, [n.cpus for n in nodes])
    else:
        if count < 1:
            raise ConfigError(f"--local-schedulers must be >= 1, got {count}")
        if slots < count:
            raise ConfigError(f"{slots} slot(s) cannot be split over {count} local "
                              f"schedulers; give --slots >= {count}")
        per_scheduler = split_evenly(slots, count)
    regions = sorted(set(regions)) if regions else []
    plan = []
    for i in range(count):
        region = regions[i % len(regions)] if regions else None
        plan.append({
            "name": f"local-{i}" + (f"-{region}" if region else ""),
            "node_id": nodes[i % len(nodes)].node_id,
            "slots": per_scheduler[i],
            "region": region,
        })
    return plan
