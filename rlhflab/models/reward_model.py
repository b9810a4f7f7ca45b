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


def save_reward_model(model, tokenizer, meta: RewardMeta, folder: Path, state: dict | None = None) -> None:
    """`state`: the model's whole state dict when it is FSDP-sharded (rlhflab/engine/sharding.py)."""
    import json

    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, state_dict=state)
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
