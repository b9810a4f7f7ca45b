"""rl.rollout_engine (auto | hf | vllm) and the vLLM weight-push contract, on CPU without vLLM.

vLLM itself is stood in for by FakeLLM, which has the interface rlhflab uses (`generate` with
token-id prompts and one SamplingParams per prompt, `apply_model`, `reset_prefix_cache`) and a
model with vLLM's `load_weights`; it records every weight it is sent.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from rlhflab.config import Config, DataConfig, PpoConfig, RewardFnConfig, load_config, resolve_rl
from rlhflab.errors import RlhfLabError
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.models.policy import build_policy, position_ids_for
from rlhflab.rollout import score_rollout
from rlhflab.vllm_rollout import VllmRollout, policy_weights, resolve_rollout_engine, sampling_settings
from tests.helpers import FP32

PROMPTS = ["the film was", "a dull plot and", "the cast", "it was great and the ending"]
NO_AUTOCAST = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731


def _never() -> bool:
    raise AssertionError("vLLM was looked for where the run cannot use it")


# --- resolution -------------------------------------------------------------------------------
@pytest.mark.parametrize(("setting", "device", "processes", "installed", "expected"), [
    ("auto", "cuda", 1, True, "vllm"),
    ("auto", "cuda", 1, False, "hf"),
    ("auto", "cuda", 2, True, "hf"),
    ("auto", "cpu", 1, True, "hf"),
    ("hf", "cuda", 1, True, "hf"),
    ("vllm", "cuda", 1, True, "vllm"),
])
def test_the_engine_resolves_from_setting_device_and_install(setting, device, processes, installed, expected):
    assert resolve_rollout_engine(setting, device_type=device, processes=processes,
                                  vllm_available=lambda: installed) == expected


def test_auto_on_cpu_and_hf_never_look_for_vllm():
    assert resolve_rollout_engine("auto", device_type="cpu", vllm_available=_never) == "hf"
    assert resolve_rollout_engine("hf", device_type="cuda", vllm_available=_never) == "hf"


@pytest.mark.parametrize(("device", "processes", "installed", "fragments"), [
    ("cuda", 1, False, ("not installed", "pip install vllm", "rl.rollout_engine=hf")),
    ("cpu", 1, True, ("needs a CUDA GPU", "cpu", "rl.rollout_engine=hf")),
    ("cuda", 2, True, ("one process", "2", "rl.rollout_engine=hf")),
])
def test_vllm_asked_for_where_it_cannot_run_is_one_clear_line(device, processes, installed, fragments):
    with pytest.raises(RlhfLabError) as caught:
        resolve_rollout_engine("vllm", device_type=device, processes=processes, vllm_available=lambda: installed)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_the_config_takes_the_engine_settings_and_refuses_others():
    cfg = load_config(None, ["rl.rollout_engine=vllm", "ppo.vllm_gpu_memory_utilization=1"])
    assert cfg.rl.rollout_engine == "vllm" and cfg.ppo.vllm_gpu_memory_utilization == 1
    assert load_config(None, []).rl.rollout_engine == "auto"
    for bad in ("rl.rollout_engine=gpu", "ppo.vllm_gpu_memory_utilization=0", "ppo.vllm_gpu_memory_utilization=1.5"):
        with pytest.raises(RlhfLabError, match=bad.split("=")[0].split(".")[1]):
            load_config(None, [bad])


def test_sampling_settings_map_top_k_off_and_stop_exactly_at_the_stop_ids():
    off = sampling_settings(max_new_tokens=24, temperature=0.7, top_k=0, top_p=1.0, stop_ids=[2, 13], seed=5)
    assert off == dict(n=1, temperature=0.7, top_k=-1, top_p=1.0, max_tokens=24, stop_token_ids=[2, 13],
                       ignore_eos=True, seed=5, logprobs=None, detokenize=False)
    assert sampling_settings(max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.9, stop_ids=[], seed=0)["top_k"] == 50


# --- the stand-in for vLLM --------------------------------------------------------------------
class FakeModel:
    """vLLM's model side: load_weights(iterable of (name, tensor)) -> the names it loaded."""

    def __init__(self, names):
        self.names = set(names)
        self.loads: list[dict[str, torch.Tensor]] = []

    def load_weights(self, weights):
        received = {name: tensor.detach().clone() for name, tensor in weights}
        self.loads.append(received)
        return set(received) & self.names

    def named_parameters(self):
        return [(name, None) for name in sorted(self.names)]


class FakeLLM:
    """vllm.LLM's interface as rlhflab uses it. Responses are random token ids (1..max_tokens of
    them) drawn from each request's own seed, each with a made-up log-prob of 0 that nothing may read."""

    def __init__(self, model: FakeModel, vocab: int):
        self.model, self.vocab = model, vocab
        self.requests: list[tuple[list, list]] = []
        self.responses: list[list[list[int]]] = []  # token ids returned, per generate call
        self.resets = 0

    def apply_model(self, func):
        return [func(self.model)]

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, prompts, params, use_tqdm=True):
        assert len(params) == len(prompts) and not use_tqdm
        self.requests.append((prompts, params))
        outputs = []
        for param in params:
            generator = torch.Generator().manual_seed(param["seed"])
            length = int(torch.randint(1, param["max_tokens"] + 1, (1,), generator=generator))
            ids = torch.randint(0, self.vocab, (length,), generator=generator).tolist()
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, logprobs=[{i: 0.0} for i in ids])]))
        self.responses.append([output.outputs[0].token_ids for output in outputs])
        return outputs


class _Lora:
    r, alpha, dropout, target_modules = 4, 8, 0.0, None


def tiny_policy(model_dir, trainable=(-2, -1)):
    model, tokenizer = load_causal_lm(str(model_dir))
    tokenizer.padding_side = "left"
    probe = tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    policy = build_policy(model, trainable if trainable == "lora" else list(trainable), _Lora(),
                          probe=(probe.input_ids, probe.attention_mask))
    return policy, tokenizer


def fake_engine(policy, tokenizer, max_new_tokens=6, extra_names=()):
    fake = FakeLLM(FakeModel([*policy_weights(policy), *extra_names]), len(tokenizer))
    built = []
    engine = VllmRollout(lambda: built.append(1) or fake, dict, tokenizer, max_new_tokens=max_new_tokens,
                         temperature=1.0, top_k=0, top_p=1.0, stop_ids=[tokenizer.eos_token_id])
    return engine, fake, built


# --- what is pushed -----------------------------------------------------------------------------
def test_the_pushed_weights_are_the_causal_lms_state_dict_without_the_value_head(tiny_llama_dir):
    policy, _ = tiny_policy(tiny_llama_dir)
    weights = policy_weights(policy)
    state = policy.model.state_dict()
    assert list(weights) == list(state)
    assert all(weights[name] is not None and torch.equal(weights[name], state[name]) for name in state)
    assert not any("value_head" in name or "linear" == name.split(".")[0] for name in weights)


def test_a_lora_policy_pushes_merged_weights_and_keeps_its_own(tiny_llama_dir):
    policy, _ = tiny_policy(tiny_llama_dir, "lora")
    with torch.no_grad():  # lora_B starts at zero: give the adapter a delta to merge
        for name, parameter in policy.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.1)
    own = {name: value.clone() for name, value in policy.model.state_dict().items()}
    weights = policy_weights(policy)
    merged = copy.deepcopy(policy.model).merge_and_unload().state_dict()
    assert set(weights) == set(merged)
    assert not any("lora_" in name or "base_layer" in name for name in weights)
    for name, value in merged.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-6)
    moved = [name for name in merged if "q_proj.weight" in name]
    base = {name.replace("base_model.model.", "").replace(".base_layer.", "."): value for name, value in own.items()}
    assert moved and all(not torch.equal(weights[name], base[name]) for name in moved)  # the deltas are in
    for name, value in policy.model.state_dict().items():
        assert torch.equal(value, own[name]), name  # the policy's adapter is not merged into it


def test_a_weight_the_engine_has_but_the_policy_does_not_is_a_clear_error(tiny_llama_dir):
    policy, tokenizer = tiny_policy(tiny_llama_dir)
    engine, _, _ = fake_engine(policy, tokenizer, extra_names=["model.extra.weight"])
    with pytest.raises(RlhfLabError, match="model.extra.weight.*rollout_engine=hf"):
        engine.push_weights(policy)


# --- sampling -----------------------------------------------------------------------------------
def test_vllm_samples_are_scored_by_the_policy_never_by_the_engine(tiny_llama_dir):
    policy, tokenizer = tiny_policy(tiny_llama_dir)
    engine, fake, built = fake_engine(policy, tokenizer)
    assert not built  # the engine is built at the first rollout, after any resume has loaded weights
    torch.manual_seed(3)
    sampled = engine.sample(policy, PROMPTS)
    assert built == [1] and engine.pushes == 1 and fake.resets == 1
    (prompts, params), responses = fake.requests[0], fake.responses[0]
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    # The prompts go in unpadded; the sequences are the left-padded prompts and the padded responses.
    assert [p["prompt_token_ids"] for p in prompts] == [row[m.bool()].tolist() for row, m in zip(enc.input_ids, enc.attention_mask)]
    assert sampled.width == enc.input_ids.shape[1] and sampled.lower is None
    assert torch.equal(sampled.sequences[:, : sampled.width], enc.input_ids)
    assert torch.equal(sampled.prompt_mask, enc.attention_mask)
    assert sampled.sequences.shape[1] == sampled.width + max(map(len, responses))
    for row, ids in zip(sampled.sequences[:, sampled.width :], responses):
        assert row[: len(ids)].tolist() == ids and set(row[len(ids) :].tolist()) <= {tokenizer.pad_token_id}
    # Distinct seeds per request, from the torch stream: the same stream gives the same requests.
    seeds = [p["seed"] for p in params]
    assert len(set(seeds)) == len(seeds) and all(p["top_k"] == -1 and p["logprobs"] is None for p in params)
    torch.manual_seed(3)
    again = engine.sample(policy, PROMPTS)
    assert torch.equal(again.sequences, sampled.sequences) and [p["seed"] for p in fake.requests[-1][1]] == seeds

    stop_ids = [tokenizer.eos_token_id]
    exp = score_rollout(policy, tokenizer, lambda p, r: torch.zeros(len(r)), PROMPTS, sampled, temperature=1.0,
                        stop_ids=stop_ids, non_stop_penalty=None, autocast=NO_AUTOCAST)
    # The policy's own log-probs of the sampled tokens, from a plain forward of the whole LM.
    with torch.no_grad():
        logits = policy.model(input_ids=exp.input_ids, attention_mask=exp.attention_mask,
                              position_ids=position_ids_for(exp.attention_mask)).logits.float()
    width = exp.response_start
    expected = torch.log_softmax(logits[:, width - 1 : -1], dim=-1).gather(-1, exp.input_ids[:, width:, None]).squeeze(-1)
    mask = exp.response_mask.bool()
    torch.testing.assert_close(exp.logprobs[mask], expected[mask], rtol=0, atol=1e-5)
    assert (exp.logprobs[mask] < -1e-3).all()  # the engine's made-up log-prob of 0 is nowhere


def test_each_rollout_samples_from_the_weights_after_the_last_update(tiny_llama_dir):
    """The weight-push contract: one push per rollout (so one per update), each carrying exactly
    the policy's weights at that moment: the starting ones, then those after each update."""
    from rlhflab.algorithms.online import OnlineRL
    from rlhflab.engine.runtime import Runtime
    from rlhflab.models.policy import PolicyWithValue

    policy, tokenizer = tiny_policy(tiny_llama_dir)
    engine, fake, _ = fake_engine(policy, tokenizer)
    reward = lambda prompts, responses: torch.tensor([r.count("e") / max(len(r), 1) for r in responses])  # noqa: E731

    def rollout(prompts):
        return score_rollout(policy, tokenizer, reward, prompts, engine.sample(policy, prompts), temperature=1.0,
                             stop_ids=[tokenizer.eos_token_id], non_stop_penalty=None, autocast=NO_AUTOCAST)

    start = {name: value.clone() for name, value in policy_weights(policy).items()}
    after_updates: list[dict[str, torch.Tensor]] = []
    cfg = resolve_rl(PpoConfig(batch_size=4, minibatch_size=2, ppo_epochs=1, learning_rate=1e-2, kl_horizon=1000))
    module = PolicyWithValue(policy)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.learning_rate)
    algorithm = OnlineRL(runtime=Runtime.create("cpu", "no"), module=module, prepared=module, optimizer=optimizer, cfg=cfg,
                         seed=0, prompts=PROMPTS, rollout=rollout, evaluate=None,
                         on_step=lambda step, batch: after_updates.append(
                             {name: value.clone() for name, value in policy.model.state_dict().items()}))
    torch.manual_seed(0)
    for step in range(3):
        algorithm.step(step)

    pushed = fake.model.loads
    assert engine.pushes == len(pushed) == len(after_updates) == 3 and fake.resets == 3
    for received, expected in zip(pushed, [start, *after_updates[:-1]]):
        assert list(received) == list(expected)
        for name, value in expected.items():
            assert received[name].shape == value.shape and torch.equal(received[name], value), name
    trainable = {name for name, p in policy.model.named_parameters() if p.requires_grad}
    assert trainable and all(not torch.equal(pushed[1][name], pushed[0][name]) for name in trainable)
    assert all(torch.equal(pushed[2][name], pushed[0][name]) for name in pushed[0] if name not in trainable)


# --- the stage --------------------------------------------------------------------------------
REWARD_FILE = '''
def e_share(prompts, responses):
    return [r.count("e") / max(len(r), 1) for r in responses]
'''


def _config(tmp_path, model_dir, csv_path, **fields) -> Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "toy_reward.py"
    path.write_text(REWARD_FILE)
    settings = dict(policy=str(model_dir), steps=2, batch_size=4, minibatch_size=2, ppo_epochs=1, learning_rate=1e-3,
                    max_new_tokens=6, eval_prompts=4, eval_every=10, sample_every=1, checkpoint_every=100)
    return Config(runtime=FP32, name="tiny", seed=0, runs_dir=str(tmp_path / "runs"),
                  data=DataConfig(source=str(csv_path), per_class=30),
                  reward_fn=RewardFnConfig(source=f"{path}:e_share"), ppo=PpoConfig(**settings, **fields))


@pytest.mark.slow
def test_the_stage_records_its_engine_and_pushes_once_per_step(tmp_path, tiny_llama_dir, reviews_csv, monkeypatch):
    from rlhflab.stages import rl as rl_stage
    from rlhflab.stages.common import run_stage

    hf = run_stage("rl", _config(tmp_path / "hf", tiny_llama_dir, reviews_csv), progress=False)
    assert json.loads(hf.summary_path.read_text())["rollout_engine"] == "hf"  # auto on a CPU

    engines = []

    def build(policy, tokenizer, *, precision, gpu_memory_utilization, max_model_len, seed, **settings):
        assert gpu_memory_utilization == 0.5 and max_model_len > settings["max_new_tokens"] == 6
        engine, fake, _ = fake_engine(policy, tokenizer)
        engine.settings = {**engine.settings, **settings}
        engines.append((engine, fake))
        return engine

    monkeypatch.setattr(rl_stage, "resolve_rollout_engine",
                        lambda setting, **kw: resolve_rollout_engine(setting, **{**kw, "device_type": "cuda"},
                                                                     vllm_available=lambda: True))
    monkeypatch.setattr(rl_stage, "build_vllm_rollout", build)
    run = run_stage("rl", _config(tmp_path / "vllm", tiny_llama_dir, reviews_csv, vllm_gpu_memory_utilization=0.5),
                    progress=False)
    summary = json.loads(run.summary_path.read_text())
    (engine, fake), = engines
    assert summary["rollout_engine"] == "vllm" and engine.pushes == len(fake.model.loads) == 2
    # The training samples are the engine's responses (through the first stop token).
    eos = engine.tokenizer.eos_token_id
    engine_texts = {engine.tokenizer.decode(ids[: ids.index(eos) + 1] if eos in ids else ids, skip_special_tokens=True)
                    for call in fake.responses for ids in call}
    samples = [json.loads(line) for line in (run.path / "samples.jsonl").read_text().splitlines()]
    assert len(fake.responses) == 2 and samples and all(s["response"] in engine_texts for s in samples)
