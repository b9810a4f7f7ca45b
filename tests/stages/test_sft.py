"""The SFT stage on tiny in-test models: outputs, what trains, caching exactness, LoRA, resume."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhflab.config import Config, DataConfig, RuntimeConfig, SftConfig
from rlhflab.errors import RlhfLabError, RunInterrupted
from rlhflab.models.blocks import cache_is_exact, lower_hidden, top_forward
from rlhflab.stages import sft
from rlhflab.models.encoding import encode
from rlhflab.stages.common import run_stage
from rlhflab.engine import loop as engine_loop
from rlhflab.io import read_json
from rlhflab.pipeline import headline
from tests.helpers import StopAt, typed_summary
from tests.helpers import FP32
from tests.helpers import synthetic_reviews


def make_config(tmp_path, model_dir, csv_path, **sft_fields) -> Config:
    fields = dict(model=str(model_dir), max_length=24, epochs=2, batch_size=6, learning_rate=2e-2,
                  eval_batch_size=16, log_every=1, checkpoint_every=1000, warmup_ratio=0.0)  # exact fp32 comparisons; bf16 has its own test
    fields.update(sft_fields)
    return Config(runtime=FP32,
        name="tiny",
        seed=0,
        runs_dir=str(tmp_path / "runs"),
        data=DataConfig(source=str(csv_path), per_class=30),
        sft=SftConfig(**fields),
    )


def weights(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_frozen_cache_reproduces_full_forward(request, fixture):
    model_dir = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = encode(["the film was great.", "a dull and weak plot, the acting was bad and tedious."], tokenizer, 24)
    assert batch.attention_mask[0].sum() < batch.attention_mask[1].sum()  # the first row is padded
    assert cache_is_exact(model, 2, batch.input_ids, batch.attention_mask)
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        hidden = lower_hidden(model, 2, batch.input_ids, batch.attention_mask)
        split = top_forward(model, 2, hidden, batch.input_ids, batch.attention_mask).logits
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(split[mask], full[mask], atol=1e-5, rtol=1e-5)


def test_encode_appends_eos_only_when_the_review_fits(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    encoded = encode(["the film was great.", "the film was great and " * 20], tokenizer, 12, append_eos=True)
    n_short = int(encoded.attention_mask[0].sum())
    assert encoded.input_ids[0, n_short - 1] == tokenizer.eos_token_id
    assert int(encoded.attention_mask[1].sum()) == 12
    assert encoded.input_ids[1, 11] != tokenizer.eos_token_id


def test_sft_writes_the_run_directory_and_trains_only_the_top_blocks(tmp_path, tiny_llama_dir, reviews_csv):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, trainable=[-2, -1])
    run_dir = run_stage("sft", cfg, progress=False)

    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model/config.json", "checkpoints/latest/state.json"):
        assert (run_dir.path / name).exists(), name
    assert yaml.safe_load((run_dir.path / "config.yaml").read_text())["sft"]["trainable"] == [-2, -1]
    summary = json.loads(run_dir.summary_path.read_text())
    assert set(summary["after"]) == {"train", "validation", "test"}
    assert summary["examples"] == {"train": 36, "validation": 12, "test": 12}
    assert summary["frozen_cache"]["used"] and summary["frozen_cache"]["first_trainable_block"] == 2
    # Training on this tiny, repetitive corpus must lower validation loss.
    assert summary["after"]["validation"]["loss"] < summary["before"]["validation"]["loss"] - 0.5

    before, after = weights(tiny_llama_dir), weights(run_dir.model_dir)
    for name, value in before.items():
        changed = not torch.equal(value, after[name])
        assert changed == (name.startswith("model.layers.2.") or name.startswith("model.layers.3.")), name
    records = [json.loads(line) for line in run_dir.metrics_path.read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "validation"}
    assert sft.format_summary(typed_summary("sft", run_dir.path)).splitlines()[0].split()[:3] == ["split", "loss", "perplexity"]


def test_bf16_autocast_trains(tmp_path, tiny_llama_dir, reviews_csv):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv)
    cfg.runtime = RuntimeConfig(mixed_precision="bf16")
    run_dir = run_stage("sft", cfg, progress=False)
    summary = json.loads(run_dir.summary_path.read_text())
    assert summary["mixed_precision"] == "bf16"
    assert summary["after"]["validation"]["loss"] < summary["before"]["validation"]["loss"] - 0.5
    assert AutoModelForCausalLM.from_pretrained(run_dir.model_dir).dtype == torch.float32  # weights stay fp32


def test_cached_and_uncached_training_agree(tmp_path, tiny_llama_dir, reviews_csv):
    cached = run_stage("sft", make_config(tmp_path / "a", tiny_llama_dir, reviews_csv, epochs=1), progress=False)
    plain = run_stage("sft", make_config(tmp_path / "b", tiny_llama_dir, reviews_csv, epochs=1, cache_frozen=False), progress=False)
    a, b = json.loads(cached.summary_path.read_text()), json.loads(plain.summary_path.read_text())
    assert a["frozen_cache"]["used"] and not b["frozen_cache"]["used"]
    for split in ("train", "validation", "test"):
        assert a["after"][split]["loss"] == pytest.approx(b["after"][split]["loss"], abs=1e-4)


def test_gpt2_blocks_and_all_weights(tmp_path, tiny_gpt2_dir, reviews_csv):
    run_dir = run_stage("sft", make_config(tmp_path, tiny_gpt2_dir, reviews_csv, trainable=[2, 3], epochs=1), progress=False)
    summary = json.loads(run_dir.summary_path.read_text())
    assert summary["frozen_cache"]["used"]
    before, after = weights(tiny_gpt2_dir), weights(run_dir.model_dir)
    assert torch.equal(before["transformer.h.0.mlp.c_fc.weight"], after["transformer.h.0.mlp.c_fc.weight"])
    assert not torch.equal(before["transformer.h.3.mlp.c_fc.weight"], after["transformer.h.3.mlp.c_fc.weight"])

    run_all = run_stage("sft", make_config(tmp_path / "all", tiny_gpt2_dir, reviews_csv, trainable="all", epochs=1), progress=False)
    summary_all = json.loads(run_all.summary_path.read_text())
    assert not summary_all["frozen_cache"]["used"]
    assert summary_all["parameters"]["trainable"] == summary_all["parameters"]["total"]


def test_lora_saves_a_merged_plain_model(tmp_path, tiny_llama_dir, reviews_csv):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, trainable="lora", epochs=1)
    run_dir = run_stage("sft", cfg, progress=False)
    assert not (run_dir.model_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(run_dir.model_dir)  # plain transformers, no peft
    before = weights(tiny_llama_dir)
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], merged.state_dict()["model.layers.0.self_attn.q_proj.weight"])
    summary = json.loads(run_dir.summary_path.read_text())
    assert 0 < summary["parameters"]["trainable"] < summary["parameters"]["total"]


def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_llama_dir, reviews_csv, monkeypatch):
    straight = run_stage("sft", make_config(tmp_path / "a", tiny_llama_dir, reviews_csv), progress=False)

    cfg = make_config(tmp_path / "b", tiny_llama_dir, reviews_csv)
    monkeypatch.setattr(engine_loop, "StopRequest", lambda: StopAt(4))  # 6 steps per epoch: stop mid-epoch 0
    with pytest.raises(RunInterrupted):
        run_stage("sft", cfg, progress=False)
    monkeypatch.undo()
    with pytest.raises(RlhfLabError, match="--resume"):
        run_stage("sft", cfg, progress=False)
    resumed = run_stage("sft", cfg, resume=True, progress=False)

    a, b = json.loads(straight.summary_path.read_text()), json.loads(resumed.summary_path.read_text())
    assert a["steps"] == b["steps"] == 12
    for split in ("train", "validation", "test"):
        assert b["after"][split]["loss"] == pytest.approx(a["after"][split]["loss"], abs=1e-6)
    wa, wb = weights(straight.model_dir), weights(resumed.model_dir)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    steps = [r["step"] for r in resumed.read_metrics() if r["split"] == "train"]
    assert steps == sorted(set(steps))  # no step logged twice


def test_resume_refuses_a_changed_config(tmp_path, tiny_llama_dir, reviews_csv, monkeypatch):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv)
    monkeypatch.setattr(engine_loop, "StopRequest", lambda: StopAt(2))
    with pytest.raises(RunInterrupted):
        run_stage("sft", cfg, progress=False)
    changed = replace(cfg, sft=replace(cfg.sft, learning_rate=1e-3))
    with pytest.raises(RlhfLabError, match="sft.learning_rate"):
        run_stage("sft", changed, resume=True, progress=False)


def test_early_stopping_keeps_the_best_validation_weights(tmp_path, tiny_llama_dir, reviews_csv):
    # A huge learning rate makes validation loss get worse after the first evaluation.
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, epochs=6, eval_every=2, early_stopping_patience=1, learning_rate=0.5)
    run_dir = run_stage("sft", cfg, progress=False)
    summary = json.loads(run_dir.summary_path.read_text())
    validation = [r["loss"] for r in run_dir.read_metrics() if r["split"] == "validation"]
    assert summary["stopped_early"]
    assert summary["steps"] < 36
    assert summary["after"]["validation"]["loss"] == pytest.approx(min(validation), abs=1e-5)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"trainable": [7]}, "out of range"),
        ({"epochs": 0}, "sft.epochs"),
        ({"learning_rate": -1.0}, "learning_rate"),
    ],
)
def test_bad_sft_settings_are_clear_errors(tmp_path, tiny_llama_dir, reviews_csv, fields, message):
    with pytest.raises(RlhfLabError, match=message):
        run_stage("sft", make_config(tmp_path, tiny_llama_dir, reviews_csv, **fields), progress=False)


def test_a_folder_that_is_not_a_causal_lm_is_rejected(tmp_path, reviews_csv):
    with pytest.raises(RlhfLabError, match="does not exist|Could not load"):
        run_stage("sft", make_config(tmp_path, tmp_path / "no-model", reviews_csv), progress=False)


def test_gradient_accumulation_takes_the_same_steps(tmp_path, tiny_llama_dir, reviews_csv):
    """Micro-batches of a step's batch give the same weights as the whole batch at once."""
    from safetensors.torch import load_file

    whole = run_stage("sft", make_config(tmp_path / "a", tiny_llama_dir, reviews_csv, max_steps=3), progress=False)
    split = run_stage("sft", make_config(tmp_path / "b", tiny_llama_dir, reviews_csv, max_steps=3,
                                         gradient_accumulation_steps=3), progress=False)
    a, b = (load_file(run.model_dir / "model.safetensors") for run in (whole, split))
    # Adam moves every weight by about the learning rate (2e-2) whatever its gradient's size, so a
    # gradient near zero amplifies the last-bit differences of summing in another order (2.8e-5 on
    # an AMX Xeon); a wrong accumulation moves weights by a sizeable part of the learning rate.
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=2e-4, rtol=1e-4)
    assert any(not torch.equal(a[name], t) for name, t in load_file(tiny_llama_dir / "model.safetensors").items() if name in a)


# ---------------------------------------------------------------------------------------------
# A budget that ends before validation keeps the training; rows the reader left out are reported.


def sft_config(tmp_path, model_dir, csv_path, **fields) -> Config:
    settings = dict(model=str(model_dir), max_length=24, epochs=2, batch_size=6, learning_rate=2e-2, eval_batch_size=16,
                    warmup_ratio=0.0)
    settings.update(fields)
    return Config(runtime=FP32, name="f", runs_dir=str(tmp_path / "runs"), data=DataConfig(source=str(csv_path), per_class=30),
                  sft=SftConfig(**settings))


def test_a_budget_that_ends_before_any_validation_still_keeps_the_training(tmp_path, tiny_llama_dir, reviews_csv):
    """sft.max_steps=3 with validation once per epoch: the final model is validated and kept."""
    run_dir = run_stage("sft", sft_config(tmp_path, tiny_llama_dir, reviews_csv, max_steps=3), progress=False)
    summary = read_json(run_dir.summary_path)
    assert summary["steps"] == 3
    before = summary["before"]["validation"]["perplexity"]
    after = summary["after"]["validation"]["perplexity"]
    assert after < 0.9 * before  # lr 2e-2 on a tiny model: three steps move it a lot
    validations = [r for r in run_dir.read_metrics() if r["split"] == "validation"]
    assert [r["step"] for r in validations] == [3]


def test_rows_the_reader_left_out_are_in_the_summary_and_on_the_output_line(tmp_path, tiny_llama_dir):
    path = tmp_path / "with-gaps.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(synthetic_reviews(30))
        writer.writerows([["", 1], ["   ", 0], ["", 0]])
    run_dir = run_stage("sft", sft_config(tmp_path, tiny_llama_dir, path, max_steps=1), progress=False)
    summary = read_json(run_dir.summary_path)
    assert sum(summary["left_out"].values()) == 3
    assert "left out 3" in headline("sft", summary)

