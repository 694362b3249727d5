"""Watching runs: the monitor's windows and alerts, reports, stories, energy, self-telemetry.

Files a run with the monitor writes beside ``tasks.parquet`` and ``summary.json``:

- ``timeseries.parquet``: one row per second per scope ("cluster" and each local
  scheduler), columns :data:`ray_sched.monitor.core.SERIES_COLUMNS`.
- ``decisions.parquet``: the global scheduler's decision log (``ray-sched story``).
- ``alerts.jsonl``: every fired alert, appended as it fires.
"""

TIMESERIES_FILE = "timeseries.parquet"
DECISIONS_FILE = "decisions.parquet"
ALERTS_FILE = "alerts.jsonl"
