"""The one record type the data layer hands to the rest of rlhflab."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Review:
    """One piece of text and its sentiment: 1 = positive, 0 = negative, None = unlabelled.

    `prompt` is set when the text answers a prompt (a `prompt` column, as labelling exports
    write): a reward model then reads prompt + text, cutting the prompt, never the text."""

    text: str
    label: int | None
    prompt: str = ""


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
