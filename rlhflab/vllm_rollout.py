"""Rollouts sampled by vLLM on the policy's GPU: `rl.rollout_engine` (auto | hf | vllm).

On a GPU, transformers' `generate` leaves most of the chip idle; every RL library users would
pick samples with vLLM instead (TRL's `use_vllm` colocate mode, OpenRLHF, verl). Here a vLLM
engine shares the process and the GPU with the policy ("colocated"), and:

- it is sent the policy's current weights immediately before every rollout (`sample`), so
  it can never sample from stale weights, after an update or after a resume alike; a LoRA
  policy's adapters are merged into the weights sent, out of place (the trained weights and
  the adapter-off reference are untouched);
- it returns token ids only, as the same `Sampled` that rollout.sample returns (lower=None,
  so scoring recomputes the frozen blocks). The log-probs that training uses are always
  recomputed by the policy in rollout.score_rollout: vLLM's own log-probs are never asked for;
- each request is seeded from the run's torch generator (seeded per rank from the run seed,
  saved in checkpoints), so a run repeats and a resumed run continues the same stream.

vLLM is an optional extra (`pip install rlhflab[vllm]`); nothing here imports it until an
engine is built, and everything but the engine itself is tested on CPU with a stand-in that
has vLLM's interface (tests/unit/test_rollout_engine.py). The held-out evaluations keep
sampling with transformers (rlhflab/stages/rl.py), so they compare across engines.

The vLLM calls follow vLLM 0.32's own source (vllm/entrypoints/llm.py: `LLM.generate` takes
`{"prompt_token_ids": ...}` prompts with one SamplingParams per prompt, `LLM.apply_model(func)`
runs func on the model inside each worker, `LLM.reset_prefix_cache()`) and TRL's colocate mode
(GRPOTrainer._move_model_to_vllm: `model.load_weights([(name, tensor)])` with transformers'
parameter names, a merged LoRA with the `base_model.model.` prefix and `.base_layer` removed,
then `reset_prefix_cache()` because cached prefixes hold the old weights' keys and values).
"""

from __future__ import annotations

import functools
import importlib
import os
import tempfile
from typing import Any, Callable

import torch

from rlhflab.errors import RlhfLabError
from rlhflab.rollout import Sampled

ENGINES = ("auto", "hf", "vllm")
INSTALL = "`pip install vllm` (or `pip install rlhflab[vllm]`)"


@functools.cache
def vllm_importable() -> bool:
    """True when `import vllm` works (imported once; it takes seconds, so only GPU runs ask)."""
    try:
        importlib.import_module("vllm")
    except Exception:  # noqa: BLE001 - a broken install is as good as none: auto falls back to hf
        return False
    return True


def resolve_rollout_engine(setting: str, *, device_type: str, processes: int = 1,
                           vllm_available: Callable[[], bool] = vllm_importable) -> str:
    """"hf" or "vllm" for `rl.rollout_engine` = `setting` on a run whose device is `device_type`
    ("cuda", "cpu", ...) with `processes` processes.

    auto: vllm when the run is on CUDA in one process and `vllm_available()` (asked only then),
    else hf. vllm asked for explicitly where it cannot run raises RlhfLabError saying what to do.
    One process only: each process would need its own engine placed on its own GPU, which
    this wiring does not do yet."""
    if setting not in ENGINES:
        raise RlhfLabError(f"rl.rollout_engine must be one of {', '.join(ENGINES)}; got {setting!r}.")
    if setting == "hf":
        return "hf"
    cuda = device_type == "cuda"
    if setting == "auto":
        return "vllm" if cuda and processes == 1 and vllm_available() else "hf"
    if not cuda:
        raise RlhfLabError(f"rl.rollout_engine=vllm needs a CUDA GPU, but this run is on {device_type}; "
                           f"use rl.rollout_engine=hf (or auto).")
    if processes != 1:
        raise RlhfLabError(f"rl.rollout_engine=vllm runs in one process, but this run has {processes}; "
                           f"use rl.rollout_engine=hf (or auto) under accelerate launch.")
    if not vllm_available():
        raise RlhfLabError(f"rl.rollout_engine=vllm but vLLM is not installed: {INSTALL}, "
                           f"or use rl.rollout_engine=hf.")
    return "vllm"


def sampling_settings(*, max_new_tokens: int, temperature: float, top_k: int, top_p: float, stop_ids: list[int],
                      seed: int) -> dict[str, Any]:
    """vLLM SamplingParams keywords for one request, the same distribution rollout.sample draws from.

    top_k 0 is "no top-k" in rlhflab (transformers' meaning); vLLM's off is -1 (vLLM 0.32 also
    takes 0, older releases only -1). The response stops exactly at `stop_ids`, as
    rollout.sample's does: ignore_eos keeps vLLM from also stopping at EOS ids of the model's
    generation config that rlhflab does not stop at (stop_token_ids still end it, and the stop
    token stays in the returned ids). No log-probs are asked for: training recomputes them."""
    return dict(n=1, temperature=temperature, top_k=top_k if top_k > 0 else -1, top_p=top_p, max_tokens=max_new_tokens,
                stop_token_ids=list(stop_ids), ignore_eos=True, seed=seed, logprobs=None, detokenize=False)


def policy_weights(policy) -> dict[str, torch.Tensor]:
    """The policy's causal LM as a transformers checkpoint holds it: state_dict names -> tensors,
    without the value head. For a LoRA policy every adapted weight is W + the adapter's delta
    (peft's get_delta_weight, scale included), computed out of place: the names and values that
    `merge_and_unload()` would save, while the policy keeps training the unmerged adapter."""
    if not policy.lora:
        return dict(policy.model.state_dict())
    from peft.tuners.lora import LoraLayer

    lm = policy.lm  # the transformers model with LoRA layers injected
    deltas: dict[str, torch.Tensor] = {}
    for name, module in lm.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            adapters = [a for a in module.active_adapters if a in module.lora_A or a in module.lora_embedding_A]
            if adapters:
                deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in adapters)
    weights = {}
    for name, value in lm.state_dict().items():
        if ".lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        weights[name] = value + deltas[name].to(value.dtype) if name in deltas else value
    return weights


def load_into(model, weights: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Run inside vLLM's worker: load `weights` into its model; return the names of the model's
    parameters that were not loaded (an engine built with dummy weights must get every one)."""
    loaded = model.load_weights(weights)
    if loaded is None:  # a model class that does not report what it loaded
        return []
    return sorted({name for name, _ in model.named_parameters()} - set(loaded))


class VllmRollout:
    """A colocated vLLM engine that samples rollouts from the policy's current weights.

    `make_llm()` builds the engine (vllm.LLM or a stand-in with its `generate`, `apply_model` and
    `reset_prefix_cache`) on first use, so a resumed run builds it after its weights are loaded;
    `params` is vllm.SamplingParams (or a stand-in taking the same keywords)."""

    def __init__(self, make_llm: Callable[[], Any], params: Callable[..., Any], tokenizer, *, max_new_tokens: int,
                 temperature: float, top_k: int, top_p: float, stop_ids: list[int]):
        self._make_llm, self._llm, self.params, self.tokenizer = make_llm, None, params, tokenizer
        self.settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             stop_ids=list(stop_ids))
        self.pushes = 0  # weight pushes so far (one per rollout)

    @property
    def llm(self):
        if self._llm is None:
            self._llm = self._make_llm()
        return self._llm

    def push_weights(self, policy) -> None:
        """Send the policy's current weights (policy_weights) into the engine and drop its prefix
        cache. Raises RlhfLabError when the engine's model has parameters the policy did not fill."""
        weights = list(policy_weights(policy).items())
        results = self.llm.apply_model(functools.partial(load_into, weights=weights))
        missing = sorted({name for result in results for name in result or ()})
        if missing:
            raise RlhfLabError(f"vLLM's model has weights the policy does not: {', '.join(missing[:5])}"
                               f"{' ...' if len(missing) > 5 else ''}; use rl.rollout_engine=hf for this model.")
        self.llm.reset_prefix_cache()
        self.pushes += 1

    @torch.no_grad()
    def sample(self, policy, prompts: list[str]) -> Sampled:
        """Push the policy's weights, then sample one response per prompt.

        Returns Sampled: sequences (B, P + R) = the prompts left-padded to width P as
        rollout.sample pads them, then each response's token ids (through its stop token)
        padded with the pad token to the longest, R >= 1; prompt_mask (B, P); lower None."""
        self.push_weights(policy)
        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        prompt_ids = [row[mask.bool()].tolist() for row, mask in zip(enc.input_ids, enc.attention_mask)]
        # One seed per request (identical prompts, as GRPO repeats them, must not share one),
        # drawn from torch's CPU generator: the run's seeded stream, restored on resume.
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
        params = [self.params(**sampling_settings(**self.settings, seed=seed)) for seed in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        responses = [list(output.outputs[0].token_ids) for output in outputs]
        response = torch.full((len(prompts), max([1, *map(len, responses)])), tokenizer.pad_token_id, dtype=enc.input_ids.dtype)
        for row, ids in zip(response, responses):
            row[: len(ids)] = torch.tensor(ids, dtype=row.dtype)
        device = next(policy.model.parameters()).device
        sequences = torch.cat([enc.input_ids, response], dim=1).to(device)
        return Sampled(sequences, enc.attention_mask.to(device), enc.input_ids.shape[1], None)


def build_vllm_rollout(policy, tokenizer, *, precision: str, gpu_memory_utilization: float, max_model_len: int,
                       seed: int, **settings) -> VllmRollout:
    """A VllmRollout whose engine is vllm.LLM on this process's GPU, built on first use.

    The engine starts from dummy weights (the first push fills every one, and load_into
    checks that), so only the config and tokenizer are written, to a temporary folder: the
    policy may come from a GGUF file that vLLM cannot read. `precision` ("bf16", "fp16", "no")
    is the run's; vLLM's weights take the matching dtype so it samples what the policy computes."""
    # In-process engine core: apply_model then calls the worker directly and the weights are
    # passed by reference instead of serialised to an engine process (vllm/envs.py, default 1).
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams

    folder = tempfile.TemporaryDirectory(prefix="rlhflab-vllm-")

    def make_llm():
        policy.lm.config.save_pretrained(folder.name)
        tokenizer.save_pretrained(folder.name)
        dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")
        llm = LLM(model=folder.name, load_format="dummy", dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                  max_model_len=max_model_len, seed=seed)
        llm._rlhflab_folder = folder  # the folder lives as long as the engine
        return llm

    return VllmRollout(make_llm, SamplingParams, tokenizer, **settings)

