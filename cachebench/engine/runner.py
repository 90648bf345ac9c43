"""The KV runner: episodes against a method in SCBench's two modes, measured turn by turn.

multi-turn   the cache carries over; each turn appends the model's own previous answer (or, with golden
             history, the reference answer) and the next question.
multi-request every turn starts from the post-context cache, restored from a snapshot without recomputing the
             context (the copy is not timed: a serving engine shares the blocks instead of copying them).

The runner knows nothing method-specific and nothing about scoring or storage: it returns what it measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cachebench.engine.chat import ChatFormat
from cachebench.engine.measure import Clock, PeakMemory
from cachebench.engine.session import KVSession, LayerHooks
from cachebench.episodes import Episode
from cachebench.errors import UsageError
from cachebench.method import KVMethod
from cachebench.models.loaded import LoadedModel
from cachebench.taskspec import TaskSpec

TRUNCATE_POLICIES = ("error", "middle")
COMPRESSION_SETTINGS = ("query-agnostic", "query-aware")


@dataclass(frozen=True)
class RunSettings:
    mode: str  # "multi-turn" | "multi-request"
    golden_history: bool = False
    truncate: str = "error"
    max_new_tokens: int | None = None  # overrides the task's
    compression: str = "query-agnostic"  # or "query-aware": the first question joins the compressed prefill


@dataclass
class PreparedEpisode:
    """An episode with its context tokenized (and truncated, if the policy allowed it)."""

    episode: Episode
    context_ids: list[int]
    turn_texts: list[str]  # each turn's query text, formatted with the task's template
    truncated_tokens: int


@dataclass
class TurnMeasure:
    """What the runner measured for one turn."""

    episode_id: str
    turn: int
    category: str
    prediction: str
    context_tokens: int
    prompt_tokens: int
    output_tokens: int
    reused_tokens: int
    recomputed_tokens: int
    kv_bytes: int
    peak_mem_bytes: int
    prefill_ms: float  # the episode's context prefill, measured once and repeated on each of its turns
    ttft_ms: float
    decode_ms_per_token: float  # NaN when the reply ended at its first token
    truncated_tokens: int
    error: str | None = None


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prepare_episodes(
    episodes: Sequence[Episode], spec: TaskSpec, model: LoadedModel, chat: ChatFormat, settings: RunSettings
) -> list[PreparedEpisode]:
    """Tokenize contexts and check every episode fits the model's window before any compute starts."""
    prepared = []
    for episode in episodes:
        context_text = chat.context(spec.context_template.format(**episode.fields))
        context_ids = _tokens(model.tokenizer, context_text)
        texts = [spec.query_template.format(**turn.fields) for turn in episode.turns]
        turn_cost = [
            len(_tokens(model.tokenizer, chat.followup(text))) + _max_new(spec, turn.category, settings)
            for text, turn in zip(texts, episode.turns, strict=True)
        ]
        if settings.mode == "multi-turn":
            needed_after_context = sum(turn_cost) + sum(
                _reference_tokens(model, turn.references) for turn in episode.turns if settings.golden_history
            )
        else:
            needed_after_context = max(turn_cost, default=0)
        window = model.max_context or 10**9  # a config without max_position_embeddings sets no limit
        room = window - needed_after_context
        truncated = 0
        if len(context_ids) > room:
            if settings.truncate == "error" or room <= 0:
                raise UsageError(
                    f"episode {episode.episode_id} of {spec.name} needs {len(context_ids) + needed_after_context} "
                    f"tokens but {model.name} has a {model.max_context}-token window "
                    "(shorten --context-tokens, or pass --truncate middle)"
                )
            truncated = len(context_ids) - room
            keep_head = room // 2
            context_ids = context_ids[:keep_head] + context_ids[len(context_ids) - (room - keep_head) :]
        prepared.append(PreparedEpisode(episode, context_ids, texts, truncated))
    return prepared


def warm_up(model: LoadedModel) -> None:
    """One short untimed prefill and decode, so first-call costs (kernels, allocator) stay out of the rows."""
    chat = ChatFormat(model.tokenizer)
    session = KVSession(model, KVMethod(None), None)
    ids = _tokens(model.tokenizer, chat.context("Warm-up text for the first measured call. " * 8))
    with torch.inference_mode():
        logits = session.forward(ids, "context")
        for _ in range(4):
            logits = session.forward([int(logits.argmax())], "decode")


def _max_new(spec: TaskSpec, category: str, settings: RunSettings) -> int:
    return settings.max_new_tokens or spec.max_new_tokens_for(category)


def _reference_tokens(model: LoadedModel, references: list[str]) -> int:
    return len(_tokens(model.tokenizer, references[0])) if references else 0


class EpisodeRunner:
    """Runs prepared episodes of one task against one method on one model."""

    def __init__(self, model: LoadedModel, method: KVMethod, spec: TaskSpec, settings: RunSettings) -> None:
        self.model = model
        self.method = method
        self.spec = spec
        self.settings = settings
        self.chat = ChatFormat(model.tokenizer)
        self.clock = Clock(model.device)
        self.memory = PeakMemory(model.device)
        self._hooks = LayerHooks(model.model) if method.uses_layer_hook else None
        self._eos = set(model.eos_token_ids)

    def close(self) -> None:
        if self._hooks is not None:
            self._hooks.remove()

    def run(self, prepared: PreparedEpisode, on_turn: Callable[[], None] | None = None) -> list[TurnMeasure]:
        with torch.inference_mode():
            return self._run(prepared, on_turn)

    def _run(self, prepared: PreparedEpisode, on_turn: Callable[[], None] | None) -> list[TurnMeasure]:
        multi_turn = self.settings.mode == "multi-turn"
        episode = prepared.episode
        session = KVSession(self.model, self.method, self._hooks, self.settings.compression == "query-aware")
        self.memory.start()
        start = self.clock.now_ms()
        session.prefill(prepared.context_ids, "context")
        prefill_ms = self.clock.now_ms() - start
        after_context = None if multi_turn else session.snapshot()
        pending: list[int] = []  # tokens owed to the cache before the next question (multi-turn only)
        results = []
        for index, (turn, text) in enumerate(zip(episode.turns, prepared.turn_texts, strict=True)):
            if index > 0:
                self.memory.start()  # turn 0's peak includes the context prefill
            if after_context is not None and index > 0:
                session.restore(after_context)
            if index == 0 or not multi_turn:
                query_text = self.chat.query(self.spec.query_joiner + text)
            else:
                query_text = self.chat.followup(text)
            prompt_ids = pending + _tokens(self.model.tokenizer, query_text)
            reused_before, recomputed_before = session.reused_tokens, session.recomputed_tokens

            start = self.clock.now_ms()
            logits = session.prefill(prompt_ids, "query")
            generated = [int(logits.argmax())]
            ttft_ms = self.clock.now_ms() - start

            before_answer = session.snapshot() if multi_turn and self.settings.golden_history else None
            limit = _max_new(self.spec, turn.category, self.settings)
            start = self.clock.now_ms()
            while generated[-1] not in self._eos and len(generated) < limit:
                logits = session.forward([generated[-1]], "decode")
                generated.append(int(logits.argmax()))
            decode_steps = len(generated) - 1
            decode_ms = self.clock.now_ms() - start

            ended = generated[-1] in self._eos
            answer_ids = generated[:-1] if ended else generated
            results.append(
                TurnMeasure(
                    episode_id=episode.episode_id,
                    turn=index,
                    category=turn.category,
                    prediction=self.model.tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
                    context_tokens=len(prepared.context_ids),
                    prompt_tokens=len(prompt_ids),
                    output_tokens=len(answer_ids),
                    reused_tokens=session.reused_tokens - reused_before,
                    recomputed_tokens=session.recomputed_tokens - recomputed_before,
                    kv_bytes=self.method.kv_bytes(session.cache),
                    peak_mem_bytes=self.memory.peak_bytes(),
                    prefill_ms=prefill_ms,
                    ttft_ms=ttft_ms,
                    decode_ms_per_token=decode_ms / decode_steps if decode_steps else float("nan"),
                    truncated_tokens=prepared.truncated_tokens,
                )
            )
            if multi_turn:
                if before_answer is not None:  # golden history: the reference answer replaces the model's
                    session.restore(before_answer)
                    pending = _tokens(self.model.tokenizer, turn.references[0]) if turn.references else []
                else:  # the sampled last token was never fed unless it ended the reply
                    pending = [] if ended else [generated[-1]]
            if on_turn is not None:
                on_turn()
        return results
