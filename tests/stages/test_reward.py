"""The reward stage on tiny in-test models: labels, pairs, LM with a scalar head, caching."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhflab.config import Config, DataConfig, PairsConfig, RewardConfig, RewardFnConfig
from rlhflab.errors import RlhfLabError, RunInterrupted
from rlhflab.models.reward_model import META_FILE
from rlhflab.rewards import build_reward
from rlhflab.stages import reward
from rlhflab.stages.common import run_stage
from rlhflab.engine import loop as engine_loop
from tests.helpers import SHAKESPEARE, StopAt, needs_shakespeare, typed_summary
from tests.helpers import FP32


def make_config(tmp_path, model_dir, data_source, **fields) -> Config:
    settings = dict(model=str(model_dir), trainable="all", max_length=32, epochs=8, batch_size=8,
                    learning_rate=3e-3, warmup_ratio=0.0, eval_batch_size=16, log_every=1,
                    early_stopping_patience=8)
    settings.update(fields)
    return Config(runtime=FP32, name="tiny", seed=0, runs_dir=str(tmp_path / "runs"),
                  data=DataConfig(source=str(data_source), per_class=30), reward=RewardConfig(**settings))


def summary_of(run_dir) -> dict:
    return json.loads(run_dir.summary_path.read_text())


def test_classifier_from_labels_learns_and_saves_a_plain_model(tmp_path, tiny_bert_dir, reviews_csv):
    run_dir = run_stage("reward", make_config(tmp_path, tiny_bert_dir, reviews_csv), progress=False)
    summary = summary_of(run_dir)
    assert summary["metrics"]["test"]["accuracy"] >= 0.9
    assert set(summary["metrics"]) == {"train", "validation", "test"}
    for key in ("accuracy", "precision", "recall", "f1", "confusion_matrix"):
        assert key in summary["metrics"]["validation"]
    assert sum(map(sum, summary["confusion_matrix_test"])) == 12
    assert (run_dir.model_dir / META_FILE).exists()
    model = AutoModelForSequenceClassification.from_pretrained(run_dir.model_dir)  # plain transformers
    assert model.config.num_labels == 1 and model.config.id2label[0] == "POSITIVE"
    assert "Confusion matrix" in reward.format_summary(typed_summary("reward", run_dir.path))
    # The training length is recorded with the model, and scoring reads no more (issue 19).
    assert json.loads((run_dir.model_dir / META_FILE).read_text())["max_length"] == 32
    assert build_reward(RewardFnConfig(source=str(run_dir.path))).reads.max_length == 32


def test_final_validation_metrics_are_those_of_the_best_logged_evaluation(tmp_path, tiny_bert_dir, reviews_csv):
    """The kept weights are the best validation's; their final validation metrics (reused from
    that evaluation when it was the last, else scored again) must be its figures."""
    for epochs in (1, 3, 8):
        run_dir = run_stage("reward", make_config(tmp_path / str(epochs), tiny_bert_dir, reviews_csv, epochs=epochs), progress=False)
        logged = [json.loads(line) for line in (run_dir.path / "metrics.jsonl").read_text().splitlines()]
        evaluations = [r for r in logged if r.get("split") == "validation"]
        best = max(evaluations, key=lambda r: r["accuracy"])  # max keeps the first of equals, as the stage does
        final = summary_of(run_dir)["metrics"]["validation"]
        assert final["accuracy"] == best["accuracy"]
        assert final["loss"] == pytest.approx(best["loss"], abs=1e-6)


def test_head_and_tail_truncation_is_used_and_recorded(tmp_path, tiny_bert_dir, reviews_csv):
    run_dir = run_stage("reward", make_config(tmp_path, tiny_bert_dir, reviews_csv, truncation="head+tail", max_length=8),
                        progress=False)
    assert json.loads((run_dir.model_dir / META_FILE).read_text())["truncation"] == "head+tail"
    assert summary_of(run_dir)["normalization"]["truncation"] == "head+tail"


def test_normalised_scores_have_mean_zero_and_std_one_on_the_reference_split(tmp_path, tiny_bert_dir, reviews_csv):
    cfg = make_config(tmp_path, tiny_bert_dir, reviews_csv, epochs=2)
    run_dir = run_stage("reward", cfg, progress=False)
    validation = reward.load_splits(cfg, cfg.reward.data, require_labels=True).validation
    scores = build_reward(RewardFnConfig(source=str(run_dir.path), text="response"))([""] * len(validation), [r.text for r in validation])
    assert float(scores.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(scores.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_head_plus_top_block_caches_and_matches_the_uncached_run(tmp_path, tiny_bert_dir, reviews_csv):
    cached = run_stage("reward", make_config(tmp_path / "a", tiny_bert_dir, reviews_csv, trainable=[-1], epochs=2), progress=False)
    plain = run_stage("reward", make_config(tmp_path / "b", tiny_bert_dir, reviews_csv, trainable=[-1], epochs=2, cache_frozen=False), progress=False)
    a, b = summary_of(cached), summary_of(plain)
    assert a["frozen_cache"] == {**a["frozen_cache"], "used": True, "first_trainable_block": 2}
    assert not b["frozen_cache"]["used"]
    for split in ("train", "validation", "test"):
        assert a["metrics"][split]["loss"] == pytest.approx(b["metrics"][split]["loss"], abs=1e-4)


def test_head_only_changes_only_the_head(tmp_path, tiny_bert_dir, reviews_csv):
    run_dir = run_stage("reward", make_config(tmp_path, tiny_bert_dir, reviews_csv, trainable="head", epochs=1), progress=False)
    before = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=1).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(run_dir.model_dir).state_dict()
    for name in before:
        if name.startswith("bert.encoder") or name.startswith("bert.embeddings"):
            assert torch.equal(before[name], after[name]), name
    summary = summary_of(run_dir)
    # No block trains: the whole body runs once and only the pooler and head run each epoch.
    assert summary["frozen_cache"]["used"] and summary["frozen_cache"]["first_trainable_block"] == 3
    assert summary["parameters"]["trainable"] < summary["parameters"]["total"] / 10


def test_pairwise_bradley_terry_learns_preferences(tmp_path, tiny_bert_dir, pairs_jsonl):
    cfg = make_config(tmp_path, tiny_bert_dir, pairs_jsonl, objective="pairs",
                      pairs=PairsConfig(source=str(pairs_jsonl), margin_column="margin"))
    run_dir = run_stage("reward", cfg, progress=False)
    summary = summary_of(run_dir)
    assert summary["objective"] == "pairs"
    assert summary["metrics"]["train"]["pairwise_accuracy"] >= 0.9
    assert summary["metrics"]["test"]["pairwise_accuracy"] >= 0.75
    assert summary["examples"] == {"train": 32, "validation": 4, "test": 4}
    assert "pairwise acc" in reward.format_summary(typed_summary("reward", run_dir.path))


@needs_shakespeare
def test_language_model_with_a_scalar_head_on_the_shakespeare_set(tmp_path, tiny_llama_dir):
    cfg = make_config(tmp_path, tiny_llama_dir, SHAKESPEARE, trainable=[-1], epochs=3, max_length=48)
    cfg.data.per_class = None  # all 268 rows
    run_dir = run_stage("reward", cfg, progress=False)
    summary = summary_of(run_dir)
    assert sum(summary["examples"].values()) == 268
    assert summary["frozen_cache"]["used"]
    model = AutoModelForSequenceClassification.from_pretrained(run_dir.model_dir)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.pad_token_id is not None
    first_loss = next(r["loss"] for r in run_dir.read_metrics() if r["split"] == "train")
    assert summary["metrics"]["train"]["loss"] < first_loss


def test_interrupted_reward_run_resumes_to_the_same_model(tmp_path, tiny_bert_dir, reviews_csv, monkeypatch):
    straight = run_stage("reward", make_config(tmp_path / "a", tiny_bert_dir, reviews_csv, epochs=2), progress=False)
    cfg = make_config(tmp_path / "b", tiny_bert_dir, reviews_csv, epochs=2)
    monkeypatch.setattr(engine_loop, "StopRequest", lambda: StopAt(3))
    with pytest.raises(RunInterrupted):
        run_stage("reward", cfg, progress=False)
    monkeypatch.undo()
    resumed = run_stage("reward", cfg, resume=True, progress=False)
    a = AutoModelForSequenceClassification.from_pretrained(straight.model_dir).state_dict()
    b = AutoModelForSequenceClassification.from_pretrained(resumed.model_dir).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"objective": "pairs"}, "reward.pairs.source"),
        ({"trainable": [9]}, "reward.trainable"),
        ({"max_length": 1}, "reward.max_length"),
        ({"batch_size": 0}, "reward.batch_size"),
    ],
)
def test_bad_reward_settings_are_clear_errors(tmp_path, tiny_bert_dir, reviews_csv, fields, message):
    with pytest.raises(RlhfLabError, match=message):
        run_stage("reward", make_config(tmp_path, tiny_bert_dir, reviews_csv, **fields), progress=False)
