"""Load any causal LM (bundled name, hub id, local folder or run directory) with its tokenizer."""

from __future__ import annotations

from typing import Any

from rlhflab.assets import resolve_model
from rlhflab.errors import RlhfLabError


def load_causal_lm(name: str, **kwargs: Any):
    """Return `(model, tokenizer)`; the tokenizer always has a pad token."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration" in str(exc) or "does not recognize" in str(exc):
            raise RlhfLabError(
                f"{name} is not a causal language model ({str(exc).splitlines()[0][:200]}). "
                f"Use a decoder-only LM such as smollm2-135m or gpt2."
            ) from None
        raise RlhfLabError(f"Could not load model {name}: {str(exc).splitlines()[0][:300]}") from None
    except OSError as exc:
        raise RlhfLabError(_load_failure(name, path, exc)) from None
    return model, load_tokenizer(name, path)


def load_tokenizer(name: str, path: str | None = None):
    from transformers import AutoTokenizer

    path = path or resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise RlhfLabError(_load_failure(name, path, exc)) from None
    if tokenizer.pad_token is None:
        # GPT-2 has no pad token. Padding is always tracked through the attention mask, so
        # reusing EOS is safe: a real EOS is never mistaken for padding.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_failure(name: str, path: str, exc: Exception) -> str:
    first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return (
        f"Could not load {name!r} (from {path}): {first}. Pass a bundled model (smollm2-135m), a local "
        f"folder with config.json, or a hub id while online."
    )


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def with_lora(model, lora, *, dropout: float | None = None):
    """Wrap a causal LM with peft LoRA adapters (`lora` is a LoraConfig section of the config)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout if dropout is None else dropout,
        target_modules=lora.target_modules or "all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
