"""The public facade: ``Scheduler`` runs your functions (or replayed tasks) through the
two-level scheduler on Ray.

Example:
    >>> import ray_sched
    >>> with ray_sched.Scheduler(policy="fifo", slots=4) as scheduler:   # doctest: +SKIP
    ...     future = scheduler.submit(pow, 2, 10, kind="math")
    ...     future.result(timeout=30)
    1024
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_sched.actors import GlobalScheduler
from ray_sched.actors.execute import RaisedError, call_chunk, kill_node
from ray_sched.actors.global_scheduler import (
    ACTOR_NAMESPACE,
    start_learner,
    start_local,
    start_monitor,
)
from ray_sched.actors.runtime import ensure_ray
from ray_sched.control import Controls
from ray_sched.errors import ConfigError, SchedulerClosedError, TaskFailedError
from ray_sched.learner.learner import DEFAULT_CHECKPOINT_EVERY
from ray_sched.policies import BASELINES, resolve_policy
from ray_sched.task import DEFAULT_KIND, DEFAULT_TENANT, MAX_PRIORITY, Completion, Task
from ray_sched.topology import NodeInfo, plan_local_schedulers

log = logging.getLogger(__name__)
alert_log = logging.getLogger("ray_sched.alerts")

#: How long the completion pump waits in one long poll; bounds shutdown latency.
POLL_WAIT_S = 0.25
#: How often the driver fetches fired alerts to log them.
ALERT_POLL_S = 1.0
#: How long to wait for the actors to come up (worker processes start slowly on 2 cores).
STARTUP_TIMEOUT_S = 180.0


class TaskFuture:
    """The pending result of one submitted task.

    ``result(timeout)`` returns the function's value or raises its exception (the
    original type, with the remote traceback as a note); ``await future`` does
    the same in asyncio code; ``object_ref()`` gives the Ray ObjectRef of the value
    for ``ray.get``.
    """

    def __init__(self, task_id: str):
        self.task_id = task_id
        self._completion: concurrent.futures.Future = concurrent.futures.Future()

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"TaskFuture({self.task_id!r}, {state})"

    def done(self) -> bool:
        return self._completion.done()

    def completion(self, timeout: float | None = None) -> Completion:
        """The completion record (times, worker, attempts, status), waiting up to ``timeout``."""
        return self._completion.result(timeout)

    def object_ref(self, timeout: float | None = None) -> ray.ObjectRef | None:
        """The ObjectRef of the return value once the task has run (None for replayed tasks)."""
        return self.completion(timeout).value_ref

    def result(self, timeout: float | None = None) -> Any:
        """The task's return value.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
            Exception: the function's own exception, re-raised with its original type.
            TaskFailedError: the task could not run (a parent failed, its worker was lost).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        completion = self._completion.result(timeout)
        value = None
        if completion.value_ref is not None:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            value = ray.get(completion.value_ref, timeout=remaining)
        return self._interpret(completion, value)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            self.result(timeout)
        except (TimeoutError, concurrent.futures.TimeoutError):
            raise
        except BaseException as error:  # noqa: BLE001 - returned, as concurrent.futures does
            return error
        return None

    def add_done_callback(self, fn: Callable[[TaskFuture], None]) -> None:
        self._completion.add_done_callback(lambda _: fn(self))

    def __await__(self):
        return self._result_async().__await__()

    async def _result_async(self) -> Any:
        completion = await asyncio.wrap_future(self._completion)
        value = await completion.value_ref if completion.value_ref is not None else None
        return self._interpret(completion, value)

    def _interpret(self, completion: Completion, value: Any) -> Any:
        if isinstance(value, RaisedError):
            value.reraise()
        if completion.status != "ok":
            raise TaskFailedError(f"task {self.task_id!r} failed: {completion.error}")
        return value

    def _set(self, completion: Completion) -> None:
        if not self._completion.done():
            self._completion.set_result(completion)

    def _fail(self, error: BaseException) -> None:
        if not self._completion.done():
            self._completion.set_exception(error)


def _alert_rules(alerts) -> list:
    """Alert rules from a TOML path or a list of AlertRule (refused at start if malformed)."""
    from ray_sched.monitor.alerts import AlertRule, load_rules

    if alerts is None:
        return []
    if isinstance(alerts, (str, Path)):
        return load_rules(alerts)
    rules = list(alerts)
    for rule in rules:
        if not isinstance(rule, AlertRule):
            raise ConfigError(f"alerts must be a rules file path or AlertRule objects, got "
                              f"{type(rule).__name__}")
    return rules


def _otlp_endpoint(endpoint: str | None) -> str | None:
    """The endpoint, checked at start (ConfigError naming it) rather than in the monitor."""
    if endpoint is not None:
        from ray_sched.monitor.telemetry import metrics_url

        metrics_url(endpoint)
    return endpoint


def _validate_options(priority: int, deadline_s: float | None, cpu: float) -> None:
    if not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise ConfigError(f"priority must be an integer 0..{MAX_PRIORITY}, got {priority!r}")
    if deadline_s is not None and not (isinstance(deadline_s, (int, float)) and deadline_s > 0
                                       and math.isfinite(deadline_s)):
        raise ConfigError(f"deadline_s must be a number > 0, got {deadline_s!r}")
    if not (isinstance(cpu, (int, float)) and cpu > 0):
        raise ConfigError(f"cpu must be a number > 0, got {cpu!r}")


class Scheduler:
    """Run tasks through a GlobalScheduler and its LocalSchedulers on Ray.

    Args:
        policy: a policy name (``fifo``, ``priority``, ``edf``, ``power-of-two``, …, or
            ``ORDERING+PLACEMENT``); see :func:`ray_sched.policies.policy_names`.
        slots: total concurrent task slots over all local schedulers (default: the
            cluster's CPUs). Without ``address`` and without a running Ray, an embedded
            Ray is started with ``num_cpus=slots``.
        address: an existing Ray cluster (``"auto"`` or ``"ray://…"``).
        local_schedulers: how many local schedulers (default: one per Ray node).
        regions: regions to assign to the local schedulers in turn.
        seed: seed of the randomised placement policies.
        warmup: start every slot's worker process before returning, so that the first
            tasks do not pay for process start-up.
        actor_options: passed to the GlobalScheduler actor's ``.options()``.
        model_dir: where the learner writes its checkpoints (policies that predict);
            None writes none.
        model: a checkpoint (file or directory) to start the learner from; by default
            the latest in ``model_dir``.
        fresh: start the learner from nothing, ignoring any checkpoint.
        checkpoint_every: completions between two learner checkpoints.
        stages: named processing stages, ``{name: factory}``: every local scheduler starts
            one actor per slot on its node holding ``factory()`` (a picklable callable, e.g.
            a class or a ``functools.partial``), and :meth:`submit_stage` runs that object's
            methods there as scheduled tasks, so that state lives across tasks.
        monitor: run the Monitor actor (live metrics, alerts, self-telemetry); False
            turns it off.
        alerts: alert rules: a TOML file path (see :mod:`ray_sched.monitor.alerts`) or a
            list of :class:`~ray_sched.monitor.alerts.AlertRule`. Fired alerts are logged
            as warnings (logger ``ray_sched.alerts``) and kept in :meth:`alerts`.
        monitor_dir: where the monitor appends ``alerts.jsonl`` as alerts fire.
        otlp_endpoint: an OTLP/HTTP base URL (``http://host:4318``): the scheduler's own
            metrics go there through the OpenTelemetry SDK, and each alert as a log record.
        inline: the hybrid path: a local scheduler runs a task on its own threads when
            the task's predicted p90 is below the measured cost of launching a Ray task
            (policies that predict; see :mod:`ray_sched.control.inline`). False: always
            launch (``--no-inline``).
        controls: which adaptive controllers run, a :class:`ray_sched.control.Controls`
            or a dict of its fields: ``steal`` (work stealing, on), ``forecast`` (on),
            ``adaptive`` (adaptive concurrency, off), ``min_slots``/``max_slots``;
            ``inline`` above overrides its own field when False.

    Raises:
        ConfigError: an unknown policy, a baseline name, or slots that cannot be split.
    """

    def __init__(self, policy: str = "fifo", slots: int | None = None, *,
                 address: str | None = None, local_schedulers: int | None = None,
                 regions: list[str] | None = None, seed: int | None = 0, warmup: bool = True,
                 actor_options: dict | None = None, model_dir: str | None = "models",
                 model: str | None = None, fresh: bool = False,
                 checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                 stages: dict[str, Callable[[], Any]] | None = None, monitor: bool = True,
                 alerts: str | Path | list | None = None, monitor_dir: str | Path | None = None,
                 otlp_endpoint: str | None = None, inline: bool = True,
                 controls: Controls | dict | None = None):
        if policy in BASELINES:
            raise ConfigError(f"{policy!r} is a baseline: use ray_sched.replay.replay() or "
                              f"`ray-sched replay --policy {policy}` to measure it")
        self.policy = resolve_policy(policy)
        self.controls = Controls.of(controls, inline=None if inline else False)
        if slots is not None and (not isinstance(slots, int) or slots < 1):
            raise ConfigError(f"slots must be an integer >= 1, got {slots!r}")
        self._owns_ray = ensure_ray(slots, address)
        nodes = [NodeInfo(n["NodeID"], n["Resources"].get("CPU", 0.0))
                 for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
        self.slots = slots or int(sum(n.cpus for n in nodes))
        self.plan = plan_local_schedulers(nodes, self.slots, count=local_schedulers,
                                          regions=regions)
        here = ray.get_runtime_context().get_node_id()
        # On the driver's node for good: a soft affinity let Ray put it on a worker node,
        # whose loss then took the whole scheduler with it (seen in the node-loss test).
        options = {"scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=False)}
        options.update(actor_options or {})
        learner_options = None
        if self.policy.needs_predictions:
            if model is not None and not Path(model).exists():
                raise ConfigError(f"--model {model}: no such checkpoint file or directory")
            learner_options = {
                "model_dir": None if model_dir is None else str(Path(model_dir).resolve()),
                "load": None if fresh else (str(Path(model).resolve()) if model else "latest"),
                "checkpoint_every": checkpoint_every}
        self.learner_info: dict | None = None
        self.stages = dict(stages or {})
        for name, factory in self.stages.items():
            if not callable(factory):
                raise ConfigError(f"stage {name!r}: the factory must be callable, got "
                                  f"{type(factory).__name__}")
        monitor_options = None
        if monitor:
            monitor_options = {"rules": [r.as_dict() for r in _alert_rules(alerts)],
                               "out_dir": None if monitor_dir is None
                               else str(Path(monitor_dir).resolve()),
                               "otlp_endpoint": _otlp_endpoint(otlp_endpoint)}
        elif alerts or otlp_endpoint:
            raise ConfigError("alerts and otlp_endpoint need the monitor (monitor=True)")
        # Restarted by Ray when it dies; its local schedulers, learner and monitor are named
        # actors under this prefix, started here (owned by this driver, not detached: the
        # Ray tasks they launch then run in this job's worker processes, which the next
        # Scheduler reuses, where a detached actor's tasks get workers started for it
        # alone). They outlive the global scheduler, which finds them by name (see
        # recover()).
        self._prefix = f"ray_sched-{uuid.uuid4().hex[:12]}"
        nice = {"control_nice": self.controls.control_nice}
        learner = (None if learner_options is None else
                   start_learner(self._prefix, here, learner_options, nice, detached=False))
        # Held for their lifetime: Ray ends an actor that is not detached once the handles
        # of its owner are gone.
        self._owned = [learner] if learner is not None else []
        if monitor_options is not None:
            self._owned.append(
                start_monitor(self._prefix, here, monitor_options, nice, detached=False))
        self._global = GlobalScheduler.options(
            max_restarts=-1, max_task_retries=0, **options).remote(
            self.plan, self.policy.ordering, self.policy.placement, seed, learner_options,
            self.stages, monitor_options, self.controls.inline, self.controls.as_dict(),
            self._prefix, started_by_driver=True)
        self._owned += [start_local(self._prefix, entry, self.policy.ordering, self._global,
                                    learner, self.stages, self.controls.as_dict(),
                                    detached=False) for entry in self.plan]
        self._roles = [entry["name"] for entry in self.plan] + ["learner", "monitor"]
        ray.get(self._global.ready.remote(), timeout=STARTUP_TIMEOUT_S)
        self._incarnation = ray.get(self._global.incarnation_id.remote(),
                                    timeout=STARTUP_TIMEOUT_S)
        if warmup:
            ray.get(self._global.warmup.remote(), timeout=STARTUP_TIMEOUT_S)
        self.t0 = time.time()
        self._futures: dict[str, TaskFuture] = {}
        # Submitted and not yet seen recorded, and those recorded as failed: what a
        # restarted global scheduler needs to rebuild its ledger.
        self._unrecorded: dict[str, Task] = {}
        self._failed_ids: set[str] = set()
        self.n_global_restarts = 0
        self._used_ids: set[str] = set()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[list[Completion]], None]] = []
        self._closed = False
        self._alerts: list[dict] = []
        self._alerts_lock = threading.Lock()
        self._alerts_polled = time.monotonic()
        self._pump = threading.Thread(target=self._pump_loop, name="ray-sched-pump", daemon=True)
        self._pump.start()

    # -- submission ----------------------------------------------------------------------
    def submit(self, fn: Callable, *args: Any, kind: str = DEFAULT_KIND,
               tenant: str = DEFAULT_TENANT, region: str | None = None, priority: int = 0,
               deadline_s: float | None = None, features: dict | None = None,
               after: Iterable[TaskFuture | str] = (), cpu: float = 1.0,
               task_id: str | None = None, **kwargs: Any) -> TaskFuture:
        """Schedule ``fn(*args, **kwargs)``; returns its :class:`TaskFuture` at once.

        Args:
            fn: any picklable callable; it runs on the node the scheduler picks.
            kind, tenant, region: categorical features; ``region`` also steers placement.
            priority: 0..9, 9 most urgent (read by the ``priority`` policy).
            deadline_s: relative deadline in seconds (read by ``edf``).
            features: extra numeric or string features for the learner.
            after: futures (or task ids) that must finish first; a failed parent fails this.
            cpu: slots the task occupies.
            task_id: your own unique id (default: generated).

        Raises:
            ConfigError: a bad option (named, with its value) or a task id already used.
            SchedulerClosedError: after ``shutdown()``.

        Example:
            >>> future = scheduler.submit(sum, [1, 2, 3], kind="math")   # doctest: +SKIP
            >>> future.result()                                          # doctest: +SKIP
            6
        """
        task = self._make_task(fn, args, kwargs, kind=kind, tenant=tenant, region=region,
                               priority=priority, deadline_s=deadline_s, features=features,
                               after=after, cpu=cpu, task_id=task_id)
        return self.submit_tasks([task])[0]

    def submit_stage(self, stage: str, method: str, *args: Any, kind: str | None = None,
                     features: dict | None = None, **options: Any) -> TaskFuture:
        """Schedule ``<stage object>.<method>(*args)`` on one of the stage's actors.

        ``options`` are those of :meth:`submit` (tenant, region, priority, deadline_s,
        after, task_id); ``kind`` defaults to ``"<stage>.<method>"``. ObjectRef arguments
        are resolved before the call, as for :meth:`submit`.

        Raises:
            ConfigError: an unknown stage or method name, or a bad option.
        """
        task = self.stage_task(stage, method, *args, kind=kind, features=features, **options)
        return self.submit_tasks([task])[0]

    def stage_task(self, stage: str, method: str, *args: Any, kind: str | None = None,
                   features: dict | None = None, **options: Any) -> Task:
        """The Task :meth:`submit_stage` would submit, for :meth:`submit_tasks` to send many
        in one batch (one call to the global scheduler, one prediction request)."""
        if stage not in self.stages:
            raise ConfigError(f"unknown stage {stage!r}; this Scheduler has "
                              f"{sorted(self.stages) or 'no stages'}")
        if not isinstance(method, str) or not method.isidentifier():
            raise ConfigError(f"method must be a method name, got {method!r}")
        task = self._make_task(None, args, {}, kind=kind or f"{stage}.{method}",
                               features=features, **options)
        task.stage = stage
        # Inline, not ray.put: it is a name and (usually) ObjectRefs, smaller than a put.
        task.payload = (method, tuple(args), {})
        return task

    def close_stages(self, timeout: float = 60.0) -> list:
        """Call ``close()`` on every stage object (flush what they buffer); returns the results."""
        return ray.get(self._global.close_stages.remote(), timeout=timeout)

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int | None = None, **options: Any) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``: every call is submitted at once (in one
        batch), results are yielded in order. ``options`` are those of :meth:`submit`.

        Args:
            chunksize: None (the default): one task per call, and each local scheduler
                starts consecutive tiny calls together in one Ray launch, from their
                predicted and measured runtimes and the launch cost it measures
                (``--no-batch`` turns that off). A whole number k: every k consecutive
                calls are one task (one prediction, one launch, one result), as
                ``multiprocessing.Pool.map``'s chunksize; ObjectRef arguments are resolved
                first, as for single calls.

        Raises:
            ConfigError: a bad ``chunksize`` or option.
        """
        if chunksize is not None and (isinstance(chunksize, bool)
                                      or not isinstance(chunksize, int) or chunksize < 1):
            raise ConfigError(f"chunksize must be a whole number >= 1 or None, got "
                              f"{chunksize!r}")
        calls = list(zip(*iterables))
        chunked = chunksize is not None and chunksize > 1
        if chunked:
            tasks = [self._make_task(call_chunk, (fn, calls[start:start + chunksize]), {},
                                     **options)
                     for start in range(0, len(calls), chunksize)]
        else:
            tasks = [self._make_task(fn, args, {}, **options) for args in calls]
        futures = self.submit_tasks(tasks)
        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[Any]:
            for future in futures:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if chunked:
                    yield from future.result(remaining)
                else:
                    yield future.result(remaining)
        return results()

    def submit_tasks(self, tasks: list[Task]) -> list[TaskFuture]:
        """Submit ready-made Tasks in one batch (the replay's path). A task without a payload
        runs synthetic work of ``runtime_s`` seconds."""
        now = time.time()
        futures = []
        with self._lock:
            if self._closed:
                raise SchedulerClosedError("this Scheduler has been shut down")
            for task in tasks:
                if task.task_id in self._used_ids:
                    raise ConfigError(f"task_id {task.task_id!r} was already submitted")
            for task in tasks:
                if task.payload is None and (task.runtime_s is None or task.runtime_s <= 0):
                    raise ConfigError(f"task {task.task_id!r} has neither a function nor a "
                                      f"runtime_s > 0 to replay")
                task.submitted_at = task.submitted_at or now
                self._used_ids.add(task.task_id)
                future = TaskFuture(task.task_id)
                self._futures[task.task_id] = future
                self._unrecorded[task.task_id] = task
                futures.append(future)
        if tasks:
            self._global.submit.remote(tasks)
        return futures

    def _make_task(self, fn, args, kwargs, *, kind=DEFAULT_KIND, tenant=DEFAULT_TENANT,
                   region=None, priority=0, deadline_s=None, features=None, after=(), cpu=1.0,
                   task_id=None) -> Task:
        if fn is not None and not callable(fn):
            raise ConfigError(f"fn must be callable, got {type(fn).__name__}")
        _validate_options(priority, deadline_s, cpu)
        parents = tuple(p.task_id if isinstance(p, TaskFuture) else str(p) for p in after)
        now = time.time()
        return Task(
            task_id=task_id if task_id is not None else f"task-{next(self._ids)}",
            arrival_s=now - self.t0, kind=str(kind), tenant=str(tenant),
            region=None if region is None else str(region), priority=priority,
            deadline_s=None if deadline_s is None else float(deadline_s), parents=parents,
            cpu=float(cpu), features=dict(features or {}), submitted_at=now,
            payload=None if fn is None else ray.put((fn, tuple(args), dict(kwargs))),
        )

    # -- completions -----------------------------------------------------------------------
    def add_listener(self, listener: Callable[[list[Completion]], None]) -> None:
        """Call ``listener(batch)`` (on the pump thread) for every batch of completions."""
        self._listeners.append(listener)

    def _pump_loop(self) -> None:
        while not self._closed:
            try:
                incarnation, batch = ray.get(self._global.take.remote(POLL_WAIT_S),
                                             timeout=60)
            except Exception as error:  # noqa: BLE001 - report and keep serving
                if self._closed:
                    return
                log.warning("completion poll failed: %s", error)
                time.sleep(0.1)
                continue
            if incarnation != self._incarnation:
                if not self._recover():
                    time.sleep(0.1)
                    continue  # retried at the next poll
                self._incarnation = incarnation
            if time.monotonic() - self._alerts_polled >= ALERT_POLL_S:
                self._poll_alerts()
            if not batch:
                continue
            with self._lock:
                futures = [self._futures.pop(c.task_id, None) for c in batch]
                for completion in batch:
                    self._unrecorded.pop(completion.task_id, None)
                    if completion.status != "ok":
                        self._failed_ids.add(completion.task_id)
            for listener in self._listeners:
                try:
                    listener(batch)
                except Exception:
                    log.exception("completion listener failed")
            for future, completion in zip(futures, batch):
                if future is not None:
                    future._set(completion)

    def _ask_global(self, method: str, *args, timeout_s: float = STARTUP_TIMEOUT_S):
        """Call the global scheduler, waiting out a restart (it is unavailable meanwhile)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return ray.get(getattr(self._global, method).remote(*args),
                               timeout=max(1.0, deadline - time.monotonic()))
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def _recover(self) -> bool:
        """The global scheduler was restarted: hand it every task not yet seen recorded so
        that it rebuilds its ledger (see ``GlobalScheduler.recover``). False: try again."""
        with self._lock:
            tasks = list(self._unrecorded.values())
            failed = list(self._failed_ids)
        try:
            counts = ray.get(self._global.recover.remote(tasks, failed),
                             timeout=STARTUP_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - the next poll tries again
            log.warning("global scheduler recovery failed (retrying): %s", error)
            return False
        self.n_global_restarts += 1
        log.warning("the global scheduler was restarted: %s task(s) held by local "
                    "schedulers, %s placed anew", counts.get("held"), counts.get("placed_again"))
        return True

    def _poll_alerts(self) -> None:
        with self._alerts_lock:  # the pump thread and alerts() callers poll alike
            self._alerts_polled = time.monotonic()
            try:
                fired = ray.get(self._global.alerts_since.remote(len(self._alerts)),
                                timeout=10)
            except Exception as error:  # noqa: BLE001 - alerts are best effort, tasks not
                log.debug("alert poll failed: %s", error)
                return
            for alert in fired:
                alert_log.warning("ALERT %s", alert["message"])
            self._alerts.extend(fired)

    def alerts(self) -> list[dict]:
        """Alerts fired so far (the lines of ``alerts.jsonl``), oldest first."""
        self._poll_alerts()
        return list(self._alerts)

    def control_stats(self) -> dict:
        """Adaptive control: tasks stolen, the forecast (with its error against the naive
        forecast, and burst warnings), and each local scheduler's slot changes with their
        effect (see :mod:`ray_sched.control`)."""
        return ray.get(self._global.control_stats.remote(), timeout=30)

    def inline_stats(self) -> dict:
        """Per local scheduler: the launch cost learnt, tasks run inline and remote, and
        the bounded history of mode switches with their reasons."""
        return ray.get(self._global.inline_stats.remote(), timeout=30)

    def check_fault(self, action: str, index: int = 0) -> None:
        """Refuse a fault :meth:`inject_fault` could not inject (before a replay starts).

        Raises:
            ConfigError: an unknown action, a local scheduler index out of range, or
                ``kill-learner`` under a policy without a learner.
        """
        if action in ("kill-local", "kill-node") and index >= 0 and not index < len(self.plan):
            raise ConfigError(f"--chaos {action}:{index}: this scheduler has "
                              f"{len(self.plan)} local scheduler(s), 0..{len(self.plan) - 1}")
        if action == "kill-learner":
            if not self.policy.needs_predictions:
                raise ConfigError(f"--chaos kill-learner: policy {self.policy.name!r} has no "
                                  f"learner (use ml)")
        elif action == "kill-node":
            self._node_to_kill(index)
        elif action not in ("kill-local", "kill-global"):
            raise ConfigError(f"--chaos: unknown action {action!r}")

    def _node_to_kill(self, index: int) -> str:
        """The node ``kill-node`` would kill: local scheduler ``index``'s (-1: the first
        one on a live node other than the driver's), never the driver's own.

        Raises:
            ConfigError: that node is the driver's or no longer alive, or no local
                scheduler is on a live node other than the driver's.
        """
        here = ray.get_runtime_context().get_node_id()
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        plan = self._ask_global("plan_now")
        if index < 0:
            off = [entry["node_id"] for entry in plan
                   if entry["node_id"] != here and entry["node_id"] in alive]
            if not off:
                raise ConfigError("--chaos kill-node: no local scheduler is on a live node "
                                  "other than the driver's; kill-node needs a multi-node "
                                  "cluster (the driver's node is never killed)")
            return off[0]
        node = plan[index]["node_id"]
        if node == here:
            raise ConfigError(f"--chaos kill-node:{index}: local scheduler {index} is on the "
                              f"driver's node, which is never killed")
        if node not in alive:
            raise ConfigError(f"--chaos kill-node:{index}: the node of local scheduler "
                              f"{index} is not alive")
        return node

    def inject_fault(self, action: str, index: int = 0) -> None:
        """Kill a part of this scheduler for good (``kill-local``, local scheduler
        ``index``; ``kill-node``, that local scheduler's node) or to be restarted
        (``kill-learner``, ``kill-global``); see :mod:`ray_sched.control.chaos`. Recovery
        is the global scheduler's job."""
        self.check_fault(action, index)
        if action == "kill-local":
            handles = self._ask_global("local_handles")
            log.warning("chaos: killing local scheduler %d", index)
            ray.kill(handles[index], no_restart=True)
        elif action == "kill-learner":
            learner = self._ask_global("learner_actor")
            log.warning("chaos: killing the learner (it restarts from its checkpoint)")
            ray.kill(learner, no_restart=False)
        elif action == "kill-global":
            log.warning("chaos: killing the global scheduler (Ray restarts it)")
            ray.kill(self._global, no_restart=False)
        else:
            try:
                node = self._node_to_kill(index)
            except ConfigError as error:  # it may have died since the replay started
                log.warning("chaos: %s; nothing killed", error)
                return
            log.warning("chaos: killing node %s", node[:12])
            kill_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node, soft=False)).remote()

    def control_cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of each of this scheduler's actors, by role (``global``,
        ``local:<name>``, ``learner``, ``monitor``): what its control plane has cost."""
        return ray.get(self._global.cpu_seconds.remote(), timeout=30)

    def set_epoch(self, epoch: float) -> None:
        """The wall time that the monitor's and the decision log's ``t_s`` count from."""
        self._global.set_epoch.remote(epoch)  # not awaited: the replay's clock has started

    def monitor_output(self) -> dict:
        """The monitor's ``timeseries`` and ``totals`` (when it runs) and the ``decisions``
        log, as pandas frames and a dict; see :meth:`GlobalScheduler.monitor_output`."""
        return ray.get(self._global.monitor_output.remote(), timeout=60)

    # -- queries and lifecycle ------------------------------------------------------------
    def stats(self) -> dict:
        """Outstanding tasks, recorded completions and each local scheduler's state."""
        return ray.get(self._global.stats.remote(), timeout=30)

    def story(self, task_id: str) -> list[dict]:
        """Every decision logged about one task (placement, waiting, completion)."""
        return ray.get(self._global.story.remote(task_id), timeout=30)

    def pending(self) -> int:
        with self._lock:
            return len(self._futures)

    def shutdown(self) -> None:
        """Stop the actors (tasks still pending fail with SchedulerClosedError) and, when this
        Scheduler started Ray, stop Ray too. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending, self._futures = list(self._futures.values()), {}
        self._pump.join(timeout=5)
        for future in pending:
            future._fail(SchedulerClosedError(f"task {future.task_id!r}: the scheduler was "
                                              f"shut down before it finished"))
        try:
            self.learner_info = ray.get(self._global.shutdown.remote(), timeout=60)
            ray.kill(self._global)
        except Exception as error:  # noqa: BLE001 - shutting down anyway
            log.debug("global scheduler shutdown: %s", error)
        self._kill_named()
        if self._owns_ray:
            ray.shutdown()

    def _kill_named(self) -> None:
        """Kill this scheduler's named detached actors that are still alive (the global
        scheduler kills them at its shutdown; this covers a global scheduler that could
        not). They outlive the driver otherwise."""
        for role in self._roles:
            try:
                ray.kill(ray.get_actor(f"{self._prefix}/{role}", namespace=ACTOR_NAMESPACE))
            except Exception:  # noqa: BLE001, S112 - gone already
                continue

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()
