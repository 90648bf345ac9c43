"""Split a model's chat template into the pieces a cached conversation is fed in.

A KV episode feeds a shared context once, then one query per turn. With a chat template the context is the start
of the first user message, a query completes a user message and opens the assistant's reply, and a follow-up
turn closes the previous reply and opens a new user message. Rendering the template around sentinel strings and
cutting at them gives exactly those pieces for any template (the approach SCBench uses), with no per-model code.
"""

from __future__ import annotations

from typing import Any

_CUT = "\u2063CBCUT\u2063"
_ANSWER = "\u2063CBANSWER\u2063"


class ChatFormat:
    """Text pieces for context, first-turn query and follow-up turns; plain text when there is no template."""

    def __init__(self, tokenizer: Any) -> None:
        self.uses_template = bool(getattr(tokenizer, "chat_template", None))
        if not self.uses_template:
            self._context_head = ""
            self._query_tail = "\nAnswer: "
            self._followup_join = "\n\n"
            return
        render = tokenizer.apply_chat_template

        def text(messages: list[dict[str, str]], generation: bool) -> str:
            return render(messages, tokenize=False, add_generation_prompt=generation)

        self._context_head = text([{"role": "user", "content": _CUT}], False).split(_CUT)[0]
        self._query_tail = text([{"role": "user", "content": _CUT}], True).split(_CUT)[1]
        conversation = text(
            [
                {"role": "user", "content": "question"},
                {"role": "assistant", "content": _ANSWER},
                {"role": "user", "content": _CUT},
            ],
            True,
        )
        after_answer = conversation.split(_ANSWER)[1]
        join, tail = after_answer.split(_CUT)
        if tail != self._query_tail:
            raise ValueError("chat template renders the end of a user turn differently in follow-ups")
        self._followup_join = join

    def context(self, context: str) -> str:
        """The conversation's start up to the end of the shared context, inside the first user message."""
        return self._context_head + context

    def query(self, query: str) -> str:
        """Completes the user message the context opened, then opens the assistant reply."""
        return query + self._query_tail

    def followup(self, query: str) -> str:
        """After an assistant reply: closes it, adds a new user message, opens the next reply."""
        return self._followup_join + query + self._query_tail
