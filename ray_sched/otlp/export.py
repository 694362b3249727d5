"""Export: buffered Parquet part files under an export directory, one folder per table.

``DIR/spans/``, ``DIR/metrics/``, ``DIR/logs/`` hold one row per accepted item, ``DIR/traces/``
one row per decided trace;
``DIR/span_metrics/``, ``DIR/metric_series/`` and ``DIR/log_counts/`` hold the derived
aggregates, one row per group and window. Each folder reads back as one table::

    pandas.read_parquet("DIR/spans")

A part file appears atomically (written under a dot-name, which readers skip, then
renamed), so a reader never sees half a file, even while the receiver runs.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ray_sched.errors import ConfigError
from ray_sched.otlp.schema import EXPORT_SCHEMA_VERSION

log = logging.getLogger(__name__)

#: The tables a sink writes, each to its own folder.
TABLES = ("spans", "traces", "metrics", "logs", "span_metrics", "metric_series", "log_counts")
#: A part file is written once this many rows wait (bounds the sink's memory) ...
DEFAULT_FLUSH_ROWS = 100_000
#: ... or once the oldest waiting row is this old (bounds how stale the files are).
DEFAULT_FLUSH_INTERVAL_S = 2.0


class ParquetSink:
    """Buffers arrow tables per folder and writes them as Parquet part files.

    Args:
        export_dir: the directory to write under (created if missing).
        flush_rows: rows buffered per table before a part file is written.
        flush_interval_s: the longest a row waits in the buffer (checked on every write
            and by :meth:`flush_due`).
        background: write part files on a thread of the sink's own (Parquet encoding
            releases the GIL), so that a caller serving requests is not held while a large
            part is written; :meth:`flush` waits for them, and raises the first error a
            background write met (``write_errors`` keeps them all).
    """

    def __init__(self, export_dir: str | os.PathLike, *, flush_rows: int = DEFAULT_FLUSH_ROWS,
                 flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S, background: bool = False):
        if flush_rows < 1:
            raise ConfigError(f"flush_rows must be >= 1, got {flush_rows!r}")
        if not flush_interval_s > 0:
            raise ConfigError(f"flush_interval_s must be > 0, got {flush_interval_s!r}")
        self.export_dir = Path(export_dir)
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self._buffers: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
        self._buffered_rows = dict.fromkeys(TABLES, 0)
        self._oldest: dict[str, float | None] = dict.fromkeys(TABLES)
        self._parts = itertools.count()
        # Part names stay unique across restarts and across sinks sharing a directory.
        self._prefix = f"part-{time.time_ns()}-{os.getpid()}"
        self.rows_written = dict.fromkeys(TABLES, 0)
        self.files_written = 0
        self.write_errors: list[str] = []
        for name in TABLES:
            (self.export_dir / name).mkdir(parents=True, exist_ok=True)
        self._parts_waiting: queue.Queue | None = None
        if background:
            self._parts_waiting = queue.Queue()
            threading.Thread(target=self._write_loop, name="parquet-writer", daemon=True).start()

    def write(self, table_name: str, table: pa.Table) -> None:
        """Buffer ``table``'s rows for ``DIR/<table_name>/``; write a part file when due."""
        if table_name not in self._buffers:
            raise ConfigError(f"unknown export table {table_name!r}; one of {TABLES}")
        if table.num_rows == 0:
            return
        self._buffers[table_name].append(table)
        self._buffered_rows[table_name] += table.num_rows
        if self._oldest[table_name] is None:
            self._oldest[table_name] = time.monotonic()
        if self._buffered_rows[table_name] >= self.flush_rows:
            self._write_part(table_name)
        else:
            self.flush_due()

    def flush_due(self) -> None:
        """Write every buffer whose oldest row has waited ``flush_interval_s``."""
        now = time.monotonic()
        for name, oldest in self._oldest.items():
            if oldest is not None and now - oldest >= self.flush_interval_s:
                self._write_part(name)

    def flush(self) -> dict[str, int]:
        """Write everything buffered; returns the rows written so far per table.

        Raises:
            OSError: a part file could not be written (a full disk, a lost directory).
        """
        for name in TABLES:
            if self._buffers[name]:
                self._write_part(name)
        if self._parts_waiting is not None:
            self._parts_waiting.join()
        if self.write_errors:
            raise OSError(f"{len(self.write_errors)} Parquet part files could not be "
                          f"written under {self.export_dir}: {self.write_errors[0]}")
        return dict(self.rows_written)

    def buffered_rows(self) -> int:
        return sum(self._buffered_rows.values())

    def _write_part(self, name: str) -> None:
        tables, self._buffers[name] = self._buffers[name], []
        self._buffered_rows[name] = 0
        self._oldest[name] = None
        if not tables:
            return
        if self._parts_waiting is not None:
            self._parts_waiting.put((name, tables))
        else:
            self._write_file(name, tables)

    def _write_loop(self) -> None:
        while True:
            name, tables = self._parts_waiting.get()
            try:
                self._write_file(name, tables)
            except Exception as error:  # noqa: BLE001 - kept, logged, raised by flush()
                rows = sum(t.num_rows for t in tables)
                self.write_errors.append(f"{name}: {rows} rows: {error}")
                log.error("could not write %d rows of %s under %s: %s", rows, name,
                          self.export_dir, error)
            finally:
                self._parts_waiting.task_done()

    def _write_file(self, name: str, tables: list[pa.Table]) -> None:
        table = pa.concat_tables(tables, promote_options="default")
        metadata = dict(table.schema.metadata or {})
        metadata[b"ray_sched.schema_version"] = str(EXPORT_SCHEMA_VERSION).encode()
        metadata[b"ray_sched.table"] = name.encode()
        table = table.replace_schema_metadata(metadata)
        folder = self.export_dir / name
        final = folder / f"{self._prefix}-{next(self._parts):06d}.parquet"
        partial = folder / f".{final.name}.tmp"
        pq.write_table(table, partial, compression="zstd")
        os.replace(partial, final)
        self.rows_written[name] += table.num_rows
        self.files_written += 1
