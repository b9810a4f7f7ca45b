"""ILQL heads on a tiny in-process Llama: start at zero, share the frozen output embedding, steer
generation through the LM-head hook (β = 0 is the plain model), and round-trip through files."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhflab.errors import RlhfLabError
from rlhflab.models.ilql import HEADS_FILE, HEADS_META, IlqlHeads, attach_steering, load_heads, save_heads
from rlhflab.ops.ilql import steered_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HIDDEN, VOCAB = 16, 50
PROMPT = torch.tensor([[1, 7, 3, 9, 4], [1, 5, 5, 2, 8]])


def tiny_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def random_heads(model, seed: int = 1) -> IlqlHeads:
    """Heads with every weight (targets included) random, so nothing passes by being zero."""
    heads = IlqlHeads(HIDDEN, model.get_output_embeddings())
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0.0, 0.5)
    return heads


@torch.no_grad()
def next_token_probs(model) -> torch.Tensor:
    return torch.softmax(model(PROMPT).logits.float(), dim=-1)  # (B, T, V)


def test_heads_start_at_zero_and_do_not_own_the_embedding():
    model = tiny_lm()
    heads = IlqlHeads(HIDDEN, model.get_output_embeddings())
    out = heads(torch.randn(2, 3, HIDDEN))
    assert [q.shape for q in out.qs + out.target_qs] == [(2, 3, VOCAB)] * 4 and out.v.shape == (2, 3)
    assert all(torch.count_nonzero(x) == 0 for x in (*out.qs, *out.target_qs, out.v))
    assert not any(name.startswith("_") or "embed" in name for name in heads.state_dict())
    # per Q head: h·2h + 2h + 2h·(h + 1) + h + 1 (f(h) and the state's level c(h)), independent of the vocabulary
    assert sum(p.numel() for p in heads.q_heads[0].parameters()) == 4 * HIDDEN**2 + 5 * HIDDEN + 1
    assert not any(p.requires_grad for p in heads.target_q_heads.parameters())


def test_q_trains_the_head_not_the_shared_embedding():
    model = tiny_lm()
    heads = random_heads(model)
    out = heads(torch.randn(1, 2, HIDDEN))
    (out.qs[0].sum() + out.v.sum()).backward()
    assert model.get_output_embeddings().weight.grad is None
    assert heads.q_heads[0][0].weight.grad is not None and heads.v_head[0].weight.grad is not None
    assert not out.target_qs[0].requires_grad


def test_sync_targets_copies_at_alpha_one():
    model = tiny_lm()
    heads = random_heads(model)
    hidden = torch.randn(1, 2, HIDDEN)
    assert not torch.equal(heads(hidden).qs[0], heads(hidden).target_qs[0])
    heads.sync_targets(1.0)
    out = heads(hidden)
    assert torch.equal(out.qs[0], out.target_qs[0]) and torch.equal(out.qs[1], out.target_qs[1])


def test_beta_zero_is_the_plain_model_and_remove_restores_it_exactly():
    model = tiny_lm()
    with torch.no_grad():
        plain_logits = model(PROMPT).logits
    plain = torch.softmax(plain_logits, -1)
    handle = attach_steering(model, random_heads(model), beta=0.0)
    assert model.ilql_beta == 0.0
    assert torch.allclose(next_token_probs(model), plain, atol=1e-6)
    handle.remove()
    with torch.no_grad():
        assert torch.equal(model(PROMPT).logits, plain_logits)


def test_a_token_favoured_by_q_gains_probability():
    model = tiny_lm()
    heads = IlqlHeads(HIDDEN, model.get_output_embeddings())
    embedding = model.get_output_embeddings().weight.detach()  # (V, h)
    favoured = int(embedding.norm(dim=-1).argmax())
    with torch.no_grad():
        # f(h) = E[k] for every state: Q(s, j) = E[j]·E[k] is largest at k, the longest row
        for head in heads.target_q_heads:
            head[-1].bias[:-1].copy_(embedding[favoured])
    plain = next_token_probs(model)[..., favoured]
    handle = attach_steering(model, heads, beta=1.0)
    steered = next_token_probs(model)[..., favoured]
    handle.remove()
    assert bool((steered > plain).all())
    handle = attach_steering(model, heads, beta=3.0)
    assert bool((next_token_probs(model)[..., favoured] > steered).all())  # a larger β steers harder
    handle.remove()


def test_generate_at_beta_zero_samples_the_same_tokens_one_step_at_a_time():
    model = tiny_lm()
    settings = dict(attention_mask=torch.ones_like(PROMPT), do_sample=True, max_new_tokens=8, pad_token_id=0)
    torch.manual_seed(3)
    plain = model.generate(PROMPT, **settings)
    handle = attach_steering(model, random_heads(model), beta=0.0)
    widths = []  # T of each hidden state the steering hook sees
    probe = model.get_output_embeddings().register_forward_pre_hook(lambda m, args: widths.append(args[0].shape[1]))
    torch.manual_seed(3)
    steered = model.generate(PROMPT, **settings)
    probe.remove()
    handle.remove()
    assert torch.equal(steered, plain)
    assert set(widths[1:]) == {1}  # with the KV cache, one position per step after the prompt


def test_steered_logits_keep_the_model_dtype():
    model = tiny_lm().to(torch.bfloat16)
    attach_steering(model, random_heads(model), beta=0.5)
    with torch.no_grad():
        logits = model(PROMPT).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_save_and_load_round_trip(tmp_path):
    model = tiny_lm()
    heads = random_heads(model)
    model.save_pretrained(tmp_path)
    save_heads(heads, tmp_path, beta=0.7)
    assert {HEADS_FILE, HEADS_META} <= {p.name for p in tmp_path.iterdir()}

    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    loaded, beta, top_k = load_heads(tmp_path, reloaded.get_output_embeddings())
    assert (beta, top_k) == (0.7, 0)
    hidden = torch.randn(2, 3, HIDDEN)
    before, after = heads(hidden), loaded(hidden)
    for a, b in zip((*before.qs, *before.target_qs, before.v), (*after.qs, *after.target_qs, after.v)):
        assert torch.equal(a, b)
    attach_steering(model, heads, beta)
    attach_steering(reloaded, loaded, beta)
    with torch.no_grad():
        assert torch.equal(model(PROMPT).logits, reloaded(PROMPT).logits)


def test_load_heads_without_heads_bad_files_and_wrong_models(tmp_path):
    model = tiny_lm()
    assert load_heads(tmp_path, model.get_output_embeddings()) is None  # a plain LM folder
    save_heads(random_heads(model), tmp_path, beta=1.0)

    wide = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=24, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(RlhfLabError, match="hidden size 16"):
        load_heads(tmp_path, wide.get_output_embeddings())

    (tmp_path / HEADS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(RlhfLabError, match="corrupt"):
        load_heads(tmp_path, model.get_output_embeddings())
    (tmp_path / HEADS_META).write_text("{", encoding="utf-8")
    with pytest.raises(RlhfLabError, match="unreadable"):
        load_heads(tmp_path, model.get_output_embeddings())
    (tmp_path / HEADS_META).unlink()
    with pytest.raises(RlhfLabError, match="plain LM"):  # half a pair is an error, not "no heads"
        load_heads(tmp_path, model.get_output_embeddings())


def test_negative_beta_is_a_clear_error(tmp_path):
    model = tiny_lm()
    heads = IlqlHeads(HIDDEN, model.get_output_embeddings())
    with pytest.raises(RlhfLabError, match="beta"):
        attach_steering(model, heads, beta=-1.0)
    with pytest.raises(RlhfLabError, match="beta"):
        save_heads(heads, tmp_path, beta=-1.0)


def test_top_k_keeps_the_k_highest_steered_logits_and_beta_zero_is_the_base_top_k():
    torch.manual_seed(0)
    logits, q, v = torch.randn(2, 3, VOCAB), torch.randn(2, 3, VOCAB), torch.randn(2, 3)
    steered = steered_logits(logits, q, v, beta=2.0, top_k=5)
    full = steered_logits(logits, q, v, beta=2.0)
    kept = torch.isfinite(steered)
    assert kept.sum(-1).eq(5).all()
    assert torch.equal(steered[kept], full[kept])  # the kept ones untouched
    assert (full.masked_fill(kept, float("-inf")).amax(-1) <= full.masked_fill(~kept, float("inf")).amin(-1)).all()
    base = steered_logits(logits, q, v, beta=0.0, top_k=5)
    assert torch.equal(torch.isfinite(base), logits.topk(5, dim=-1).indices.new_zeros(logits.shape, dtype=torch.bool)
                       .scatter(-1, logits.topk(5, dim=-1).indices, True))
    assert torch.equal(steered_logits(logits, q, v, beta=2.0, top_k=VOCAB), full)  # k >= V keeps everything


def test_top_k_is_saved_with_the_heads_and_steers_generation(tmp_path):
    model = tiny_lm()
    heads = random_heads(model)
    save_heads(heads, tmp_path, beta=1.5, top_k=3)
    loaded, beta, top_k = load_heads(tmp_path, model.get_output_embeddings())
    assert (beta, top_k) == (1.5, 3)
    handle = attach_steering(model, loaded, beta, top_k)
    assert next_token_probs(model).gt(0).sum(-1).eq(3).all()  # every state samples among 3 tokens
    handle.remove()
    meta = json.loads((tmp_path / HEADS_META).read_text())
    del meta["top_k"]  # heads saved before top_k was a setting sample from the whole vocabulary
    (tmp_path / HEADS_META).write_text(json.dumps(meta))
    assert load_heads(tmp_path, model.get_output_embeddings())[2] == 0
    with pytest.raises(RlhfLabError, match="top_k"):
        attach_steering(model, loaded, 1.0, top_k=-1)


def test_target_qs_at_given_actions_are_the_full_targets_gathered():
    model = tiny_lm()
    heads = random_heads(model)
    hidden, actions = torch.randn(2, 3, HIDDEN), torch.randint(0, VOCAB, (2, 3))
    full, given = heads(hidden), heads(hidden, actions)
    for whole_q, at_actions in zip(full.target_qs, given.target_qs):
        assert at_actions.shape == (2, 3)
        torch.testing.assert_close(at_actions, whole_q.gather(-1, actions[..., None]).squeeze(-1), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(full.qs, given.qs)) and torch.equal(full.v, given.v)


def test_q_heads_fit_a_value_that_no_action_changes():
    """A review's label is its value whatever token ends it: Q(s, a) = r(s) for every a. With a state
    level c(h) the heads fit it; with Q = E f(h) alone (format 1: c held at 0) they cannot, because
    50 embedding directions would all need E[a]·f(h) = r(s) with f(h) of 16 numbers."""
    torch.manual_seed(0)
    model = tiny_lm()
    hidden, values = torch.randn(64, 1, HIDDEN), torch.randn(64, 1, 1).sign()  # every action of a state: one value

    def fit(level: bool) -> float:
        heads = IlqlHeads(HIDDEN, model.get_output_embeddings())
        optimizer = torch.optim.Adam(heads.q_heads[0].parameters(), lr=1e-2)
        for _ in range(300):
            q = heads(hidden).qs[0]  # (64, 1, V)
            if not level:
                q = q - heads.q_heads[0](hidden)[..., -1:]  # E f(h) only
            loss = (q - values).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return float(loss)

    assert fit(level=True) < 0.01
    assert fit(level=False) > 0.2  # measured: the level-free fit stays far from 0


def test_format_1_heads_load_with_a_zero_level(tmp_path):
    """Heads saved before the state level (format 1, f(h) only) load as the same Q function."""
    from safetensors.torch import load_file, save_file

    model = tiny_lm()
    heads = random_heads(model)
    with torch.no_grad():
        for head in (*heads.q_heads, *heads.target_q_heads):  # a format-1 head has no level: c(h) = 0
            head[-1].weight[-1].zero_()
            head[-1].bias[-1].zero_()
    save_heads(heads, tmp_path, beta=1.0)
    state = load_file(str(tmp_path / HEADS_FILE))
    save_file({k: v[:-1] if k.split(".")[0].endswith("q_heads") and k.split(".")[2] == "2" else v
               for k, v in state.items()}, str(tmp_path / HEADS_FILE))
    meta = json.loads((tmp_path / HEADS_META).read_text())
    (tmp_path / HEADS_META).write_text(json.dumps({**meta, "format": 1}))
    loaded, _, _ = load_heads(tmp_path, model.get_output_embeddings())
    hidden = torch.randn(2, 3, HIDDEN)
    for a, b in zip((*heads(hidden).qs, *heads(hidden).target_qs), (*loaded(hidden).qs, *loaded(hidden).target_qs)):
        assert torch.equal(a, b)
    (tmp_path / HEADS_META).write_text(json.dumps({**meta, "format": 3}))
    with pytest.raises(RlhfLabError, match="formats 1 and 2"):
        load_heads(tmp_path, model.get_output_embeddings())
