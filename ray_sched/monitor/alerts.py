"""Alert rules: read from TOML, judged on the monitor's windows, fired on the rising edge.

A rules file holds one ``[[rule]]`` table per rule::

    [[rule]]
    name = "eu queue growing"      # unique; names the alert
    metric = "queue_growth_tps"    # one of METRICS below
    above = 2.0                    # or `below = …` (exactly one of the two)
    window_s = 5                   # the window the metric is measured over (default 10)
    region = "eu"                  # optional: only tasks and local schedulers of this region
    min_tasks = 5                  # optional: judge a task metric only on this many tasks

A rule fires when its condition becomes true (not on every sample while it stays true) and
re-arms once it is false again, so one overload gives one alert, not one a second. Every
fault in the file is refused at start with its line and the reason (:class:`AlertRulesError`).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from ray_sched.errors import AlertRulesError

#: What a rule can watch, with its unit; MonitorCore.window_value computes each.
METRICS = {
    "deadline_miss_rate": "share of the tasks with a deadline that finished (or failed) in "
                          "the window and missed it",
    "jct_p99_s": "p99 job completion time, seconds, of the tasks finished in the window",
    "jct_mean_s": "mean job completion time, seconds, of the tasks finished in the window",
    "failure_rate": "share of the tasks recorded in the window that failed",
    "queue_length": "tasks queued at the local schedulers at the latest sample",
    "queue_growth_tps": "growth of the queued tasks over the window, tasks per second "
                        "(least-squares slope of the samples)",
    "utilization": "busy slots / slots, mean of the samples in the window",
    "prediction_error_log": "mean |log(predicted) - log(measured)| of the window's tasks",
    "prediction_error_jump": "that error over the window divided by its mean over the "
                             "BASELINE_WINDOWS windows before it",
    "lost": "local schedulers, learners and nodes lost within the window",
}
#: Metrics over tasks, to which ``min_tasks`` applies.
TASK_METRICS = frozenset({"deadline_miss_rate", "jct_p99_s", "jct_mean_s", "failure_rate",
                          "prediction_error_log", "prediction_error_jump"})
#: A task metric is not judged on fewer tasks than this: one slow task is not a p99.
DEFAULT_MIN_TASKS = 5
DEFAULT_WINDOW_S = 10.0
#: The windows before the current one that make prediction_error_jump's baseline.
BASELINE_WINDOWS = 5
_KEYS = {"name", "metric", "above", "below", "window_s", "region", "min_tasks"}
_RULE_HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")


@dataclass(frozen=True)
class AlertRule:
    """One rule. ``op`` is ``"above"`` or ``"below"``; ``region`` None means the cluster."""

    name: str
    metric: str
    op: str
    threshold: float
    window_s: float = DEFAULT_WINDOW_S
    region: str | None = None
    min_tasks: int = DEFAULT_MIN_TASKS

    def breached(self, value: float) -> bool:
        return value > self.threshold if self.op == "above" else value < self.threshold

    @property
    def scope(self) -> str:
        return "cluster" if self.region is None else f"region:{self.region}"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Alert:
    """A fired alert: one line of ``alerts.jsonl``."""

    time_s: float
    wall: float
    rule: str
    metric: str
    value: float
    threshold: float
    op: str
    scope: str
    message: str

    def as_dict(self) -> dict:
        return asdict(self)


def parse_rules(text: str, *, path: str = "<rules>") -> list[AlertRule]:
    """Rules from TOML text.

    Raises:
        AlertRulesError: bad TOML, an unknown key or metric, a missing or non-numeric
            threshold, both or neither of ``above``/``below``, a window <= 0, a duplicate
            name; each with the line of the rule (or of the key) at fault.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        match = re.search(r"line (\d+)", str(error))
        raise AlertRulesError(path, f"not valid TOML: {error}",
                              line=int(match.group(1)) if match else None) from None
    extra = sorted(set(document) - {"rule"})
    if extra:
        raise AlertRulesError(path, f"unknown top-level key {extra[0]!r}; rules go in "
                                    f"[[rule]] tables", line=_key_line(text, extra[0], 0))
    tables = document.get("rule", [])
    if not isinstance(tables, list):
        raise AlertRulesError(path, "'rule' must be an array of tables: write [[rule]]",
                              line=_key_line(text, "rule", 0))
    headers = [n for n, line in enumerate(text.splitlines(), 1) if _RULE_HEADER.match(line)]
    rules, names = [], set()
    for index, table in enumerate(tables):
        line = headers[index] if index < len(headers) else None
        rule = _rule(table, path, line, text)
        if rule.name in names:
            raise AlertRulesError(path, f"duplicate rule name {rule.name!r}",
                                  line=_key_line(text, "name", line))
        names.add(rule.name)
        rules.append(rule)
    return rules


def load_rules(path: str | Path) -> list[AlertRule]:
    """Rules from a TOML file (see the module docstring).

    Raises:
        AlertRulesError: the file is missing, unreadable or malformed (with the line).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AlertRulesError(str(path), f"cannot read the rules file: {error}") from None
    return parse_rules(text, path=str(path))


def _rule(table: dict, path: str, line: int | None, text: str) -> AlertRule:
    def fail(reason: str, key: str | None = None):
        raise AlertRulesError(path, reason, line=_key_line(text, key, line) if key else line)

    unknown = sorted(set(table) - _KEYS)
    if unknown:
        fail(f"unknown key {unknown[0]!r}; a rule takes {sorted(_KEYS)}", unknown[0])
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        fail("every rule needs a name = \"…\" (a non-empty string)",
             "name" if "name" in table else None)
    metric = table.get("metric")
    if metric not in METRICS:
        fail(f"rule {name!r}: metric {metric!r} is not one of {sorted(METRICS)}",
             "metric" if "metric" in table else None)
    ops = [op for op in ("above", "below") if op in table]
    if len(ops) != 1:
        fail(f"rule {name!r}: give exactly one threshold, `above = …` or `below = …`"
             + (" (both given)" if len(ops) == 2 else ""), ops[1] if len(ops) == 2 else None)
    op = ops[0]
    threshold = _number(table[op])
    if threshold is None:
        fail(f"rule {name!r}: {op} must be a number, got {table[op]!r}", op)
    window = _number(table.get("window_s", DEFAULT_WINDOW_S))
    if window is None or window <= 0:
        fail(f"rule {name!r}: window_s must be a number > 0, got {table.get('window_s')!r}",
             "window_s")
    region = table.get("region")
    if region is not None and (not isinstance(region, str) or not region):
        fail(f"rule {name!r}: region must be a non-empty string, got {region!r}", "region")
    min_tasks = table.get("min_tasks", DEFAULT_MIN_TASKS)
    if isinstance(min_tasks, bool) or not isinstance(min_tasks, int) or min_tasks < 1:
        fail(f"rule {name!r}: min_tasks must be an integer >= 1, got {min_tasks!r}",
             "min_tasks")
    return AlertRule(name.strip(), metric, op, threshold, window, region, min_tasks)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _key_line(text: str, key: str | None, start: int | None) -> int | None:
    """The line of ``key = …`` in the table whose header is line ``start`` (the whole text
    when ``start`` is None); ``start`` itself when the key is not found."""
    lines = text.splitlines()
    first = start or 1
    for number in range(first, len(lines) + 1):
        line = lines[number - 1]
        if start and number > start and line.lstrip().startswith("["):
            break  # the next table
        if key and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return number
    return start


class AlertEngine:
    """Judges every rule on each sample; returns the alerts that fired now.

    Args:
        rules: the rules to judge.
        value_of: ``value_of(rule, now) -> float | None``: the rule's metric now over its
            window, None when there is not enough to judge (never fires, never re-arms).
    """

    def __init__(self, rules: list[AlertRule], value_of):
        self.rules = list(rules)
        self._value_of = value_of
        self._firing: dict[str, bool] = {rule.name: False for rule in self.rules}
        self.fired: list[Alert] = []

    def evaluate(self, now: float, *, epoch: float = 0.0) -> list[Alert]:
        """Alerts that fire at wall time ``now``; ``time_s`` counts from ``epoch``."""
        fired = []
        for rule in self.rules:
            value = self._value_of(rule, now)
            if value is None:
                continue
            breached = rule.breached(value)
            if breached and not self._firing[rule.name]:
                word = ">" if rule.op == "above" else "<"
                fired.append(Alert(
                    time_s=now - epoch, wall=now, rule=rule.name, metric=rule.metric,
                    value=float(value), threshold=rule.threshold, op=rule.op,
                    scope=rule.scope,
                    message=f"{rule.name}: {rule.metric} {value:.4g} {word} "
                            f"{rule.threshold:g} over {rule.window_s:g} s ({rule.scope})"))
            self._firing[rule.name] = breached
        self.fired.extend(fired)
        return fired

    def firing(self) -> list[str]:
        """Names of the rules whose condition holds now."""
        return [name for name, on in self._firing.items() if on]
