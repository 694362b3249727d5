"""Specification of ray_sched.monitor.report: one self-contained HTML page comparing runs."""

from __future__ import annotations

import base64
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from ray_sched.errors import ConfigError, ResultsError
from ray_sched.metrics import deadline_met, summarize, write_results
from ray_sched.monitor.energy import EnergyModel
from ray_sched.monitor.report import (
    DEFAULT_TITLE,
    TIMESERIES_FILE,
    build_report,
    busy_cpu_over_time,
    expand_run_dirs,
    learner_error_curve,
    load_run,
    queue_length_series,
    queued_over_time,
    utilization_series,
)

pytestmark = pytest.mark.unit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SLOTS = 4
#: CDF, percentiles, deadlines, tenants, queue, utilization, predictions, learner error,
#: energy: every plot, when some run predicts and some task has a deadline.
ALL_PLOTS = 9
TENANTS = ("acme", "globex")


# ------------------------------------------------------------------------------- helpers


def run_results(policy: str, *, n: int = 60, seed: int = 0, predictions: bool = False,
                deadlines: bool = True) -> pd.DataFrame:
    """A valid results frame: n tasks run first-come first-served on SLOTS slots, two
    tenants, a deadline on every third task (when asked) and the last task failed."""
    rng = np.random.default_rng(seed)
    runtime = rng.lognormal(np.log(0.2), 0.8, n)
    arrival = np.sort(rng.uniform(0.0, 4.0, n))
    free_at = np.zeros(SLOTS)
    start = np.empty(n)
    for i in range(n):  # a tiny FIFO simulation, so that tasks queue
        slot = int(np.argmin(free_at))
        start[i] = max(arrival[i], free_at[slot])
        free_at[slot] = start[i] + runtime[i]
    status = np.where(np.arange(n) == n - 1, "failed", "ok")
    frame = pd.DataFrame({
        "task_id": [f"t{i:03d}" for i in range(n)], "policy": policy, "worker": "local-0",
        "node": "node-a", "arrival_s": arrival, "start_s": start, "finish_s": start + runtime,
        "predicted_runtime_s": runtime * rng.lognormal(0.0, 0.4, n) if predictions
        else np.nan,
        "measured_runtime_s": runtime, "deadline_met": pd.NA, "attempts": 1,
        "status": status, "error": np.where(status == "failed", "boom", ""),
        "runtime_s": runtime, "tenant": [TENANTS[i % 2] for i in range(n)],
        "deadline_s": np.where((np.arange(n) % 3 == 0) & deadlines, 0.5, np.nan),
    })
    frame["deadline_met"] = deadline_met(frame["arrival_s"], frame["finish_s"],
                                         frame["deadline_s"], ok=frame["status"] == "ok")
    return frame


def write_run(directory: Path, policy: str, **options) -> pd.DataFrame:
    """Write a run folder (tasks.parquet + summary.json) and return its frame."""
    frame = run_results(policy, **options)
    summary = summarize(frame, policy=policy, slots=SLOTS)
    summary["trace"] = "examples/tiny.csv"
    write_results(directory, frame, summary)
    return frame


class Page(HTMLParser):
    """What a test needs to read off a report: images, links, captions, table rows."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text
        self.images: list[str] = []
        self.references: list[str] = []
        self.scripts = 0
        self.captions: list[str] = []
        self.tables: dict[str, list[list[tuple[str, dict]]]] = {}
        self._caption: list[str] | None = None
        self._table: str | None = None
        self._cell: tuple[list[str], dict] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name in ("src", "href"):
            if name in attributes:
                self.references.append(attributes[name])
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        elif tag == "script":
            self.scripts += 1
        elif tag == "figcaption":
            self._caption = []
        elif tag == "table":
            self._table = attributes.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ([], attributes)

    def handle_endtag(self, tag):
        if tag == "figcaption" and self._caption is not None:
            self.captions.append("".join(self._caption))
            self._caption = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(("".join(self._cell[0]).strip(),
                                                 self._cell[1]))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._caption is not None:
            self._caption.append(data)
        if self._cell is not None:
            self._cell[0].append(data)

    def row(self, table: str, label: str) -> dict[str, tuple[str, dict]]:
        """A table's row whose first cell is ``label``, keyed by column header."""
        header, *rows = self.tables[table]
        for row in rows:
            if row[0][0] == label:
                return {h[0]: cell for h, cell in zip(header, row)}
        raise AssertionError(f"no row {label!r} in {table}: {[r[0][0] for r in rows]}")

    def caption(self, start: str) -> str:
        matches = [c for c in self.captions if c.startswith(start)]
        assert matches, f"no caption starting {start!r}"
        return matches[0]


def read_page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def jct(frame: pd.DataFrame) -> np.ndarray:
    ok = frame["status"] == "ok"
    return (frame["finish_s"] - frame["arrival_s"])[ok].to_numpy()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> dict[str, tuple[Path, pd.DataFrame]]:
    """fifo (no predictions) and ml (with), on the same seed so the tasks match."""
    root = tmp_path_factory.mktemp("runs")
    return {policy: (root / policy, write_run(root / policy, policy, predictions=predicts))
            for policy, predicts in (("fifo", False), ("ml", True))}


@pytest.fixture(scope="module")
def report(two_runs, tmp_path_factory) -> tuple[Path, Page]:
    out = tmp_path_factory.mktemp("report") / "nested" / "report.html"
    written = build_report([two_runs["fifo"][0], two_runs["ml"][0]], out)
    return written, read_page(written)


# ---------------------------------------------------------------------------- the page


def test_report_is_written_where_asked_creating_parent_folders(report):
    path, _ = report
    assert path.name == "report.html" and path.parent.name == "nested"
    assert path.is_file()


def test_page_references_nothing_outside_itself(report):
    _, page = report
    assert page.references, "the page should embed its images"
    for reference in page.references:
        assert reference.startswith("data:"), reference
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?:""", page.text, re.I)
    assert "<script" not in page.text.lower()
    assert "@import" not in page.text and "url(" not in page.text


def test_every_plot_is_an_embedded_png(report):
    _, page = report
    assert len(page.images) == ALL_PLOTS
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        data = base64.b64decode(source.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000


def test_every_plot_has_a_caption(report):
    _, page = report
    assert len(page.captions) == ALL_PLOTS
    assert all(len(c) > 40 for c in page.captions)


def test_header_shows_default_title_trace_and_run_dirs(report, two_runs):
    _, page = report
    assert f"<title>{DEFAULT_TITLE}</title>" in page.text
    assert "examples/tiny.csv" in page.text
    for directory, _ in two_runs.values():
        assert str(directory) in page.text


def test_summary_table_shows_each_policy_with_its_p99(report, two_runs):
    _, page = report
    for policy, (_, frame) in two_runs.items():
        p99 = float(np.percentile(jct(frame), 99))
        text, attributes = page.row("summary-table", policy)["JCT p99 (s)"]
        assert text == f"{p99:.3f}"
        assert float(attributes["title"]) == pytest.approx(p99, rel=1e-12)
        assert page.row("summary-table", policy)["failed"][0] == "1"


def test_summary_table_compares_mean_and_p99_jct_with_the_first_run(report, two_runs):
    _, page = report
    fifo, ml = jct(two_runs["fifo"][1]), jct(two_runs["ml"][1])
    row = page.row("summary-table", "ml")
    assert float(row["JCT mean vs fifo"][1]["title"]) == pytest.approx(ml.mean() / fifo.mean())
    assert row["JCT p99 vs fifo"][0] == \
        f"{np.percentile(ml, 99) / np.percentile(fifo, 99):.2f}x"
    assert page.row("summary-table", "fifo")["JCT mean vs fifo"][0] == "1.00x"


def test_summary_table_shows_a_dash_for_what_a_run_does_not_record(report):
    _, page = report
    assert page.row("summary-table", "fifo")["prediction MAE (s)"][0] == "-"
    assert page.row("summary-table", "ml")["prediction MAE (s)"][0] != "-"


def test_energy_column_is_the_energy_models_joules_per_task(report, two_runs):
    _, page = report
    expected = EnergyModel().estimate(two_runs["ml"][1])["energy_j_per_task"]
    text, attributes = page.row("summary-table", "ml")["energy (J/task)"]
    assert float(attributes["title"]) == pytest.approx(expected)


def test_runs_without_predictions_are_named_in_the_prediction_captions(report):
    _, page = report
    assert "No predictions in fifo." in page.caption("Each point is one ok task")
    assert "No predictions in fifo." in page.caption("Each solid line is the rolling mean")


def test_energy_caption_states_the_models_wattages(two_runs, tmp_path):
    model = EnergyModel(busy_core_w=5.5, idle_node_w=42.0)
    page = read_page(build_report([two_runs["ml"][0]], tmp_path / "r.html", energy=model))
    caption = page.caption("Each bar is a run's estimated energy")
    assert "5.5 W" in caption and "42 W" in caption
    expected = model.estimate(two_runs["ml"][1])["energy_j_per_task"]
    assert float(page.row("summary-table", "ml")["energy (J/task)"][1]["title"]) == \
        pytest.approx(expected)


def test_title_can_be_set(two_runs, tmp_path):
    page = read_page(build_report([two_runs["ml"][0]], tmp_path / "r.html",
                                  title="fifo <vs> ml"))
    assert "<title>fifo &lt;vs&gt; ml</title>" in page.text


def test_without_any_deadline_the_deadline_plot_is_a_note(tmp_path):
    write_run(tmp_path / "a", "fifo", deadlines=False, predictions=True)
    page = read_page(build_report([tmp_path / "a"], tmp_path / "r.html"))
    assert len(page.images) == ALL_PLOTS - 1
    assert "No task in any run has a deadline" in page.text


def test_a_run_without_deadlines_beside_one_with_is_named(tmp_path):
    write_run(tmp_path / "a", "fifo", deadlines=False)
    write_run(tmp_path / "b", "ml", predictions=True)
    page = read_page(build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "r.html"))
    assert "No deadlines in fifo." in page.caption("Each bar is the share")


def test_without_any_prediction_the_learner_plots_are_notes(tmp_path):
    write_run(tmp_path / "a", "fifo")
    page = read_page(build_report([tmp_path / "a"], tmp_path / "r.html"))
    assert len(page.images) == ALL_PLOTS - 2
    assert page.text.count("No run in this report predicts runtimes.") == 2


def test_rewriting_a_report_replaces_it_and_leaves_no_partial_file(two_runs, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("old")
    build_report([two_runs["fifo"][0]], out)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_building_a_report_leaves_matplotlib_global_state_alone(two_runs, tmp_path):
    backend, params = matplotlib.get_backend(), dict(matplotlib.rcParams)
    build_report([two_runs["fifo"][0]], tmp_path / "r.html")
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == params


# -------------------------------------------------------------------------------- inputs


def test_runs_of_one_policy_are_told_apart_by_their_directory(tmp_path):
    write_run(tmp_path / "monday", "ml", predictions=True)
    write_run(tmp_path / "tuesday", "ml", predictions=True, seed=1)
    page = read_page(build_report([tmp_path / "monday", tmp_path / "tuesday"],
                                  tmp_path / "r.html"))
    assert [row[0][0] for row in page.tables["summary-table"][1:]] == \
        ["ml (monday)", "ml (tuesday)"]


def test_a_compare_folder_stands_for_its_policies_in_the_order_compare_ran_them(tmp_path):
    for policy in ("dask", "ml", "ray-default"):
        write_run(tmp_path / "cmp" / policy, policy)
    (tmp_path / "cmp" / "models").mkdir()  # a folder without results is not a run
    pd.DataFrame({"policy": ["ray-default", "ml", "dask"]}).to_csv(
        tmp_path / "cmp" / "summary.csv", index=False)
    assert [p.name for p in expand_run_dirs([tmp_path / "cmp"])] == \
        ["ray-default", "ml", "dask"]
    page = read_page(build_report([tmp_path / "cmp"], tmp_path / "r.html"))
    assert [row[0][0] for row in page.tables["summary-table"][1:]] == \
        ["ray-default", "ml", "dask"]


def test_a_compare_folder_without_an_index_lists_its_policies_by_name(tmp_path):
    for policy in ("ml", "fifo"):
        write_run(tmp_path / "cmp" / policy, policy)
    assert [p.name for p in expand_run_dirs(tmp_path / "cmp")] == ["fifo", "ml"]


def test_zero_run_dirs_is_a_config_error():
    with pytest.raises(ConfigError, match="no run directories"):
        build_report([], "/tmp/rep_never.html")


def test_a_missing_dir_is_named(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ResultsError, match=re.escape(str(missing))) as error:
        build_report([missing], tmp_path / "r.html")
    assert "no such directory" in str(error.value)
    assert not (tmp_path / "r.html").exists()


def test_a_dir_without_results_is_named(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ResultsError, match=re.escape(str(tmp_path / "empty"))) as error:
        build_report([tmp_path / "empty"], tmp_path / "r.html")
    assert "holds no results" in str(error.value)


def test_a_corrupt_tasks_file_is_named(tmp_path):
    write_run(tmp_path / "a", "fifo")
    (tmp_path / "a" / "tasks.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ResultsError, match=re.escape(str(tmp_path / "a" / "tasks.parquet"))):
        build_report([tmp_path / "a"], tmp_path / "r.html")


# ---------------------------------------------------------------------- curves over time


def test_queued_over_time_counts_tasks_between_ready_and_start():
    # a waits [0, 2); b starts on arrival; c arrives at 1 but is ready at 3: waits [3, 4);
    # d never started and failed at 5: waits [4, 5).
    frame = pd.DataFrame({
        "arrival_s": [0.0, 1.0, 1.0, 4.0],
        "ready_s": [0.0, 1.0, 3.0, np.nan],
        "start_s": [2.0, 1.0, 4.0, np.nan],
        "finish_s": [3.0, 2.0, 6.0, 5.0],
    })
    times = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 3.5, 4.0, 4.5, 5.0])
    assert queued_over_time(frame, times).tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 1, 0]


def test_queued_over_time_without_ready_s_counts_from_arrival():
    frame = pd.DataFrame({"arrival_s": [0.0, 0.0], "start_s": [1.0, 3.0],
                          "finish_s": [2.0, 4.0]})
    assert queued_over_time(frame, np.array([0.5, 2.0, 3.0])).tolist() == [2, 1, 0]


def test_queued_over_time_averaged_over_a_window_keeps_the_area():
    # One task waits [0, 2): a 1 s window centred on 2.0 sees it half the time.
    frame = pd.DataFrame({"arrival_s": [0.0], "start_s": [2.0], "finish_s": [3.0]})
    averaged = queued_over_time(frame, np.array([1.0, 2.0, 3.0]), window_s=1.0)
    assert averaged == pytest.approx([1.0, 0.5, 0.0])


def test_busy_cpu_over_time_weights_running_tasks_by_cpu():
    frame = pd.DataFrame({"start_s": [0.0, 1.0, np.nan], "finish_s": [2.0, 3.0, np.nan],
                          "cpu": [1.0, 2.0, 4.0]})
    times = np.array([0.5, 1.5, 2.5, 3.0])
    assert busy_cpu_over_time(frame, times).tolist() == [1.0, 3.0, 2.0, 0.0]


def test_busy_cpu_defaults_cpu_to_one():
    frame = pd.DataFrame({"start_s": [0.0, 0.0], "finish_s": [1.0, 2.0]})
    assert busy_cpu_over_time(frame, np.array([0.5, 1.5])).tolist() == [2.0, 1.0]


def test_queue_length_is_derived_from_tasks_without_timeseries(two_runs):
    run = load_run(two_runs["fifo"][0])
    series = queue_length_series(run)
    assert series.source == "tasks.parquet" and len(series.times_s) == 400
    assert series.values.max() > 0  # 60 tasks in 4 s on 4 slots do queue


def write_timeseries(directory: Path, **columns) -> None:
    times = [0.0, 1.0, 2.0]
    frame = pd.DataFrame({
        "t_s": times * 2, "scope": ["cluster"] * 3 + ["local-0"] * 3,
        "region": [""] * 6, **{k: list(v) + [999.0] * 3 for k, v in columns.items()},
    })
    frame.to_parquet(directory / TIMESERIES_FILE)


def test_queue_length_uses_the_monitors_cluster_samples(tmp_path):
    write_run(tmp_path / "a", "ml", predictions=True)
    write_timeseries(tmp_path / "a", queued=[3, 4242, 7])
    series = queue_length_series(load_run(tmp_path / "a"))
    assert series.source == TIMESERIES_FILE
    assert series.values.tolist() == [3, 4242, 7]  # not the local scheduler's rows
    page = read_page(build_report([tmp_path / "a"], tmp_path / "r.html"))
    assert f"sampled by the monitor ({TIMESERIES_FILE}) for ml" in \
        page.caption("Each line counts the tasks")


def test_utilization_from_busy_cpu_and_slots_when_the_monitor_has_no_utilization(tmp_path):
    write_run(tmp_path / "a", "ml")
    write_timeseries(tmp_path / "a", busy_cpu=[1.0, 2.0, 4.0], slots=[4.0, 4.0, 4.0])
    series = utilization_series(load_run(tmp_path / "a"))
    assert series.source == TIMESERIES_FILE
    assert series.values.tolist() == [0.25, 0.5, 1.0]


def test_utilization_is_derived_over_the_summarys_slots(two_runs):
    run = load_run(two_runs["fifo"][0])
    series = utilization_series(run)
    assert series.source == "tasks.parquet"
    assert 0 < series.values.max() <= 1.0 + 1e-9


def test_monitor_learner_error_samples_are_drawn_beside_the_tasks(tmp_path):
    write_run(tmp_path / "a", "ml", predictions=True)
    write_timeseries(tmp_path / "a", learner_mae_log=[np.nan, 0.8, 0.5])
    page = read_page(build_report([tmp_path / "a"], tmp_path / "r.html"))
    assert "learner_mae_log samples for ml" in page.caption("Each solid line")


def test_a_timeseries_without_times_is_ignored(tmp_path):
    write_run(tmp_path / "a", "ml")
    pd.DataFrame({"queued": [1, 2]}).to_parquet(tmp_path / "a" / TIMESERIES_FILE)
    assert queue_length_series(load_run(tmp_path / "a")).source == "tasks.parquet"


def test_learner_error_is_the_rolling_log_error_in_finish_order():
    frame = pd.DataFrame({
        "status": ["ok", "ok", "ok", "failed", "ok"],
        "finish_s": [3.0, 1.0, 2.0, 4.0, 5.0],
        "predicted_runtime_s": [1.0, 2.0, 4.0, 1.0, np.nan],
        "measured_runtime_s": [1.0, 1.0, 1.0, 9.0, 1.0],
    })
    finish, error = learner_error_curve(frame)
    assert finish.tolist() == [1.0, 2.0, 3.0]
    ln2 = math.log(2)
    assert error == pytest.approx([ln2, (ln2 + 2 * ln2) / 2, (ln2 + 2 * ln2 + 0) / 3])


def test_learner_error_is_empty_without_predictions(two_runs):
    finish, error = learner_error_curve(two_runs["fifo"][1])
    assert len(finish) == len(error) == 0


# --------------------------------------------------------------------------------- alerts


def test_alerts_appear_in_a_table(tmp_path):
    write_run(tmp_path / "a", "ml", predictions=True)
    alerts = [
        {"time_s": 12.5, "wall": 1.7e9, "rule": "queue-high", "metric": "queued",
         "value": 57.0, "threshold": 50.0, "op": "above", "scope": "cluster",
         "message": "queue above 50 for 10 s"},
        {"time_s": 3.25, "wall": 1.7e9, "rule": "util-low", "metric": "utilization",
         "value": 0.1, "threshold": 0.3, "op": "below", "scope": "local-0",
         "message": "slots idle <while> tasks wait"},
    ]
    lines = [json.dumps(a) for a in alerts] + ['{"time_s": 14, "rule": "trunc']
    (tmp_path / "a" / "alerts.jsonl").write_text("\n".join(lines) + "\n")
    page = read_page(build_report([tmp_path / "a"], tmp_path / "r.html"))
    header, *rows = page.tables["alerts-table"]
    assert [c[0] for c in header] == ["run", "time (s)", "rule", "metric", "value",
                                      "threshold", "scope", "message"]
    cells = [[c[0] for c in row] for row in rows]
    assert cells == [
        ["ml", "3.250", "util-low", "utilization", "0.100", "below 0.300", "local-0",
         "slots idle <while> tasks wait"],
        ["ml", "12.500", "queue-high", "queued", "57.000", "above 50.000", "cluster",
         "queue above 50 for 10 s"],
    ]
    assert "1 unreadable line(s)" in page.text


def test_without_alerts_the_page_says_none_were_recorded(report):
    _, page = report
    assert "No alerts were recorded" in page.text
    assert "alerts-table" not in page.tables


def test_per_kind_breakdown_matches_an_independent_computation(report, two_runs):
    from ray_sched.monitor.report import kind_breakdown
    _, frame = two_runs["fifo"]
    assert list(kind_breakdown(frame).index) == ["default"]   # no kind column
    frame = frame.assign(kind=[("etl", "logs", "metrics")[i % 3] for i in range(len(frame))])
    table = kind_breakdown(frame)
    ok = frame[frame["status"] == "ok"]
    assert list(table.index) == ["etl", "logs", "metrics"]
    for kind, group in ok.groupby("kind"):
        jcts = (group["finish_s"] - group["arrival_s"]).to_numpy()
        assert table.loc[kind, "n_ok"] == len(group)
        assert table.loc[kind, "jct_mean_s"] == pytest.approx(jcts.mean())
        assert table.loc[kind, "jct_p95_s"] == pytest.approx(np.percentile(jcts, 95))
        assert table.loc[kind, "slowdown_mean"] == pytest.approx(
            (jcts / group["runtime_s"].to_numpy()).mean())
    _, page = report
    assert 'id="kind-table"' in page.text and ">default<" in page.text
