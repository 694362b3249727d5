"""Specification of the real-trace converters (SWF and WfInstances).

Expected numbers come from shared/data/traces/SOURCES.md.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from ray_sched.errors import ConfigError, ConvertError
from ray_sched.trace import split_parents, validate_frame
from ray_sched.workloads import convert_swf, convert_wfinstances, offered_load

pytestmark = pytest.mark.unit

TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
NASA = TRACES / "pwa" / "NASA-iPSC-1993-3.1-cln.swf.gz"
WF = TRACES / "wfinstances"
# file -> (tasks, tasks with several parents), from SOURCES.md
WF_FILES = {
    "1000genome-chameleon-22ch-250k-001.json": (902, 330),
    "montage-chameleon-dss-10d-001.json": (472, 418),
    "epigenomics-chameleon-hep-6seq-100k-001.json": (507, 7),
    "seismology-chameleon-500p-001.json": (501, 1),
    "blast-chameleon-medium-001.json": (303, 2),
}


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real trace {path} is absent (shared/data/traces not checked out)")
    return path


@pytest.fixture(scope="module")
def nasa() -> Path:
    return _require(NASA)


@pytest.fixture(scope="module")
def nasa_full(nasa):
    return convert_swf(nasa)


def _swf_line(job, submit, run, *, alloc=1, req_procs=-1, req_time=-1, user=1, group=1,
              app=1, queue=-1, partition=-1) -> str:
    fields = [job, submit, -1, run, alloc, -1, -1, req_procs, req_time, -1, 1, user, group,
              app, queue, partition, -1, -1]
    return " ".join(str(f) for f in fields)


def _write_swf(path: Path, lines: list[str]) -> Path:
    path.write_text("; Version: 2.2\n; Computer: test\n" + "\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- SWF: NASA


def test_nasa_drops_nonpositive_runtimes_explicitly_and_counts_them(nasa_full):
    frame, report = nasa_full
    assert report.n_read == 18_239
    assert report.n_dropped_nonpositive_runtime == 173
    assert report.n_kept == len(frame) == 18_066
    assert (frame["runtime_s"] > 0).all()
    assert "173" in report.summary() and "18,066" in report.summary()


def test_nasa_maps_fields_onto_the_contract(nasa_full):
    frame, _ = nasa_full
    assert frame["arrival_s"].iloc[0] == 0.0
    assert frame["arrival_s"].is_monotonic_increasing
    assert frame["task_id"].is_unique
    assert frame["tenant"].str.fullmatch(r"u\d+").all()
    assert frame["tenant"].nunique() == 69
    assert set(frame["group"]) == {"g1", "g2"}
    assert frame["kind"].str.fullmatch(r"app\d+|default").all()
    procs = frame["procs"].to_numpy()
    assert procs.min() >= 1 and procs.max() <= 128
    assert np.all(np.log2(procs) == np.round(np.log2(procs)))
    # NASA records neither partitions nor requested times: no column for them.
    assert "region" not in frame.columns and "req_time_s" not in frame.columns


def test_nasa_cpu_is_capped_at_slots_by_default(nasa):
    frame, report = convert_swf(nasa, slots=8)
    assert frame["cpu"].max() == 8
    assert report.n_cpu_capped == int((frame["procs"] > 8).sum()) > 0
    explicit, _ = convert_swf(nasa, slots=8, max_cpu=32)
    assert explicit["cpu"].max() == 32


def test_nasa_window_counts_usable_jobs(nasa, nasa_full):
    full, _ = nasa_full
    frame, report = convert_swf(nasa, start_job=100, max_jobs=50)
    assert len(frame) == 50
    assert list(frame["task_id"]) == list(full["task_id"].iloc[100:150])
    assert frame["arrival_s"].iloc[0] == 0.0
    assert report.n_outside_window == 18_066 - 50
    assert report.n_read == (report.n_dropped_nonpositive_runtime + report.n_outside_window
                             + report.n_kept_base)


def test_nasa_window_past_the_last_job_is_a_config_error(nasa):
    with pytest.raises(ConfigError, match="18066 usable jobs"):
        convert_swf(nasa, start_job=18_066)


@pytest.mark.parametrize("load", [0.5, 0.85, 1.3])
def test_nasa_rescaling_reaches_the_asked_load_and_keeps_runtimes(nasa, load):
    plain, _ = convert_swf(nasa, start_job=2_000, max_jobs=500, slots=8)
    frame, report = convert_swf(nasa, start_job=2_000, max_jobs=500, slots=8, load=load)
    assert offered_load(frame, 8) == pytest.approx(load, rel=0.01)
    assert report.offered_load == pytest.approx(load, rel=0.01)
    np.testing.assert_array_equal(frame["runtime_s"], plain["runtime_s"])
    np.testing.assert_allclose(frame["arrival_s"], plain["arrival_s"] * report.arrival_factor)


def test_time_scale_multiplies_arrivals_and_runtimes_and_keeps_the_load(nasa):
    plain, _ = convert_swf(nasa, max_jobs=300, slots=8, load=0.85)
    scaled, report = convert_swf(nasa, max_jobs=300, slots=8, load=0.85, time_scale=1e-3)
    np.testing.assert_allclose(scaled["runtime_s"], plain["runtime_s"] * 1e-3)
    np.testing.assert_allclose(scaled["arrival_s"], plain["arrival_s"] * 1e-3)
    assert report.time_scale == 1e-3
    assert offered_load(scaled, 8) == pytest.approx(0.85, rel=0.01)


def test_load_without_slots_is_a_config_error(nasa):
    with pytest.raises(ConfigError, match="needs slots"):
        convert_swf(nasa, load=0.8)


@pytest.mark.parametrize("bad", [{"max_jobs": 0}, {"start_job": -1}, {"time_scale": 0.0},
                                 {"slots": 0}, {"slots": 4, "load": -1.0}])
def test_parameters_out_of_range_are_config_errors_quoting_the_value(nasa, bad):
    with pytest.raises(ConfigError, match="got"):
        convert_swf(nasa, **bad)


# ----------------------------------------------------------------------------- SWF: small files


def test_swf_optional_fields_map_to_region_features_and_fallbacks(tmp_path):
    path = _write_swf(tmp_path / "small.swf", [
        _swf_line(1, 100, 10, alloc=4, req_time=60, partition=2, app=-1),
        _swf_line(2, 130, -1),                       # unknown runtime: dropped
        _swf_line(3, 160, 0),                        # zero runtime: dropped
        _swf_line(4, 190, 5, alloc=-1, req_procs=2, partition=1, queue=0),
        _swf_line(5, 220, 7, alloc=-1, req_procs=-1, user=9),
    ])
    frame, report = convert_swf(path)
    assert report.n_dropped_nonpositive_runtime == 2
    assert list(frame["task_id"]) == ["1", "4", "5"]
    assert list(frame["arrival_s"]) == [0.0, 90.0, 120.0]
    assert list(frame["cpu"]) == [4.0, 2.0, 1.0]       # alloc, else requested, else 1
    assert list(frame["region"].fillna("-")) == ["p2", "p1", "-"]
    assert frame["kind"].iloc[0] == "default"          # unknown app
    assert frame["req_time_s"].iloc[0] == 60 and np.isnan(frame["req_time_s"].iloc[1])
    assert frame["tenant"].iloc[2] == "u9"


def test_swf_gzip_is_chosen_by_suffix(tmp_path):
    text = _swf_line(1, 0, 10) + "\n" + _swf_line(2, 5, 3) + "\n"
    path = tmp_path / "log.swf.gz"
    path.write_bytes(gzip.compress(text.encode()))
    frame, _ = convert_swf(path)
    assert list(frame["runtime_s"]) == [10.0, 3.0]


def test_truncated_swf_line_names_file_and_line(tmp_path):
    path = _write_swf(tmp_path / "cut.swf", [_swf_line(1, 0, 10),
                                             " ".join(_swf_line(2, 5, 3).split()[:12])])
    with pytest.raises(ConvertError, match=r"cut\.swf, line 4: truncated SWF line: 12 fields"):
        convert_swf(path)


def test_too_long_swf_line_names_file_and_line(tmp_path):
    path = _write_swf(tmp_path / "long.swf", [_swf_line(1, 0, 10), _swf_line(2, 5, 3) + " 7"])
    with pytest.raises(ConvertError, match=r"long\.swf, line 4: too long SWF line: 19 fields"):
        convert_swf(path)


def test_non_numeric_swf_field_names_file_line_and_field(tmp_path):
    path = _write_swf(tmp_path / "text.swf", [_swf_line(1, 0, 10),
                                              _swf_line(2, 5, 3).replace(" 3 ", " three ", 1)])
    with pytest.raises(ConvertError, match=r"text\.swf, line 4: field 'run_s' is not a number "
                                           r"\(got 'three'\)"):
        convert_swf(path)


def test_swf_without_data_lines_is_a_convert_error(tmp_path):
    with pytest.raises(ConvertError, match=r"empty\.swf: no SWF data lines"):
        convert_swf(_write_swf(tmp_path / "empty.swf", []))


def test_missing_swf_file_is_a_convert_error(tmp_path):
    with pytest.raises(ConvertError, match="no such file"):
        convert_swf(tmp_path / "absent.swf")


# --- WfInstances: real files


def _spec_edges(path: Path) -> set[tuple[str, str]]:
    document = json.loads(path.read_text())
    return {(parent, task["id"]) for task in document["workflow"]["specification"]["tasks"]
            for parent in task["parents"]}


def _frame_edges(frame) -> set[tuple[str, str]]:
    return {(parent, child) for child, value in zip(frame["task_id"], frame["parent_id"])
            for parent in split_parents(value)}


@pytest.mark.parametrize("name", sorted(WF_FILES))
def test_wfinstances_keeps_every_task_and_every_dag_edge(name):
    path = _require(WF / name)
    n_tasks, n_multi_parent = WF_FILES[name]
    frame, report = convert_wfinstances(path)
    assert len(frame) == report.n_kept == n_tasks
    assert report.n_dropped_nonpositive_runtime == 0
    validate_frame(frame)                      # every parent names a task, no cycle
    assert int(frame["parent_id"].str.contains(";", na=False).sum()) == n_multi_parent
    assert _frame_edges(frame) == _spec_edges(path)
    assert report.n_parent_links == len(_spec_edges(path))
    assert (frame["arrival_s"] == 0).all()
    assert frame["tenant"].nunique() == 1


def test_wfinstances_kinds_are_the_programs():
    frame, _ = convert_wfinstances(_require(WF / "1000genome-chameleon-22ch-250k-001.json"))
    assert frame["kind"].value_counts().to_dict() == {
        "individuals": 550, "mutation_overlap": 154, "frequency": 154,
        "individuals_merge": 22, "sifting": 22}
    assert frame["tenant"].iloc[0] == "1000genome-20200403T154216Z-0"


def test_wfinstances_makeflow_fields_become_cpu_and_features():
    frame, _ = convert_wfinstances(_require(WF / "blast-chameleon-medium-001.json"))
    assert (frame["cpu"] == 1).all()
    for column in ("avg_cpu_pct", "memory_bytes", "read_bytes", "written_bytes", "machine"):
        assert column in frame.columns
    assert frame["machine"].str.len().gt(0).all()


def test_wfinstances_max_tasks_keeps_a_parent_closed_prefix():
    # Epigenomics lists children before their parents, so file order would break links.
    path = _require(WF / "epigenomics-chameleon-hep-6seq-100k-001.json")
    frame, report = convert_wfinstances(path, max_tasks=60)
    assert len(frame) == 60 and report.n_outside_window == 507 - 60
    validate_frame(frame)
    position = {task_id: i for i, task_id in enumerate(frame["task_id"])}
    assert all(position[p] < position[c] for p, c in _frame_edges(frame))


def test_wfinstances_repeat_lays_copies_out_to_reach_the_load():
    path = _require(WF / "seismology-chameleon-500p-001.json")
    frame, report = convert_wfinstances(path, repeat=4, slots=8, load=0.8)
    assert len(frame) == 4 * 501
    assert offered_load(frame, 8) == pytest.approx(0.8, rel=0.01)
    assert sorted(frame["copy"].unique()) == [0, 1, 2, 3]
    assert frame["task_id"].str.endswith("#3").sum() == 501
    assert frame["tenant"].nunique() == 1
    copy_starts = frame.groupby("copy")["arrival_s"].agg(["min", "max"])
    assert (copy_starts["min"] == copy_starts["max"]).all()     # a copy arrives whole
    assert report.arrival_factor > 0
    validate_frame(frame)


def test_wfinstances_load_on_one_copy_is_a_config_error_that_suggests_repeat():
    path = _require(WF / "seismology-chameleon-500p-001.json")
    with pytest.raises(ConfigError, match="repeat >= 2"):
        convert_wfinstances(path, slots=8, load=0.8)


def test_wfinstances_tenant_argument_overrides_the_workflow_name():
    frame, _ = convert_wfinstances(_require(WF / "seismology-chameleon-500p-001.json"),
                                   tenant="lab-a")
    assert set(frame["tenant"]) == {"lab-a"}


# --- WfInstances: small files


def _workflow(tasks: list[dict], runtimes: dict[str, float], name: str = "tiny") -> dict:
    return {
        "name": name, "schemaVersion": "1.5",
        "workflow": {
            "specification": {"tasks": [{"id": t["id"], "parents": t.get("parents", [])}
                                        for t in tasks]},
            "execution": {"tasks": [{"id": task_id, "runtimeInSeconds": runtime,
                                     "command": {"program": task_id.rstrip("0123456789")}}
                                    for task_id, runtime in runtimes.items()]},
        },
    }


def _write_json(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_wfinstances_drops_nonpositive_runtimes_and_the_links_to_them(tmp_path):
    document = _workflow(
        [{"id": "a1"}, {"id": "b1", "parents": ["a1"]}, {"id": "c1", "parents": ["a1", "b1"]},
         {"id": "d1", "parents": ["c1"]}],
        {"a1": 1.0, "b1": 0.0, "c1": 2.0})            # b1 zero, d1 has no execution record
    frame, report = convert_wfinstances(_write_json(tmp_path / "w.json", document))
    assert list(frame["task_id"]) == ["a1", "c1"]
    assert report.n_dropped_nonpositive_runtime == 2
    assert report.n_parent_links_dropped == 1         # c1 -> b1; dropped tasks take theirs along
    assert list(frame["parent_id"].fillna("")) == ["", "a1"]
    assert "removed" in report.summary()


def test_wfinstances_missing_execution_section_names_file_and_section(tmp_path):
    document = _workflow([{"id": "a1"}], {"a1": 1.0})
    del document["workflow"]["execution"]
    with pytest.raises(ConvertError, match=r"noexec\.json: missing workflow\.execution"):
        convert_wfinstances(_write_json(tmp_path / "noexec.json", document))


def test_wfinstances_older_layout_error_quotes_the_schema_version(tmp_path):
    document = {"name": "old", "schemaVersion": "1.3", "jobs": []}
    with pytest.raises(ConvertError, match=r"old\.json: missing workflow .*'1\.3'"):
        convert_wfinstances(_write_json(tmp_path / "old.json", document))


def test_wfinstances_invalid_json_names_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"workflow": {')
    with pytest.raises(ConvertError, match=r"broken\.json: not valid JSON \(line 1"):
        convert_wfinstances(path)


def test_wfinstances_parent_naming_no_task_is_a_convert_error(tmp_path):
    document = _workflow([{"id": "a1", "parents": ["ghost"]}], {"a1": 1.0})
    with pytest.raises(ConvertError, match=r"dangling\.json: task 'a1' names parent 'ghost'"):
        convert_wfinstances(_write_json(tmp_path / "dangling.json", document))


def test_wfinstances_cycle_is_a_convert_error(tmp_path):
    document = _workflow([{"id": "a1", "parents": ["b1"]}, {"id": "b1", "parents": ["a1"]}],
                         {"a1": 1.0, "b1": 1.0})
    with pytest.raises(ConvertError, match=r"cycle\.json: .*cycle"):
        convert_wfinstances(_write_json(tmp_path / "cycle.json", document))


def test_wfinstances_task_without_id_is_a_convert_error(tmp_path):
    document = _workflow([{"id": "a1"}], {"a1": 1.0})
    document["workflow"]["execution"]["tasks"].append({"runtimeInSeconds": 3})
    with pytest.raises(ConvertError, match=r"noid\.json: workflow\.execution\.tasks\[1\] has no"):
        convert_wfinstances(_write_json(tmp_path / "noid.json", document))
