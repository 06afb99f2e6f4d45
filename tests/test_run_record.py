"""`run.json` read into a `RunRecord` and written back: the file's layout is kept exactly."""

import json
from pathlib import Path

import pytest

from gpu_watch import load_run, runlog
from gpu_watch.runlog import RunFolderError, RunRecord

DATA = Path(__file__).parent / "data"
FIXTURES = sorted(DATA.rglob(runlog.RUN_JSON))


def test_there_are_run_json_fixtures_to_read():
    assert FIXTURES


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: str(p.parent.relative_to(DATA)))
def test_every_committed_run_json_reads_and_writes_back_as_it_was(path, tmp_path):
    data = json.loads(path.read_text())
    record = RunRecord.from_json(data)
    assert record.to_json() == data and list(record.to_json()) == list(data)
    runlog.write_run_json(tmp_path, record)
    assert (tmp_path / runlog.RUN_JSON).read_text() == json.dumps(data, indent=2) + "\n"


def test_an_older_run_json_reads_with_the_defaults_of_the_keys_it_lacks():
    record = RunRecord.from_json({"schema_version": 1, "run_name": "old",
                                  "status": "completed", "verdict": "ok"})
    assert (record.run_name, record.status, record.verdict) == ("old", "completed", "ok")
    assert record.judged == {} and record.wait is None and record.idle == {"events": []}
    assert record.energy is None and record.write_errors == 0 and record.rank is None
    assert not record.has("judged") and record.has("verdict")
    assert record.to_json() == {"schema_version": 1, "run_name": "old", "status": "completed",
                                "verdict": "ok"}
    record.judged = {"0": {"by": "process"}}  # given a value, the key is written
    assert record.has("judged") and record.to_json()["judged"] == {"0": {"by": "process"}}


def test_a_run_json_without_a_status_reads_as_incomplete(tmp_path):
    runlog.write_run_json(tmp_path, RunRecord.from_json({"schema_version": 1}))
    assert load_run(tmp_path).status == runlog.STATUS_INCOMPLETE


@pytest.mark.parametrize("version", [runlog.SCHEMA_VERSION + 1, "2"])
def test_a_newer_schema_is_refused_with_a_clear_message(version, tmp_path):
    with pytest.raises(RunFolderError, match=rf"schema version {version!r} is newer than this "
                                             rf"gpu-watch reads \(1\); upgrade gpu-watch"):
        RunRecord.from_json({"schema_version": version})
    (tmp_path / runlog.RUN_JSON).write_text(json.dumps({"schema_version": version}))
    with pytest.raises(RunFolderError) as raised:
        load_run(tmp_path)
    assert str(raised.value).startswith(f"{tmp_path / runlog.RUN_JSON}: schema version ")


def test_unknown_keys_survive_a_rewrite(tmp_path):
    data = {"schema_version": 1, "status": "completed", "from_a_newer_writer": {"x": [1, 2]}}
    record = RunRecord.from_json(data)
    assert record.unknown == {"from_a_newer_writer": {"x": [1, 2]}}
    assert record.has("from_a_newer_writer") and not record.has("something_else")
    record.verdict = "idle"
    runlog.write_run_json(tmp_path, record)
    again = runlog.read_record(tmp_path)
    assert again.unknown == record.unknown and again.verdict == "idle"
    assert json.loads((tmp_path / runlog.RUN_JSON).read_text()) == {**data, "verdict": "idle"}


def test_a_new_run_holds_the_keys_of_its_start_and_the_judgement_adds_its_own(tmp_path):
    record = runlog.new_run_record(tmp_path, (0, 1), "jax", {}, [], {"available": False},
                                   None, None, {"interval_s": 0.2})
    keys = list(record.to_json())
    assert keys[0] == "schema_version" and keys[-1] == "config"
    assert {"energy", "sampler", "write_errors", "close_errors", "gpu_trial",
            "rejudged"}.isdisjoint(keys)
    record.energy = {"total_j": 1.0}
    record.write_errors = 0
    assert list(record.to_json())[-2:] == ["energy", "write_errors"]


def test_run_info_is_the_raw_form_of_the_record(tmp_path):
    [path] = [p for p in FIXTURES if p.parent.name == "jax-healthy"]
    run = load_run(path.parent)
    assert run.info == json.loads(path.read_text())
    assert run.info["verdict"] == run.record.verdict == run.verdict
