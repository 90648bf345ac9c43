"""Suites: the shipped CI suite is well-formed and its committed reference is in step with it; bad suites fail in
one line before anything runs; a tiny suite runs end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, assert_usage_error, run_cli

from cachebench.errors import UsageError
from cachebench.registry import method_track
from cachebench.results import read_results
from cachebench.suite import MANIFEST, check_suite, load_suite, parse_suite, suite_names
from cachebench.taskspec import resolve_tasks

REFERENCE = REPO / "results" / "reference" / "ci"
_RUN_FIELDS = ("index", "file", "rows", "errors", "mean_score", "seconds")  # what a run adds to an entry


def test_ci_suite_parses_and_every_entry_names_a_method_and_task_of_one_track(tmp_path):
    suite = load_suite("ci")
    assert "ci" in suite_names() and suite.name == "ci"
    assert {method_track(e.method) for e in suite.entries} == {"kv", "semantic"}
    for entry in suite.entries:
        assert {spec.track for spec in resolve_tasks(entry.task)} == {method_track(entry.method)}, entry
    assert len(check_suite(suite, tmp_path / "out")) == len(suite.entries)


def test_committed_reference_was_made_by_the_ci_suite_as_it_stands():
    manifest = json.loads((REFERENCE / MANIFEST).read_text())
    suite = load_suite("ci")
    ran = [{k: v for k, v in entry.items() if k not in _RUN_FIELDS} for entry in manifest["entries"]]
    assert ran == [entry.as_dict() for entry in suite.entries], "ci.yaml changed: refresh the reference (docs/ci.md)"
    assert manifest["settings"] == {"model": suite.model, "dtype": suite.dtype, "device": suite.device,
                                    "seed": suite.seed}
    assert all(entry["errors"] == 0 for entry in manifest["entries"])
    assert sorted(p.name for p in REFERENCE.glob("*.parquet")) == sorted(manifest["files"])
    assert read_results([REFERENCE]).num_rows == sum(entry["rows"] for entry in manifest["entries"])


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("entries:\n  - {method: full, task: semantic.stream}\n",
     "entry 0 (full on semantic.stream): task semantic.stream is a semantic-cache task"),
    ("entries:\n  - {method: exact, task: multiturn.passkey}\n",
     "entry 0 (exact on multiturn.passkey): method 'exact' is a semantic cache"),
    ("entries:\n  - {method: full, task: multiturn.pasky}\n", "unknown task 'multiturn.pasky'"),
    ("entries:\n  - {method: h2o, task: multiturn, params: {ratio: 2}}\n", "--param ratio=2"),
    ("entries:\n  - {method: h2o, task: multiturn, limt: 2}\n", "entry 0: unknown key 'limt'"),
    ("entries:\n  - {method: full, task: multiturn, llm_cost: 800}\n", "llm_cost applies to semantic-cache entries"),
    ("entries:\n  - {method: full, task: multiturn, mode: sideways}\n", "--mode 'sideways'"),
    ("entries:\n  - {method: exact, task: semantic.stream, data: nowhere.json}\n", "data nowhere.json: no such file"),
    ("entries: [\n", "not valid YAML"),
    ("entries: []\n", "`entries` must be a non-empty list"),
    ("dtype: float8\nentries:\n  - {method: full, task: multiturn}\n", "--dtype 'float8'"),
])
def test_a_bad_suite_file_is_one_line_usage_error(tmp_path, text, message):
    with pytest.raises(UsageError) as caught:
        check_suite(load_suite(file=_write(tmp_path, text)), tmp_path / "out")
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_a_suite_will_not_write_into_a_folder_that_holds_results(tmp_path):
    suite = parse_suite("entries:\n  - {method: full, task: multiturn}\n", "mine.yaml", "mine")
    (tmp_path / "old.parquet").write_bytes(b"")
    with pytest.raises(UsageError, match="already holds results"):
        check_suite(suite, tmp_path)


def test_cli_lists_suites_and_rejects_an_unknown_one_in_one_line(tmp_path):
    listed = run_cli("suite", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("ci: ") and "h2o on multiturn (ratio=0.5)" in listed.stdout
    out = tmp_path / "out"
    assert_usage_error(run_cli("suite", "run", "nope", "--out", str(out)), "unknown suite 'nope'", tmp_path)
    assert not out.exists()


def test_cli_checks_every_entry_of_a_custom_suite_before_running_any(tmp_path):
    path = _write(tmp_path, "entries:\n  - {method: full, task: multiturn, limit: 1}\n"
                            "  - {method: snapkvv, task: multiturn}\n")
    out = tmp_path / "out"
    result = run_cli("suite", "run", "--file", str(path), "--out", str(out))
    assert_usage_error(result, "entry 1 (snapkvv on multiturn): unknown method 'snapkvv'", tmp_path)
    assert not out.exists()


def test_cli_runs_a_tiny_custom_suite_one_file_per_entry_and_a_manifest(tmp_path):
    path = _write(tmp_path, "name: tiny\nentries:\n"
                            "  - {method: full, task: multiturn.passkey, limit: 1, max_new_tokens: 4}\n"
                            "  - {method: exact, task: semantic.stream, limit: 50, llm_cost: 800}\n")
    out = tmp_path / "out"
    result = run_cli("suite", "run", "--file", str(path), "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["00-full.parquet", "01-exact.parquet", MANIFEST]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["suite"] == "tiny" and manifest["files"] == ["00-full.parquet", "01-exact.parquet"]
    assert [(e["method"], e["rows"], e["errors"]) for e in manifest["entries"]] == [("full", 4, 0), ("exact", 50, 0)]
    table = read_results([out])
    assert table.num_rows == 54
    assert sorted(set(table.column("method").to_pylist())) == ["exact", "full"]
    assert max(table.column("output_tokens").to_pylist()[:4]) <= 4  # max_new_tokens reached the run
