"""The one record type the data layer hands to the rest of rlhflab."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Review:
    """One piece of text and its sentiment: 1 = positive, 0 = negative, None = unlabelled."""

    text: str
    label: int | None


def join_prompt_response(prompt: str, response: str) -> str:
    """The text a reward model reads for a prompt and its continuation.

    Responses continue the prompt mid-sentence, so they are joined with one space unless
    either side already brings the whitespace.
    """
    if not prompt:
        return response
    if not response or prompt[-1].isspace() or response[0].isspace():
        return prompt + response
    return f"{prompt} {response}"
