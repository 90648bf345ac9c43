"""`category-aware`: per-category similarity threshold, TTL and quota, with a load-aware adjustment, over the
hybrid store (in-memory HNSW index, documents in SQLite/Redis).

After Wang et al., "Category-Aware Semantic Caching for Heterogeneous LLM Workloads" (arXiv 2510.26835):
categories differ in how densely their queries cluster (code: near-duplicates that differ in one slot, so a
strict threshold; conversation: sparse paraphrases, so a looser one), in how fast answers go stale (prices:
minutes, so a short TTL; code and facts: months) and in how much they repeat (quotas keep a low-value category
from crowding out the rest). Each category searches only its own partition. Under high downstream load the
paper relaxes thresholds and stretches TTLs to shed LLM traffic; here `load` (0 idle .. 1 saturated) above
`load_knee` moves each category's threshold down by up to its `relax` and multiplies its TTL by up to its
`ttl_boost`, linearly.

The category comes with the request (a classifier's job in a deployment; the stream's label here); the
equivalence class never reaches the cache.

A category the policy does not name gets what `unknown` declares, never a silent guess: `default` serves it
with the policy's "default" entry and says so in a run warning; `bypass` sends it past the cache; `calibrate`
fits its threshold online. Calibrating, the category is not served until it has `calibrate_after` labelled
observations: each of its misses compares the LLM's response with the nearest entry's stored one (equal: that
entry would have been a right hit; the label vCache learns from, not the benchmark's classes), and the threshold
with the best F0.5 over them (ties: the higher) is then used, the other settings coming from "default". The
method never sees the stream's warm-up flag, so these observations are its own warm-up, counted per category,
and their requests are scored as the misses they were.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from cachebench.errors import UsageError
from cachebench.params import param
from cachebench.semantic.method import Decision, EntryMeta, Query, SemanticMethod, SemanticParams
from cachebench.semantic.threshold_fit import best_threshold


@dataclass(frozen=True)
class CategoryPolicy:
    threshold: float = 0.85  # cosine similarity at or above which the nearest entry is served
    ttl: float = 0.0  # seconds of stream time an entry stays servable; 0: forever
    quota: int = 0  # most entries the category may hold (least recently used leave first); 0: no limit
    relax: float = 0.0  # threshold reduction at full load
    ttl_boost: float = 1.0  # TTL multiplier at full load
    cache: bool = True  # false: the category bypasses the cache (no lookup cost, no entries)


# Defaults for the generator's categories (tasks/semantic/stream.yaml). Thresholds: the best-F0.5 fixed threshold
# per category on the held-out seed 1 (the benchmark scores seed 0), from benchmarks/semantic_calibrate.py when it
# swept one global threshold cache (docs/semantic.md says what its per-partition sweep picks now). TTLs follow
# how fast answers change: minutes for prices and scores, never for code and facts; conversation answers are kept a
# day. Relaxation under load only where a false hit is cheap (conversation, facts). Categories not named here get
# what the `unknown` parameter says; "default" is the entry `unknown=default` uses.
DEFAULT_POLICY: dict[str, CategoryPolicy] = {
    "code": CategoryPolicy(threshold=0.88),
    "conversation": CategoryPolicy(threshold=0.75, ttl=86400.0, quota=2000, relax=0.05),
    "factual": CategoryPolicy(threshold=0.78, relax=0.03),
    "time-sensitive": CategoryPolicy(threshold=0.78, ttl=120.0, ttl_boost=1.5),
    "default": CategoryPolicy(),
}


@dataclass(frozen=True)
class CategoryAwareParams(SemanticParams):
    policy: str = param("", "per-category policy: a YAML/JSON file or inline mapping {category: {threshold, ttl, "
                            "quota, relax, ttl_boost, cache}}, merged over the built-in defaults")
    load: float = param(0.0, "downstream model load, 0 (idle) to 1 (saturated)", low=0.0, high=1.0)
    load_knee: float = param(0.7, "load above which thresholds relax and TTLs stretch", low=0.0, high=0.999)
    unknown: Literal["default", "calibrate", "bypass"] = param(
        "default", "a category the policy does not name: default (served with the 'default' entry, and a run "
                   "warning says so), bypass (sent past the cache), calibrate (not served until its threshold is "
                   "fitted online from its first calibrate_after observations)")
    calibrate_after: int = param(50, "unknown=calibrate: labelled observations (a miss's response compared with the "
                                     "nearest entry's) a new category needs before its threshold is fitted", low=1)


def parse_policy(text: str) -> dict[str, CategoryPolicy]:
    """The built-in policy with the user's entries merged over it, field by field."""
    policy = dict(DEFAULT_POLICY)
    if not text:
        return policy
    try:
        raw = yaml.safe_load(Path(text).read_text(encoding="utf-8") if _is_file(text) else text)
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--param policy: not a readable YAML/JSON mapping ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UsageError("--param policy: expected a mapping of category to {threshold, ttl, quota, ...}")
    known = {f.name: f.type for f in fields(CategoryPolicy)}
    for category, entry in raw.items():
        if not isinstance(entry, dict):
            raise UsageError(f"--param policy: category {category!r} needs a mapping of settings")
        unknown = sorted(set(entry) - set(known))
        if unknown:
            raise UsageError(f"--param policy: category {category!r}: unknown setting {unknown[0]!r} "
                             f"(known: {', '.join(known)})")
        base = policy.get(str(category), policy["default"])
        merged = {f.name: getattr(base, f.name) for f in fields(CategoryPolicy)}
        merged.update(entry)
        policy[str(category)] = _checked(str(category), merged)
    return policy


def _is_file(text: str) -> bool:
    """Whether `text` names a file; an inline mapping longer than a file name may be is not one."""
    try:
        return Path(text).is_file()
    except OSError:  # e.g. ENAMETOOLONG
        return False


def _checked(category: str, values: dict[str, Any]) -> CategoryPolicy:
    try:
        entry = CategoryPolicy(threshold=float(values["threshold"]), ttl=float(values["ttl"] or 0),
                               quota=int(values["quota"] or 0), relax=float(values["relax"]),
                               ttl_boost=float(values["ttl_boost"]), cache=bool(values["cache"]))
    except (TypeError, ValueError):
        raise UsageError(f"--param policy: category {category!r} has a non-numeric setting") from None
    if not -1.0 <= entry.threshold <= 1.0 or entry.ttl < 0 or entry.quota < 0 or entry.relax < 0 \
            or entry.ttl_boost < 1.0:
        raise UsageError(f"--param policy: category {category!r}: need -1 <= threshold <= 1, ttl >= 0, quota >= 0, "
                         "relax >= 0, ttl_boost >= 1")
    return entry


def _digest(response: str) -> bytes:
    return hashlib.blake2b(response.encode(), digest_size=16).digest()


def _describe(entry: CategoryPolicy) -> str:
    ttl = f"ttl {entry.ttl:g} s" if entry.ttl > 0 else "no TTL"
    quota = f"quota {entry.quota}" if entry.quota else "no quota"
    return f"threshold {entry.threshold:.2f}, {ttl}, {quota}"


class CategoryAwareCache(SemanticMethod):
    name = "category-aware"
    summary = "per-category threshold, TTL and quota (+ load-aware relaxation) over an in-memory index"
    Params = CategoryAwareParams

    def __init__(self, params: CategoryAwareParams) -> None:
        super().__init__(params)
        self.policy = parse_policy(params.policy)
        self._recency: dict[str, OrderedDict[int, None]] = {}  # per category, least recently used first
        self._warnings: list[str] = []
        self._unknown_met: set[str] = set()
        self._observations: dict[str, list[tuple[float, bool]]] = {}  # unknown=calibrate: (similarity, right)
        self._fitted: dict[str, CategoryPolicy] = {}  # unknown=calibrate: the entry each category was given

    def _load_factor(self) -> float:
        knee = self.params.load_knee
        return min(1.0, max(0.0, (self.params.load - knee) / (1.0 - knee)))

    def policy_for(self, category: str) -> CategoryPolicy:
        """The category's entry; for one the policy does not name, what `unknown` says (the first meeting is
        noted in a run warning)."""
        entry = self.policy.get(category)
        if entry is not None:
            return entry
        default = self.policy["default"]
        mode = self.params.unknown
        if mode == "bypass":
            self._note(category, "sent past the cache (unknown=bypass)")
            return replace(default, cache=False)
        if mode == "calibrate":
            return self._fitted.get(category, default)
        self._note(category, f"used the default entry ({_describe(default)}); name it in --param policy, or set "
                             "unknown=calibrate or unknown=bypass")
        return default

    def calibrating(self, category: str) -> bool:
        """Whether the category is still gathering the observations its threshold will be fitted on."""
        return (self.params.unknown == "calibrate" and category not in self.policy
                and category not in self._fitted)

    def threshold_for(self, category: str) -> float:
        entry = self.policy_for(category)
        return entry.threshold - entry.relax * self._load_factor()

    def ttl_for(self, query: Query) -> float | None:
        entry = self.policy_for(query.category)
        if entry.ttl <= 0:
            return None
        return entry.ttl * (1.0 + (entry.ttl_boost - 1.0) * self._load_factor())

    def partition_parts(self, query: Query) -> tuple[str, ...]:
        return (*super().partition_parts(query), query.category)

    def lookup(self, query: Query) -> Decision:
        if not self.policy_for(query.category).cache:
            return self.miss(None, "bypass")
        found = self.neighbours(query)
        if not found:
            return self.miss(None, "calibrating" if self.calibrating(query.category) else "")
        meta, similarity = found[0]
        if self.calibrating(query.category):  # not served: the LLM's answer will label this neighbour
            return self.miss(found[0], "calibrating", (meta.key, similarity))
        if similarity >= self.threshold_for(query.category):
            decision = self.serve(meta, similarity, query)
            if decision.hit:
                self._recency.get(meta.category, OrderedDict()).move_to_end(meta.key, last=True)
            return decision
        return self.miss(found[0], "below-threshold")

    def record_miss(self, query: Query, response: str, decision: Decision) -> int | None:
        self.feedback(query, response, decision)
        entry = self.policy_for(query.category)
        if not entry.cache:
            return None
        recency = self._recency.setdefault(query.category, OrderedDict())
        while entry.quota and len(recency) >= entry.quota:
            self.evict(next(iter(recency)))
        key = self.insert(query, response)
        recency[key] = None
        if self.calibrating(query.category):  # kept to label the misses that will find this entry nearest
            with self._lock:
                if key in self.meta:
                    self.meta[key].extra["digest"] = _digest(response)
        return key

    def feedback(self, query: Query, response: str, decision: Decision) -> None:
        """A calibrating category's miss labels its nearest entry: right when the responses are equal."""
        if decision.note != "calibrating" or decision.state is None:
            return
        key, similarity = decision.state
        category = query.category
        with self._lock:
            meta = self.meta.get(key)
            if meta is None or "digest" not in meta.extra or not self.calibrating(category):
                return
            observations = self._observations.setdefault(category, [])
            observations.append((float(similarity), meta.extra["digest"] == _digest(response)))
            if len(observations) >= self.params.calibrate_after:
                self._fit(category, observations)

    def _fit(self, category: str, observations: list[tuple[float, bool]]) -> None:
        similarities = np.array([s for s, _ in observations])
        right = np.array([c for _, c in observations], dtype=bool)
        threshold, f05 = best_threshold(similarities, right)
        self._fitted[category] = replace(self.policy["default"], threshold=threshold)
        why = "" if right.any() else "; none was right, so the grid's strictest"
        self._warnings.append(
            f"category {category!r} has no policy; calibrated on its first {len(observations)} observations "
            f"({int(right.sum())} right{why}): threshold {threshold:.2f} (F0.5 {f05:.3f}), the rest from the "
            f"default entry ({_describe(self._fitted[category])})")

    def _note(self, category: str, what: str) -> None:
        with self._lock:
            if category in self._unknown_met:
                return
            self._unknown_met.add(category)
            self._warnings.append(f"category {category!r} has no policy; {what}")

    def run_warnings(self) -> list[str]:
        with self._lock:
            return list(self._warnings)

    def observations(self, category: str) -> list[tuple[float, bool]]:
        """A calibrating (or calibrated) category's (similarity, right) observations, for inspection and tests."""
        with self._lock:
            return list(self._observations.get(category, []))

    def evict(self, key: int) -> None:
        meta: EntryMeta | None = self.meta.get(key)
        if meta is not None:
            self._recency.get(meta.category, OrderedDict()).pop(key, None)
        super().evict(key)
