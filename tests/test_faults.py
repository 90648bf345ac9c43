"""Faults injected for real, against the real CLI: a Redis server killed by its PID mid-run, a KV disk tier and an
output folder on tiny (or read-only) tmpfs mounts, a disk that fills while a run goes on, SIGKILL and SIGTERM,
and damaged block files. The promise under test: no computed row is ever lost, and a file that is not a whole run
says so.

The tmpfs cases mount a filesystem, which needs root (or CAP_SYS_ADMIN), as on the project's CI machines; where
mounting is refused these tests fail with that reason instead of passing without the fault.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import CLI, REPO, declared, declares, methods_where

from cachebench.results import read_results
from cachebench.semantic.servers import free_port, redis_reachable

KV_RUN = ("eval", "--method", "streamingllm", "--task", "multiturn", "--limit", "3", "-q")


# ----------------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `path` for the block (the kernel, not the test, refuses writes)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.fail(f"mounting a {size} tmpfs for this fault test needs root or CAP_SYS_ADMIN: "
                    f"{mounted.stderr.strip()}", pytrace=False)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path) -> int:
    """Write a file in `folder` until the filesystem is full; returns the bytes it took."""
    written = 0
    chunk = b"\0" * 65536
    with (folder / "filler").open("wb", buffering=0) as handle:
        while True:
            try:
                written += handle.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    for size in (4096, 512, 1):  # the last partial blocks too
        with contextlib.suppress(OSError), (folder / f"filler-{size}").open("wb", buffering=0) as handle:
            while True:
                written += handle.write(b"\0" * size)
    return written


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def wait_for(found, what: str, timeout: float = 300.0, every: float = 0.05):
    """Poll `found()` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}")


def results_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def run_state(path: Path) -> dict:
    return json.loads(pq.read_metadata(path).metadata[b"cachebench.run"])


# ---------------------------------------------------------------------------------------------- semantic store


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A redis-server of this test's own (it gets killed), on a free port, keeping nothing on disk."""
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for(lambda: redis_reachable("127.0.0.1", port), "redis-server to answer", timeout=30)
    try:
        yield process, f"redis://127.0.0.1:{port}/0"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_redis_killed_mid_run_every_request_has_its_row(own_redis, tmp_path: Path) -> None:
    """Redis dies by SIGKILL while the stream runs: the requests served before keep their scores, every later one is
    an error row, the file holds all planned rows, and the run exits 1 saying the rows failed."""
    import redis

    server, url = own_redis
    out = tmp_path / "out"
    process = start_cli("eval", "--method", "threshold", "--param", "store=redis", "--param", f"redis_url={url}",
                        "--task", "semantic.stream", "--limit", "2000", "--llm-cost-ms", "800", "--out", str(out),
                        "-q")
    client = redis.Redis.from_url(url)
    wait_for(lambda: client.dbsize() >= 50 or process.poll() is not None, "the run to insert 50 entries",
             every=0.001)
    server.kill()  # by its PID, mid-run
    server.wait()
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    assert "rows failed; first error:" in stderr and "Error" in stderr
    assert "warning: closing the cache's store failed" in stderr
    table = read_results([Path(stdout.strip())])
    assert table.num_rows == 2000  # every planned request has a row
    errors = table["error"].to_pylist()
    first = next(i for i, error in enumerate(errors) if error is not None)
    assert 50 <= first < 1990, first  # the kill came mid-run
    assert all(error is None for error in errors[:first])  # served before the kill: scored
    assert all(score is not None for score in table["score"].to_pylist()[:first])
    assert all(error is not None for error in errors[first:])  # every request after the failure: an error row
    assert sum("not run: the cache failed 3 requests in a row" in e for e in errors[first:]) >= len(errors) - first - 3
    assert set(table["run_complete"].to_pylist()) == {True} and set(table["run_planned"].to_pylist()) == {2000}


@pytest.fixture(scope="module")
def minilm():
    """The embedded all-MiniLM-L6-v2, loaded once for the module."""
    from cachebench.semantic.embedder import load_embedder

    return load_embedder()


CRAFTED = [  # (user, prompt, class): ids that collided in older partition keys or were merged into one user
    ("a\u0000b", "c", "1"),
    ("a", "b\u0000c", "2"),  # spelled "a\0b\0c" with the row above when partition and text were joined by \0
    (0, "what is the tallest mountain", "3"),
    ("u0", "what is the tallest mountain", "4"),  # 0 and "u0" are two users
    ("0", "what is the tallest mountain", "3"),  # the same user as the integer 0: a right hit
    ("a\u0000b", "c", "1"),  # the same user and text again: a right hit
    ("a", "b\u0000c", "2"),
]


def crafted_file(folder: Path) -> Path:
    path = folder / "crafted.jsonl"
    rows = [{"id": i, "prompt": prompt, "id_set": klass, "response_llama_3_8b": f"answer {klass}", "user": user}
            for i, (user, prompt, klass) in enumerate(CRAFTED, start=1)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# every registered semantic method with a per-user scope
@pytest.mark.parametrize("method", methods_where("semantic", lambda cls: declares(cls, "scope")))
def test_crafted_user_ids_never_read_another_users_entry(minilm, method: str, tmp_path: Path) -> None:
    """Per-user scope with user ids built to collide: no hit ever serves another user's class."""
    from cachebench.registry import build_method
    from cachebench.runs import EvalRequest
    from cachebench.semantic.evaluate import run_semantic_eval
    from cachebench.taskspec import resolve_tasks

    params = ["scope=user", "index=exact", *declared(method, {"threshold": 0.5})]  # a loose threshold if it has one
    request = EvalRequest(method=method, task="semantic.sembenchmark", data=str(crafted_file(tmp_path)),
                          out=tmp_path / "out", llm_cost="800", params=tuple(params))
    outcome = run_semantic_eval(request, resolve_tasks(request.task), build_method(method, params), embedder=minilm)
    rows = outcome.rows
    assert [row["error"] for row in rows] == [None] * len(CRAFTED)
    for row in rows:
        if row["hit"]:
            assert row["served_class"] == row["class_id"], row  # a user's own class only
    assert not rows[1]["hit"] and not rows[3]["hit"]  # "a" is not "a\0b"; "u0" is not 0
    if method == "exact":
        assert [row["outcome"] for row in rows[4:]] == ["TP", "TP", "TP"]


def test_concurrent_runs_on_one_redis_share_nothing(own_redis, tmp_path: Path) -> None:
    """Two runs at once on one Redis give exactly the outcomes of a run on in-process memory, and leave no key."""
    import redis

    _, url = own_redis
    common = ("--method", "threshold", "--task", "semantic.stream", "--limit", "400", "--llm-cost-ms", "800", "-q",
              "--param", "scope=user", "--param", "index=exact", "--param", "threshold=0.85")
    runs = [start_cli("eval", *common, "--param", "store=redis", "--param", f"redis_url={url}", "--out",
                      str(tmp_path / f"redis-{i}")) for i in range(2)]
    reference = run("eval", *common, "--param", "store=memory", "--out", str(tmp_path / "memory"))
    assert reference.returncode == 0, reference.stderr
    expected = read_results([tmp_path / "memory"])["outcome"].to_pylist()
    assert expected.count("TP") > 20  # the stream has hits to lose or to gain
    for process in runs:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        assert read_results([Path(stdout.strip())])["outcome"].to_pylist() == expected
    assert redis.Redis.from_url(url).dbsize() == 0  # each run removed its own namespace


# ------------------------------------------------------------------------------------------------- KV disk tier


def test_full_disk_tier_keeps_blocks_in_memory(tmp_path: Path) -> None:
    """The prefix cache's disk tier on a 1 MiB tmpfs (a block is several MiB): safetensors fails on every write, the
    run completes with every row scored, and says so once."""
    with tmpfs(tmp_path / "tier", "1m") as tier:
        result = run("eval", "--method", "prefix", "--task", "rag.passages", "--limit", "2", "--param", "disk_mb=64",
                     "--param", f"disk_dir={tier}", "--out", str(tmp_path / "out"), "-q")
        assert result.returncode == 0, result.stderr
        warnings = [line for line in stderr_lines(result.stderr) if "KV store: cannot write" in line]
        assert len(warnings) == 1, result.stderr
        table = read_results([tmp_path / "out"])
        assert table.num_rows == 6 and table["error"].null_count == 6
        assert all(score is not None for score in table["score"].to_pylist())
        assert sum(table["reused_tokens"].to_pylist()) > 0  # the blocks were served from memory instead


def test_damaged_blocks_are_counted_in_the_rows(tmp_path: Path) -> None:
    """A second run over a disk tier whose files were damaged recomputes those blocks and reports how many."""
    tier, first_out, second_out = tmp_path / "tier", tmp_path / "first", tmp_path / "second"
    args = ("eval", "--method", "prefix", "--task", "rag.passages", "--limit", "2", "--mode", "multi-request",
            "--param", "disk_mb=256", "--param", f"disk_dir={tier}", "--param", "device_mb=0", "--param", "cpu_mb=0",
            "-q")
    first = run(*args, "--out", str(first_out))
    assert first.returncode == 0, first.stderr
    from safetensors import safe_open

    blocks = list(tier.rglob("*.safetensors"))
    assert blocks
    damaged = {}
    for block in blocks:  # flip bytes in the middle of each file (tensor data)
        data = bytearray(block.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
        block.write_bytes(bytes(data))
        damaged[block] = bytes(data)
    second = run(*args, "--out", str(second_out))
    assert second.returncode == 0, second.stderr
    table = read_results([second_out])
    corrupt = sum(table["reuse_corrupt_blocks"].to_pylist())
    # each context's first block is read first, fails verification and breaks the prefix chain (the rest of the
    # chain is computed and stored anew without being read): one damaged block found per distinct first block
    firsts = sum(json.loads(safe_open(str(block), "pt").metadata()["meta"])["first_position"] == "0"
                 for block in damaged)
    assert corrupt == firsts and corrupt >= 1, (corrupt, firsts)
    assert all(block.read_bytes() != data for block, data in damaged.items())  # no damaged file is left
    assert f"KV store: {corrupt} damaged disk block(s)" in second.stderr
    assert read_results([first_out])["score"].to_pylist() == table["score"].to_pylist()  # recomputed, same answers
    assert sum(read_results([first_out])["reuse_corrupt_blocks"].to_pylist()) == 0  # nothing damaged: none counted


# ----------------------------------------------------------------------------------------------- output folder


@pytest.mark.parametrize("state", ["read-only", "full"])
def test_unwritable_out_is_refused_before_any_work(tmp_path: Path, state: str) -> None:
    with tmpfs(tmp_path / "out", "256k", read_only=state == "read-only") as out:
        if state == "full":
            fill(out)
        start = time.monotonic()
        result = run(*KV_RUN, "--out", str(out))
        elapsed = time.monotonic() - start
        reason = "Read-only file system" if state == "read-only" else "No space left on device"
        assert result.returncode == 2, result.stderr
        assert stderr_lines(result.stderr) == [f"error: --out {out}: not writable ({reason})"]
        assert elapsed < 20  # before the model loads
        assert not results_in(out)


def test_disk_filling_mid_run_loses_no_row(tmp_path: Path) -> None:
    """The output disk fills after the first checkpoint: later writes fail, the rows stay in memory, and the final
    write lands in the fallback folder, named in one line; the stale checkpoint says it is partial."""
    fallback = tmp_path / "fallback"
    with tmpfs(tmp_path / "out", "3m") as out:
        process = start_cli(*KV_RUN, "--out", str(out), env={"CACHEBENCH_CHECKPOINT_SECONDS": "0",
                                                             "CACHEBENCH_FALLBACK_DIR": str(fallback)})
        checkpoint = wait_for(lambda: results_in(out), "the first checkpoint")[0]
        fill(out)
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 1, stderr
        saved = fallback / checkpoint.name
        assert stderr_lines(stderr)[-1] == (f"error: could not write {checkpoint} (No space left on device); all 12 "
                                            f"rows are in {saved}")
        assert "warning: cannot write" in stderr
        table = read_results([saved])
        assert table.num_rows == 12 and set(table["run_complete"].to_pylist()) == {True}
        assert table["error"].null_count == 12
        state = run_state(checkpoint)
        assert state["complete"] is False and state["planned_rows"] == 12 and state["rows"] < 12


# --------------------------------------------------------------------------------------------------- signals


def test_sigkill_leaves_a_file_that_says_it_is_partial(tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = start_cli(*KV_RUN, "--out", str(out), env={"CACHEBENCH_CHECKPOINT_SECONDS": "0"})
    checkpoint = wait_for(lambda: results_in(out), "the first checkpoint")[0]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    state = run_state(checkpoint)
    assert state == {"complete": False, "planned_rows": 12, "rows": state["rows"]} and 4 <= state["rows"] < 12
    table = read_results([checkpoint])
    assert set(table["run_complete"].to_pylist()) == {False}
    shown = run("show", str(out))
    assert shown.returncode == 0, shown.stderr
    assert f"partial run {checkpoint.stem}: {state['rows']} of 12 planned rows" in shown.stdout
    assert "streamingllm (partial)" in shown.stdout


def test_sigterm_writes_the_finished_rows_marked_partial(tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = start_cli(*KV_RUN, "--out", str(out), env={"CACHEBENCH_CHECKPOINT_SECONDS": "0"})
    checkpoint = wait_for(lambda: results_in(out), "the first checkpoint")[0]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr_lines(stderr)[-1].startswith("interrupted; ") and "(marked partial)" in stderr
    state = run_state(checkpoint)
    assert state["complete"] is False and state["planned_rows"] == 12 and state["rows"] >= 4
