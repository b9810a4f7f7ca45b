"""Reward models: any encoder or causal LM with a scalar head, plus score normalisation.

One head for every objective: a single output, read as the log-odds that a text is good
(labels, trained with binary cross-entropy) or as a Bradley-Terry score (pairs). Either way
it is saved as a plain `AutoModelForSequenceClassification` with `num_labels=1` and the label
name POSITIVE, and `rlhflab_reward.json` beside it holds the gain and bias that give scores
mean 0 and std 1 on a reference set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from rlhflab.assets import hub_options, resolve_model
from rlhflab.errors import RlhfLabError
from rlhflab.io import atomic_dir, read_json
from rlhflab.models.blocks import freeze_all_but_blocks, resolve_block_indices, transformer_blocks
from rlhflab.models.causal_lm import load_model_config, load_tokenizer, load_weights, refuse_steering

POSITIVE = "POSITIVE"
META_FILE = "rlhflab_reward.json"


@dataclass(frozen=True)
class RewardMeta:
    objective: str  # labels | pairs
    gain: float  # normalised score = gain * raw + bias
    bias: float
    reference: str  # which texts set gain and bias
    base_model: str
    # Tokens per text in training (reward.max_length): scoring reads no more, since a head trained on
    # 256 tokens judges a 512-token text by patterns it never saw. None: not recorded (older models).
    max_length: int | None = None
    # How training cut longer texts (reward.truncation): "head" or "head+tail".
    truncation: str = "head"


def load_reward_backbone(name: str):
    """(model with a fresh one-output head, tokenizer) from an encoder, a causal LM, or a run (an
    ILQL run's plain LM: its heads do not load here, and a `@beta=` name is refused)."""
    from transformers import AutoModelForSequenceClassification

    refuse_steering(name, "reward.model")
    path = resolve_model(name)
    options = hub_options(name, path)
    tokenizer = load_tokenizer(name, path, options)
    config = load_model_config(name, path, options, hint="Use a BERT-family encoder (minilm-l6) or a causal LM (smollm2-135m).")
    config.num_labels = 1
    config.id2label, config.label2id = {0: POSITIVE}, {POSITIVE: 0}
    config.problem_type = None
    if getattr(config, "pad_token_id", None) is None:
        # Decoder classifiers pool the last non-pad token, so they must know the pad id.
        config.pad_token_id = tokenizer.pad_token_id
    try:
        # ignore_mismatched_sizes: a classifier with another label count (say 2) gets a new head.
        model = load_weights(AutoModelForSequenceClassification, name, path, config=config,
                             ignore_mismatched_sizes=True, **options)
    except ValueError as exc:
        raise RlhfLabError(
            f"reward.model {name!r} cannot take a classification head ({str(exc).splitlines()[0][:200]}). "
            f"Use a BERT-family encoder (minilm-l6, bert-base-uncased) or a causal LM (smollm2-135m, gpt2)."
        ) from None
    return model, tokenizer


# The attention a reward model trains with on a CPU (see `use_matmul_attention`).
MATMUL_ATTENTION = "rlhflab_matmul"
# Longer keys go to sdpa: its memory grows with T, the (T, T) scores' with T^2 - at 32 x 256 they
# held 0.7 GB more (reward stage peak 3.3 GB) for a step about 12 % faster; at 192 keys matmul is
# 2x faster than sdpa (0.74 against 1.44 s a step).
MATMUL_MAX_KEYS = 224


def matmul_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_kwargs):
    """Softmax attention as two matmuls, in the dtype of the scores (bf16 under autocast); sdpa
    beyond MATMUL_MAX_KEYS keys.

    query, key, value: (batch, heads, T, head_dim); attention_mask: None or bool (batch, 1, T, T),
    True where a query may attend (transformers' sdpa mask, None when nothing is padded).
    Returns ((batch, T, heads, head_dim), None), as transformers' attention functions do.

    Why: torch's CPU flash-attention backward runs MiniLM's 32-wide heads at a few percent of
    the bf16 matmul rate (0.6 of 1.45 s of a 32 x 256 training step on the 2-core host), and
    transformers' own eager attention adds an fp32 mask, which turns the (batch, heads, T, T)
    scores and their gradients into fp32."""
    if key.shape[2] > MATMUL_MAX_KEYS:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **_kwargs)
    # Scale the (T, head_dim) queries, not the (T, T) scores; mask by adding a constant bias, whose
    # backward is free (masked_fill's is another pass over the scores' gradient).
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scale, key.transpose(2, 3))
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            bias = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device)
            bias.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
        else:  # already additive (0 or a large negative number)
            bias = attention_mask.to(scores.dtype).clamp_min(torch.finfo(scores.dtype).min)
        scores = scores + bias
    probs = torch.nn.functional.softmax(scores, dim=-1)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def use_matmul_attention(model) -> bool:
    """Switch an encoder whose attention goes through transformers' attention interface (BERT,
    MiniLM, ...) to `matmul_attention`; returns whether it did. Decoders (any module with
    `is_causal` set) and models with their own attention code keep theirs. Switch back with `model.set_attn_implementation("sdpa")`
    before saving, so the saved config names an attention every transformers install has."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if getattr(model.config, "is_decoder", False) or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    if any(getattr(module, "is_causal", False) for module in model.modules()):
        return False  # causal attention (and grouped key/value heads) stays with sdpa
    AttentionInterface.register(MATMUL_ATTENTION, matmul_attention)
    AttentionMaskInterface.register(MATMUL_ATTENTION, sdpa_mask)  # a bool mask, skipped when nothing is padded
    try:
        model.set_attn_implementation(MATMUL_ATTENTION)
    except (ValueError, AttributeError):  # a model class that does not dispatch through the interface
        return False
    return True


def head_parameters(model):
    """Weights outside the transformer body: the scalar head, plus BERT's pooler that feeds it."""
    prefix = model.base_model_prefix + "."
    for name, param in model.named_parameters():
        if not name.startswith(prefix) or ".pooler." in f".{name}":
            yield param


def configure_trainable(model, trainable) -> None:
    """"head", "all", or block indices trained together with the head."""
    if trainable == "all":
        model.requires_grad_(True)
        return
    if trainable == "head":
        model.requires_grad_(False)
    else:
        freeze_all_but_blocks(model, resolve_block_indices(trainable, len(transformer_blocks(model)), "reward.trainable"))
    for param in head_parameters(model):
        param.requires_grad_(True)


def save_reward_model(model, tokenizer, meta: RewardMeta, folder: Path) -> None:
    import json

    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n", encoding="utf-8")


def reward_model_dir(path: str | Path) -> Path | None:
    """The model folder of a trained reward model (a run directory or its model/), else None."""
    path = Path(path).expanduser()
    for folder in (path, path / "model"):
        if (folder / META_FILE).exists():
            return folder
    return None


def load_reward_model(path: str | Path):
    """(model, tokenizer, meta) of a reward model this package trained."""
    from transformers import AutoModelForSequenceClassification

    folder = reward_model_dir(path)
    if folder is None:
        raise RlhfLabError(
            f"{path} is not a reward model trained by rlhflab (no {META_FILE} in it or in its model/). "
            f"Train one with `rlhflab reward`, or use a classifier with reward.kind=classifier."
        )
    meta = RewardMeta(**read_json(folder / META_FILE))
    if meta.max_length is None:
        meta = replace(meta, max_length=_length_from_run_config(folder))
    try:
        model = load_weights(AutoModelForSequenceClassification, str(path), str(folder))
    except ValueError as exc:
        raise RlhfLabError(f"Could not load the reward model in {folder}: {str(exc).splitlines()[0][:200]}") from None
    return model, load_tokenizer(str(folder), str(folder)), meta


def _length_from_run_config(folder: Path) -> int | None:
    """reward.max_length from the config.yaml of the run stage that saved `folder` (models saved
    before the length was recorded beside them), else None."""
    import yaml

    try:
        settings = yaml.safe_load((folder.parent / "config.yaml").read_text(encoding="utf-8"))
        length = settings["reward"]["max_length"]
    except (OSError, yaml.YAMLError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return length if isinstance(length, int) and not isinstance(length, bool) and length >= 2 else None


def load_classifier(name: str):
    """(model, tokenizer) of any text classifier: hub id, local folder or bundled name."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(name)
    options = hub_options(name, path)
    try:
        model = load_weights(AutoModelForSequenceClassification, name, path, **options)
    except ValueError as exc:
        raise RlhfLabError(
            f"Could not load the classifier {name!r} ({str(exc).splitlines()[0][:200]}). Pass a local folder, "
            f"a hub id while online, or a reward run directory."
        ) from None
    # A causal LM (an SFT run) or a bare encoder loads too, with a freshly initialised, random head.
    architectures = getattr(model.config, "architectures", None) or []
    if architectures and not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise RlhfLabError(
            f"{name} is not a text classifier (its config.json says {', '.join(map(str, architectures))}), so its "
            f"classification head would be random weights. Pass a classifier (...ForSequenceClassification) or a "
            f"reward run directory, or train one with `rlhflab reward`.")
    return model, load_tokenizer(name, path, options)
