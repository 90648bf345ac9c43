"""`vcache`: vCache's verified semantic cache (Schroeder et al., "vCache: Verified Semantic Prompt Caching",
arXiv 2502.03771), reimplemented from the paper, not from its code.

Why (abstract, §1): a static similarity threshold gives no correctness guarantee and an unpredictable error
rate, because how similar a wrong neighbour gets differs from one cached prompt to the next. vCache learns,
online and per cached prompt, how the chance that its response is right for a new request grows with
similarity, and serves only while that chance, taken at a confidence bound, keeps the probability of a wrong
answer at or below the user's bound δ (`delta`).

Provenance note: only the paper's abstract and introduction could be consulted while writing this; the method
below follows the paper's method section (§4) as its authors' terms recall it — per-embedding observations, a
sigmoid fitted by maximum likelihood, a confidence bound on the threshold, an exploration probability τ — and
the exploration probability is derived here from those terms, not copied from the paper's equation.

Per entry e the cache keeps the observations O(e) = {(s_i, c_i)}: the similarity of each explored request whose
nearest neighbour e was, and whether the LLM's fresh response equalled e's stored one (c_i = 1) — the label
vCache itself sees; no equivalence class is used.

Model: P(c = 1 | s) = L(s; t, γ) = 1 / (1 + exp(-γ (s - t))), fitted to O(e); t̂ is the entry's threshold, γ̂ its
steepness.

Decision: with an upper confidence bound t̂'_ε on t (P(t ≤ t̂'_ε) ≥ 1 - ε), exploiting at similarity s is right
with probability at least (1 - ε)·L(s; t̂'_ε, γ̂). Exploring with probability τ (a miss: the LLM answers) makes
a request wrong with probability at most (1 - τ)·(1 - (1 - ε) L), so

    τ(s) = min over ε of  max(0, 1 - δ / (1 - (1 - ε) · L(s; t̂'_ε, γ̂)))

keeps it at or below δ. A request explores when u < τ(s), u ~ U(0, 1) from a generator seeded by `seed`.

After exploring: the observation (s, c) joins the nearest entry's O(e); the new prompt is cached as an entry of
its own only when its response differed (c = 0) — a matching response adds nothing new.

Choices of this reimplementation:
- the fit is a damped Newton (IRLS) maximum-a-posteriori fit with a weak Gaussian prior on (logit at s = 1, γ),
  which keeps it finite when O(e) holds one label only or is separable (the plain MLE then diverges);
- t̂'_ε = t̂ + z_{1-ε}·σ̂_t, with σ̂_t from the fit's inverse Hessian by the delta method (a Laplace / Wald bound;
  it is asymptotic, so with few observations the guarantee is approximate);
- an entry with no observations is never served: its first neighbours always explore;
- ε is minimised over a fixed grid of 84 values; the fit is cached per entry until its observations change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from cachebench.params import param
from cachebench.semantic.method import Decision, EntryMeta, Query, SemanticMethod, SemanticParams

# ε grid (fine near 0, where exploiting at δ ~ 0.01-0.05 needs ε < δ) and the matching one-sided normal quantiles.
_EPSILONS = np.concatenate([np.geomspace(1e-4, 0.1, 40), np.linspace(0.12, 0.98, 44)])
_Z = np.array([NormalDist().inv_cdf(1.0 - e) for e in _EPSILONS])
_KEEP = 1.0 - _EPSILONS

# Weak prior of the fit: logit at s = 1 ~ N(0, 20²) (even odds for an identical prompt: leans cautious), γ ~ N(20,
# 200²). Chosen on the synthetic stream of tests/test_semantic_learning.py: weaker priors approach the plain MLE,
# whose over-confident separable fits let the error creep up to (and past) δ; stronger ones flatten γ̂ and cost hits.
_PRIOR_MEAN = np.array([0.0, 20.0])
_PRIOR_PRECISION = np.array([1.0 / 400.0, 1.0 / 40000.0])


@dataclass(frozen=True)
class Fit:
    """An entry's fitted sigmoid and its threshold's upper confidence bounds over the ε grid."""

    threshold: float  # t̂
    steepness: float  # γ̂
    threshold_sd: float  # σ̂_t
    upper: np.ndarray  # t̂'_ε for each ε of the grid


def _log_posterior(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    logits = x @ w
    # log σ(η) = -log(1 + e^-η); log(1 - σ(η)) = -log(1 + e^η)
    likelihood = -(y * np.logaddexp(0.0, -logits) + (1.0 - y) * np.logaddexp(0.0, logits)).sum()
    return float(likelihood - 0.5 * (_PRIOR_PRECISION * (w - _PRIOR_MEAN) ** 2).sum())


def fit_sigmoid(similarities: np.ndarray, correct: np.ndarray, iterations: int = 50) -> Fit | None:
    """MAP fit of P(correct | s) = σ(b + γ (s - 1)) by damped Newton steps (IRLS with step halving, so separable
    observations cannot make it overshoot); t = 1 - b / γ.

    Returns None when the fitted curve does not rise with similarity (γ̂ ≤ 0): no threshold exists then."""
    x = np.stack([np.ones_like(similarities), similarities - 1.0], axis=1)
    y = correct.astype(float)
    w = _PRIOR_MEAN.copy()
    value = _log_posterior(w, x, y)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -35.0, 35.0)))
        gradient = x.T @ (y - p) - _PRIOR_PRECISION * (w - _PRIOR_MEAN)
        hessian = (x * (p * (1.0 - p))[:, None]).T @ x + np.diag(_PRIOR_PRECISION)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-6:
            candidate = w + scale * step
            candidate_value = _log_posterior(candidate, x, y)
            if candidate_value >= value:
                break
            scale *= 0.5
        else:
            break
        converged = value - 1e-10 <= candidate_value <= value + 1e-10 or float(np.abs(scale * step).max()) < 1e-8
        w, value = candidate, candidate_value
        if converged:
            break
    b, gamma = float(w[0]), float(w[1])
    if gamma <= 1e-6:
        return None
    p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -35.0, 35.0)))
    covariance = np.linalg.inv((x * (p * (1.0 - p))[:, None]).T @ x + np.diag(_PRIOR_PRECISION))
    grad_t = np.array([-1.0 / gamma, b / gamma**2])  # t = 1 - b / γ
    sd = float(np.sqrt(max(grad_t @ covariance @ grad_t, 0.0)))
    threshold = 1.0 - b / gamma
    return Fit(threshold, gamma, sd, threshold + _Z * sd)


def exploration_probability(similarity: float, fit: Fit | None, delta: float) -> float:
    """τ(s) of the module docstring: the least exploration that keeps P(wrong answer) ≤ δ."""
    if fit is None:
        return 1.0
    logits = np.clip(fit.steepness * (similarity - fit.upper), -35.0, 35.0)
    served_right = _KEEP / (1.0 + np.exp(-logits))  # (1 - ε) L(s; t̂'_ε, γ̂)
    tau = 1.0 - delta / (1.0 - served_right)
    return float(min(max(tau.min(), 0.0), 1.0))


def response_digest(response: str) -> bytes:
    return hashlib.blake2b(response.encode(), digest_size=16).digest()


@dataclass(frozen=True)
class VCacheParams(SemanticParams):
    delta: float = param(0.02, "user error bound δ: the largest acceptable probability that a request is answered "
                               "wrongly from the cache", low=1e-6, high=1.0)
    seed: int = param(0, "seed of the exploration draws (u ~ U(0,1) per lookup)")


class VCache(SemanticMethod):
    name = "vcache"
    summary = "vCache: per-entry sigmoid thresholds learnt online by exploring, serving within an error bound δ"
    Params = VCacheParams

    def open(self, dim: int, namespace: str) -> None:
        super().open(dim, namespace)
        self._rng = np.random.default_rng(self.params.seed)

    def protocol_warning(self, protocol: str) -> str | None:
        """The pair protocols look each cached entry up about once, and an entry is never served before it has
        observations of its own, so vCache can hardly hit there: its rows would read as a method that never
        works."""
        if not protocol.startswith("pair"):
            return None
        return (f"vcache under {protocol}: each cached entry is looked up about once, and vCache serves an entry "
                "only after its own explored requests have labelled it, so nearly every lookup misses; judge it on "
                "a stream task (e.g. semantic.stream)")

    def lookup(self, query: Query) -> Decision:
        found = self.neighbours(query)
        if not found:
            return self.miss(None, "empty")
        meta, similarity = found[0]
        state = (meta.key, similarity)
        with self._lock:
            u = float(self._rng.random())
            if not meta.extra.get("obs_s"):
                return self.miss(found[0], "explore", state)
            tau = exploration_probability(similarity, self._fit(meta), self.params.delta)
        if u < tau:
            return self.miss(found[0], "explore", state)
        return self.serve(meta, similarity, query)

    def record_miss(self, query: Query, response: str, decision: Decision) -> int | None:
        """Algorithm 1 after the LLM answered: an explored request labels its neighbour; the prompt is cached
        only when there was no neighbour or its response differed."""
        if decision.note == "explore" and self._observe(response, decision):
            return None
        return self.insert(query, response)

    def feedback(self, query: Query, response: str, decision: Decision) -> None:
        """A missed query the runner will not insert still labels the neighbour it explored."""
        if decision.note == "explore":
            self._observe(response, decision)

    # -- helpers -------------------------------------------------------------------------------------------------
    def _observe(self, response: str, decision: Decision) -> bool:
        """Add (s, c) to the explored neighbour's observations; returns c (False when the neighbour is gone)."""
        key, similarity = decision.state
        with self._lock:
            meta = self.meta.get(key)
            if meta is None or "digest" not in meta.extra:  # evicted while the LLM answered: nothing to label
                return False
            correct = meta.extra["digest"] == response_digest(response)
            meta.extra["obs_s"].append(float(similarity))
            meta.extra["obs_c"].append(correct)
            meta.extra["fit"] = None  # refit on the next lookup that needs it
        return correct

    def insert(self, query: Query, response: str, partition: str | None = None) -> int:
        """Insert, and start the entry's metadata: its response's digest (to label explorations) and no
        observations."""
        key = super().insert(query, response, partition)
        with self._lock:
            meta = self.meta.get(key)
            if meta is not None:
                meta.extra.update(digest=response_digest(response), obs_s=[], obs_c=[], fit=None)
        return key

    def _fit(self, meta: EntryMeta) -> Fit | None:
        """The entry's fit, cached until its observations change."""
        extra = meta.extra
        if extra.get("fit") is None:
            fit = fit_sigmoid(np.asarray(extra["obs_s"]), np.asarray(extra["obs_c"]))
            extra["fit"] = fit if fit is not None else False  # False: fitted, but no rising curve
        return extra["fit"] or None

    def threshold_of(self, key: int) -> Fit | None:
        """The entry's current fit (t̂, γ̂, σ̂_t), for inspection and tests; None before it has a rising curve."""
        meta = self.meta.get(key)
        if meta is None or not meta.extra.get("obs_s"):
            return None
        with self._lock:
            return self._fit(meta)

    def observations(self, key: int) -> list[tuple[float, bool]]:
        meta = self.meta.get(key)
        if meta is None:
            return []
        return list(zip(meta.extra.get("obs_s", []), meta.extra.get("obs_c", []), strict=True))
