"""Load any causal LM (bundled name, hub id, local folder or run directory) with its tokenizer, and sample from it."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path
from typing import Any

from rlhflab.assets import BETA_SUFFIX, BUNDLED_HINT, hub_options, resolve_model, split_beta
from rlhflab.errors import RlhfLabError

# Encoder families that transformers can still load as a causal LM (BertLMHeadModel, ...) when
# their config says is_decoder; without it they are bidirectional encoders and train silently wrong.
ENCODER_FAMILIES = {
    "albert", "bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "deberta", "deberta-v2",
    "distilbert", "electra", "ernie", "megatron-bert", "mobilebert", "modernbert", "mpnet", "nezha", "rembert",
    "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm-roberta", "xlm-roberta-xl", "xmod",
}


def load_causal_lm(name: str, *, steering: bool = True, **kwargs: Any):
    """Return `(model, tokenizer)`; the tokenizer always has a pad token. An ILQL run's model is
    steered by its heads; with `steering` False (a training stage's starting model) it is the plain
    LM, and a `name@beta=` is refused (see `refuse_steering`).

    Raises RlhfLabError for a missing, unreachable or corrupt model, and for a model that is
    not a decoder-only LM (an encoder such as BERT, an encoder-decoder such as T5).
    """
    from transformers import AutoModelForCausalLM

    from rlhflab.models.attention import use_matmul_attention
    from rlhflab.models.snapshot import is_snapshot, load_snapshot

    if not steering:
        refuse_steering(name)
    name, beta = split_beta(name)
    if is_snapshot(name):  # an RL run's per-epoch snapshot: its base model plus what training changed
        return load_snapshot(name, **kwargs)
    path = resolve_model(name)
    options = hub_options(name, path)
    config = load_model_config(name, path, options)
    check_decoder_only(name, config)
    try:
        model = load_weights(AutoModelForCausalLM, name, path, config=config, **options, **kwargs)
    except ValueError as exc:
        raise RlhfLabError(f"Could not load model {name}: {_first_line(exc)}") from None
    # Training and scoring forwards on a CPU attend with two matmuls (sdpa's CPU backward is slow
    # on short sequences; rlhflab/models/attention.py); decode steps and GPUs keep sdpa.
    use_matmul_attention(model)
    if steering:
        _steer_if_ilql(model, name, path, beta)
    return model, load_tokenizer(name, path, options)


def refuse_steering(name: str, key: str | None = None) -> None:
    """Refuse `name@beta=` as the model a stage trains (`key`: the setting naming it). Training
    would sample from the steered distribution while the saved model drops the steering, so
    training starts from the ILQL run's plain LM."""
    base, beta = split_beta(name)
    if beta is not None:
        setting = f"{key}=" if key else ""
        raise RlhfLabError(f"{setting}{name} asks for ILQL steering, which training does not use: drop the {BETA_SUFFIX}{beta:g} "
                           f"part ({setting}{base}); training starts from the plain language model of that ILQL run.")


def _steer_if_ilql(model, name: str, path: str, beta: float | None) -> None:
    """An ILQL run's model folder holds Q and V heads: generation is then steered by β·(Q − V),
    β from `name@beta=` or else the one the run saved (rlhflab/models/ilql.py)."""
    from rlhflab.models.ilql import attach_steering, load_heads

    loaded = load_heads(Path(path), model.get_output_embeddings()) if Path(path).is_dir() else None
    if loaded is None:
        if beta is not None:
            raise RlhfLabError(f"{name} has no ILQL heads, so {BETA_SUFFIX}{beta:g} does not apply; drop it, or "
                               f"name an ILQL run (runs/<name>/ilql).")
        return
    heads, default, top_k = loaded
    attach_steering(model, heads, default if beta is None else beta, top_k)


def load_model_config(name: str, path: str, options: dict | None = None, *,
                      hint: str = "Use a decoder-only LM such as smollm2-135m or gpt2."):
    """The model's transformers config; RlhfLabError when there is none or it is not understood."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, **(options or {}))
    except ValueError as exc:  # an unknown model_type or a config.json that is not a model config
        raise RlhfLabError(f"{name} is not a model transformers understands ({_first_line(exc)[:200]}). {hint}") from None
    except OSError as exc:
        raise RlhfLabError(_load_failure(name, path, exc)) from None


def check_decoder_only(name: str, config) -> None:
    """Refuse configs that are not decoder-only causal LMs, before any weights load."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    kind = config.model_type
    hint = "use a decoder-only LM such as smollm2-135m or gpt2"
    if kind in ENCODER_FAMILIES and not getattr(config, "is_decoder", False):
        raise RlhfLabError(f"{name} is an encoder ({kind}), not a causal language model; {hint}.")
    if getattr(config, "is_encoder_decoder", False):
        raise RlhfLabError(f"{name} is an encoder-decoder ({kind}), not a causal language model; {hint}.")
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise RlhfLabError(f"{name} ({kind}) is not a causal language model; {hint}.")


def load_weights(auto_class, name: str, path: str, **kwargs: Any):
    """`auto_class.from_pretrained(path)`, with a corrupt weights file or a load failure as RlhfLabError.

    A pickled `.bin` that torch's safe loader refuses (it would run code, or it is not a tensor
    file at all) is an RlhfLabError too; see `refuse_unsafe_pickles`. ValueError (a model that
    does not fit `auto_class`) passes through for the caller to explain.
    """
    from safetensors import SafetensorError

    try:
        with refuse_unsafe_pickles():
            return auto_class.from_pretrained(path, **kwargs)
    except SafetensorError as exc:
        raise RlhfLabError(
            f"{_corrupt_file(path)} is corrupt ({_first_line(exc)}); re-save or re-download the model."
        ) from None
    except OSError as exc:
        raise RlhfLabError(_load_failure(name, path, exc)) from None


@contextlib.contextmanager
def refuse_unsafe_pickles():
    """Turn an error raised inside `torch.load` (which transformers and peft call with
    weights_only=True for `.bin` weights) into one RlhfLabError naming the file.

    torch's safe unpickler refuses a pickle that would call a function (a `__reduce__` that runs
    code), and random bytes fail in it too; either way nothing of the file ran, and the user gets
    how to convert it instead of a 40-line UnpicklingError. Errors from anywhere else (and file
    system errors) pass through unchanged.
    """
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol before refusing the file: the refusal says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            yield
    except Exception as exc:
        refused = _torch_load_failure(exc)
        if refused is None:
            raise
        raise RlhfLabError(refused) from None


def _torch_load_failure(exc: BaseException) -> str | None:
    """The message for `exc` when it (or an error it wraps: transformers 4 re-raised these as
    OSError) was raised inside torch.load; None otherwise."""
    import torch.serialization

    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code is torch.serialization.load.__code__:
                if isinstance(error, OSError):
                    return None  # the file could not be opened: not a question of its content
                return _refusal(tb.tb_frame.f_locals.get("f"), error)
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    return None


def _refusal(file: Any, error: BaseException) -> str:
    file = os.fspath(file) if isinstance(file, (str, os.PathLike)) else "pytorch_model.bin"  # read from a stream
    # torch's reason is one sentence of its long text, among advice on weights_only and allowlisting
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    reasons = [p for p in paragraphs if not p.startswith(boilerplate)] or paragraphs or [type(error).__name__]
    reason = re.split(r"(?<=\.)\s", " ".join(reasons[0].split()))[0][:160].rstrip(".")
    name = Path(file).name
    target = Path(file).with_name(name.replace("pytorch_model", "model").removesuffix(".bin") + ".safetensors")
    convert = (f"python -c \"import torch; from safetensors.torch import save_file; save_file({{k: v.clone().contiguous() "
               f"for k, v in torch.load('{file}', weights_only=False).items()}}, '{target}')\"")
    return (f"{file} is not a plain tensor file (torch's safe loader refused it: {reason}), so it was not loaded and "
            f"nothing in it ran. A pickled .bin can run code when loaded: get the model as .safetensors, or, only if "
            f"you trust where the file came from, convert it once with {convert} and delete the .bin. If it should "
            f"be plain weights, it is corrupt: re-save or re-download it.")


def load_tokenizer(name: str, path: str | None = None, options: dict | None = None):
    from transformers import AutoTokenizer

    from rlhflab.models.snapshot import is_snapshot, snapshot_base

    name = split_beta(name)[0]
    if path is None and is_snapshot(name):
        return load_tokenizer(snapshot_base(name))
    path = path or resolve_model(name)
    options = hub_options(name, path) if options is None else options
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **options)
    except (OSError, ValueError) as exc:
        raise RlhfLabError(_load_failure(name, path, exc)) from None
    if tokenizer.pad_token is None:
        # GPT-2 has no pad token. Padding is always tracked through the attention mask, so
        # reusing EOS is safe: a real EOS is never mistaken for padding.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def _corrupt_file(path: str) -> str:
    """The first unreadable .safetensors file in a local folder, else the folder itself."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError):
            return str(file)
    return f"A weights file of {path}"


def _load_failure(name: str, path: str, exc: Exception) -> str:
    return f"Could not load {name!r} (from {path}): {_first_line(exc)}. Pass {BUNDLED_HINT}, or a hub id while online."


def sample_tokens(model, input_ids, attention_mask, *, max_new_tokens: int,
                  temperature: float, top_k: int, top_p: float, pad_token_id: int, eos_token_id: list[int] | None,
                  **outputs: Any):
    """Sample with exactly these settings (top_k 0 and top_p 1 turn them off).

    Returns (B, P + R') token ids, R' <= max_new_tokens, or generate's output object when
    `outputs` asks for one (output_scores=True, return_dict_in_generate=True). Pure sampling
    (no top-k/top-p, no outputs) runs rlhflab's decode loop (rlhflab/models/sampling.py: the
    same distribution, 1.6x the tokens/s of `generate` on a CPU); the rest goes through
    `model.generate`. Nothing of the model folder's generation_config.json (repetition_penalty,
    bad_words_ids, ...) applies.
    """
    import torch
    from transformers import GenerationConfig

    if not top_k and top_p >= 1.0 and not outputs:
        from rlhflab.models.sampling import decode

        return decode(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, temperature=temperature,
                      pad_token_id=pad_token_id, eos_token_id=eos_token_id)

    config = GenerationConfig(
        do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
        min_new_tokens=0, pad_token_id=pad_token_id, eos_token_id=eos_token_id, use_cache=True, **outputs,
    )
    # generate() fills every setting our config leaves unset from `model.generation_config`, even
    # when a config is passed, so while sampling that is ours too. Under peft the setting lives on
    # the transformers model inside.
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = lm.generation_config
    lm.generation_config = config
    try:
        with torch.no_grad():
            return model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    finally:
        lm.generation_config = own


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
