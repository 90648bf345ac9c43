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
from cachebench.engine.session import KVSession, LayerHooks, ReuseCounters, Segment
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
    context_length: int | None = None  # the target context length the task's episodes were built for (recorded)


@dataclass
class PreparedEpisode:
    """An episode with its context tokenized (and truncated, if the policy allowed it)."""

    episode: Episode
    context_ids: list[int]
    turn_texts: list[str]  # each turn's query text, formatted with the task's template
    truncated_tokens: int
    segments: tuple[Segment, ...] | None = None  # chunked contexts only, covering context_ids in order


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
    reuse_tier_tokens: dict[str, int]  # reused tokens by the store tier they came from
    reuse_load_ms: float
    kv_bytes: int
    peak_mem_bytes: int
    peak_kv_bytes: int  # the most bytes the KV cache held during the context prefill (repeated on its turns)
    prefill_ms: float  # the context prefill: once per episode and repeated on its turns, or per request when a
    # reuse method serves each multi-request turn's context from its store
    ttft_ms: float
    decode_ms_per_token: float  # NaN when the reply ended at its first token
    truncated_tokens: int
    error: str | None = None
    corrupt_blocks: int = 0  # a reuse method's stored blocks that failed verification during this request


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


_CHUNKS_MARK = "\u2063CBCHUNKS\u2063"


def _tokenize_context(
    episode: Episode, spec: TaskSpec, model: LoadedModel, chat: ChatFormat
) -> tuple[list[int], tuple[Segment, ...] | None]:
    """The context's tokens; a chunked context is tokenized piece by piece, so each chunk's tokens do not depend
    on its neighbours (the same chunk gives the same tokens in every episode)."""
    if not episode.chunks:
        return _tokens(model.tokenizer, chat.context(spec.context_template.format(**episode.fields))), None
    framed = chat.context(spec.context_template.format(**{**episode.fields, "context": _CHUNKS_MARK}))
    head, tail = framed.split(_CHUNKS_MARK)
    pieces: list[tuple[str, bool]] = [(head, False)]
    for index, chunk in enumerate(episode.chunks):
        if index:
            pieces.append((spec.chunk_joiner, False))
        pieces.append((chunk, True))
    pieces.append((tail, False))
    ids: list[int] = []
    segments = []
    for text, reusable in pieces:
        piece = _tokens(model.tokenizer, text) if text else []
        if piece:
            segments.append(Segment(len(ids), len(ids) + len(piece), reusable))
            ids.extend(piece)
    return ids, tuple(segments)


def prepare_episodes(
    episodes: Sequence[Episode], spec: TaskSpec, model: LoadedModel, chat: ChatFormat, settings: RunSettings
) -> list[PreparedEpisode]:
    """Tokenize contexts and check every episode fits the model's window before any compute starts."""
    prepared = []
    for episode in episodes:
        context_ids, segments = _tokenize_context(episode, spec, model, chat)
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
            segments = None  # a cut chunk is no longer the stored chunk: the context is treated as flat text
        prepared.append(PreparedEpisode(episode, context_ids, texts, truncated, segments))
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

    def _new_context(self, prepared: PreparedEpisode) -> tuple[KVSession, float, int]:
        """A session holding the episode's context, the context prefill's time and its peak KV bytes.

        A reuse method first stages what its paper assumes was stored ahead of the request (untimed); then the
        prefill is timed, including the method's loads from its store."""
        session = KVSession(
            self.model, self.method, self._hooks, self.settings.compression == "query-aware", prepared.segments
        )
        self.method.stage(session, prepared.context_ids)
        self.memory.start()  # the untimed staging is not the request's memory either
        start = self.clock.now_ms()
        session.prefill(prepared.context_ids, "context")
        elapsed = self.clock.now_ms() - start
        session.note_cache_bytes()  # methods that write the cache without the model's forward (reuse) count too
        return session, elapsed, session.peak_kv_bytes

    def _run(self, prepared: PreparedEpisode, on_turn: Callable[[], None] | None) -> list[TurnMeasure]:
        multi_turn = self.settings.mode == "multi-turn"
        # In multi-request mode a reuse method serves every request's context from its store again (what it is
        # measured on); other methods restore a snapshot of the post-context cache, which is not timed.
        per_request_context = not multi_turn and self.method.reuses_kv
        episode = prepared.episode
        session, prefill_ms, peak_kv = self._new_context(prepared)
        after_context = None if multi_turn or per_request_context else session.snapshot()
        pending: list[int] = []  # tokens owed to the cache before the next question (multi-turn only)
        results = []
        for index, (turn, text) in enumerate(zip(episode.turns, prepared.turn_texts, strict=True)):
            request_start = ReuseCounters() if index == 0 else session.reuse.copy()
            if index > 0:
                self.memory.start()  # turn 0's peak includes the context prefill
                if per_request_context:
                    session, prefill_ms, peak_kv = self._new_context(prepared)
                    request_start = ReuseCounters()
                elif after_context is not None:
                    session.restore(after_context)
            if index == 0 or not multi_turn:
                query_text = self.chat.query(self.spec.query_joiner + text)
            else:
                query_text = self.chat.followup(text)
            prompt_ids = pending + _tokens(self.model.tokenizer, query_text)

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
            reuse = session.reuse.since(request_start)
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
                    reused_tokens=reuse.reused_tokens,
                    recomputed_tokens=reuse.recomputed_tokens,
                    reuse_tier_tokens=dict(reuse.tier_tokens),
                    reuse_load_ms=reuse.load_ms,
                    kv_bytes=self.method.kv_bytes(session.cache),
                    peak_mem_bytes=self.memory.peak_bytes(),
                    peak_kv_bytes=peak_kv,
                    prefill_ms=prefill_ms,
                    ttft_ms=ttft_ms,
                    decode_ms_per_token=decode_ms / decode_steps if decode_steps else float("nan"),
                    truncated_tokens=prepared.truncated_tokens,
                    corrupt_blocks=reuse.corrupt_blocks,
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
