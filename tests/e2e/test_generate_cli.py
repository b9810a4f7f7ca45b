"""`rlhflab generate`: two tiny models answer the same prompts side by side, scored by a callable
reward (the number of 'a' characters); --json, --best-of, prompt files with groups, gold judges
from the config, and the errors a user can cause (exit 2, one `error:` line).

One case runs as a real process (started first, read last); the rest run in this process
(cli_run), each in its own folder so no runs/default/reward of the checkout is picked up.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from rlhflab.eval.side_by_side import _one_line, best_of_n_kl
from tests.helpers import assert_user_error, cli_run, finish, start_cli

REWARD_FILE = """\
def count_a(prompts, responses):
    return [r.count("a") for r in responses]


def length(prompts, responses):
    return [len(r) for r in responses]
"""

PROMPTS = ["I went to see this film", "An absolute masterpiece of"]


@pytest.fixture(scope="module")
def models(tiny_llama_dir, tiny_gpt2_dir) -> list[str]:
    return [str(tiny_llama_dir), str(tiny_gpt2_dir)]


@pytest.fixture(scope="module")
def reward(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("reward")
    (folder / "my_reward.py").write_text(REWARD_FILE, encoding="utf-8")
    return f"{folder / 'my_reward.py'}:count_a"


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # runs/default/reward of the checkout must not become the default reward
    return tmp_path


def base_args(models, reward, *extra) -> list[str]:
    return ["generate", "--models", *models, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "-n", "2",
            "--reward", reward, "--max-new-tokens", "12", *extra]


@pytest.fixture(scope="module")
def text_process(tmp_path_factory, models, reward) -> subprocess.Popen:
    """The text output from a real `python -m rlhflab.cli` process."""
    return start_cli(tmp_path_factory.mktemp("text"), *base_args(models, reward))


@pytest.fixture(scope="module")
def text_run(text_process) -> subprocess.CompletedProcess:
    return finish(text_process)


def run_json(capsys, *args) -> dict:
    result = cli_run(capsys, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # the whole of stdout is one JSON document


def test_json_rows_scores_and_summary(capsys, here, models, reward, text_process):
    data = run_json(capsys, *base_args(models, reward))
    assert data["prompts"] == PROMPTS and data["models"] == models and data["groups"] is None
    rows = data["rows"]
    assert len(rows) == 2 * 2 * 2
    assert [(r["model"], r["prompt"], r["sample"]) for r in rows] == [
        (m, p, s) for m in models for p in PROMPTS for s in range(2)]
    for row in rows:
        assert row["reward"] == row["response"].count("a")
        assert row["group"] is None and "judges" not in row
    summary = data["summary"]
    assert summary["n"] == 2 and summary["best_of"] is None and summary["reward_output"] == "score"
    assert "count_a" in summary["reward"]
    for model in models:
        rewards = [r["reward"] for r in rows if r["model"] == model]
        assert summary["models"][model]["mean_reward"] == pytest.approx(sum(rewards) / len(rewards))
        assert summary["models"][model]["samples"] == 4
        assert "share_above_half" not in summary["models"][model]  # not a probability


def test_text_output_shows_each_models_samples_per_prompt(capsys, here, models, reward, text_run):
    result = text_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    data = run_json(capsys, *base_args(models, reward))  # same seed: the same samples
    lines = result.stdout.splitlines()
    assert lines[0].startswith("reward: ") and "count_a" in lines[0]
    for p, prompt in enumerate(PROMPTS):
        start = lines.index(f"[{p + 1}/2] {prompt!r}")
        assert lines[start + 1].split() == ["reward"]
        for m, model in enumerate(models):
            at = lines.index(f"  {model}", start)
            block = [line for line in lines[at + 1:] if line.startswith("    ") and not line.startswith(" " * 10)][:2]
            expected = [r for r in data["rows"] if r["model"] == model and r["prompt_index"] == p]
            for line, row in zip(block, expected, strict=True):
                value, _, text = line.strip().partition("  ")
                assert float(value) == row["reward"]
                shown = _one_line(row["response"]).strip() or "(empty)"  # control characters escaped
                assert shown.startswith(text.removesuffix(" …")[:10])
    tail = lines[lines.index("summary: 2 prompts × 2 samples per model"):]
    assert tail[1].split() == ["model", "mean", "reward"]
    for line, model in zip(tail[2:], models, strict=True):
        name, mean = line.split()
        assert name == model
        assert float(mean) == pytest.approx(data["summary"]["models"][model]["mean_reward"], abs=5e-4)


def test_a_models_samples_do_not_depend_on_the_other_models(capsys, here, models, reward):
    both = run_json(capsys, *base_args(models, reward))["rows"]
    alone = run_json(capsys, *base_args(models[1:], reward))["rows"]
    swapped = run_json(capsys, *base_args(models[::-1], reward))["rows"]
    second = [r for r in both if r["model"] == models[1]]
    assert alone == second
    assert [r for r in swapped if r["model"] == models[1]] == second


def test_best_of_keeps_the_highest_reward_of_each_n_drawn(capsys, here, models, reward):
    """-n 2 --best-of 4 draws the same 8 samples per prompt as -n 8 and keeps the best of each 4."""
    best = run_json(capsys, *base_args(models, reward, "--best-of", "4"))
    drawn = run_json(capsys, *base_args(models, reward, "-n", "8"))["rows"]
    assert best["summary"]["best_of"] == 4
    assert best["summary"]["best_of_n_kl"] == pytest.approx(math.log(4) - 0.75)
    for row in best["rows"]:
        group = [r for r in drawn if r["model"] == row["model"] and r["prompt_index"] == row["prompt_index"]
                 ][4 * row["sample"]:4 * row["sample"] + 4]
        rewards = [r["reward"] for r in group]
        assert row["candidate_rewards"] == rewards
        assert row["reward"] == max(rewards)
        assert row["response"] == group[rewards.index(max(rewards))]["response"]
        assert row["mean_of_n"] == pytest.approx(sum(rewards) / 4)
    for model in models:
        summary = best["summary"]["models"][model]
        every = [r["reward"] for r in drawn if r["model"] == model]
        assert summary["drawn"] == 16 and summary["mean_of_n"] == pytest.approx(sum(every) / 16)
        assert summary["mean_reward"] >= summary["mean_of_n"]
        assert summary["best_of_n_kl"] == pytest.approx(best_of_n_kl(4))
    text = cli_run(capsys, *base_args(models, reward, "--best-of", "4"))
    assert text.returncode == 0, text.stderr
    assert f"KL bound {best_of_n_kl(4):.3f} nats" in text.stdout
    assert "each the best of 4 (8 drawn per prompt)" in text.stdout


def test_prompts_txt_skips_blank_lines_with_a_note(capsys, here, models, reward):
    (here / "prompts.txt").write_text(f"{PROMPTS[0]}\n\n{PROMPTS[1]}\n\n", encoding="utf-8")
    result = cli_run(capsys, "generate", "--models", models[0], "--prompts-file", "prompts.txt", "-n", "1",
                     "--reward", reward, "--max-new-tokens", "8", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["prompts"] == PROMPTS
    assert result.stderr.splitlines() == ["note: skipped 2 blank lines in prompts.txt"]


def test_prompts_jsonl_groups_in_text_and_summary(capsys, here, models, reward):
    groups = ["negative", "positive", "negative"]
    prompts = ["This movie was a complete waste", "An absolute masterpiece of", "I hated every minute of"]
    (here / "study.jsonl").write_text("".join(json.dumps({"prompt": p, "group": g}) + "\n" for p, g in zip(prompts, groups)),
                                      encoding="utf-8")
    args = ["generate", "--models", *models, "--prompts-file", "study.jsonl", "-n", "2", "--reward", reward,
            "--max-new-tokens", "8"]
    data = run_json(capsys, *args)
    assert data["groups"] == groups
    for model in models:
        by_group = data["summary"]["models"][model]["by_group"]
        assert list(by_group) == ["negative", "positive"]
        for group, stats in by_group.items():
            rewards = [r["reward"] for r in data["rows"] if r["model"] == model and r["group"] == group]
            assert stats["samples"] == len(rewards) == 2 * groups.count(group)
            assert stats["mean_reward"] == pytest.approx(sum(rewards) / len(rewards))
    text = cli_run(capsys, *args).stdout
    # prompts sit under their group: both negative prompts (1 and 3) before the positive one (2)
    assert text.index("=== negative") < text.index("[1/3]") < text.index("[3/3]") < text.index("=== positive") < text.index("[2/3]")
    table = text[text.index("by group:"):].splitlines()
    assert table[1].split() == ["model", "group", "samples", "mean", "reward"]
    assert [line.split()[:3] for line in table[2:]] == [[m, g, "4" if g == "negative" else "2"]
                                                        for m in models for g in ("negative", "positive")]


def test_gold_judges_from_the_config_add_columns(capsys, here, models, reward):
    """evaluate.gold judges score beside the (flipped) reward; an override after --models is an override."""
    judge = reward.replace(":count_a", ":length")
    args = ["generate", "--models", *models, f"evaluate.gold.len={judge}", "--prompt", PROMPTS[0], "-n", "2",
            "--reward", reward, "--flip", "--max-new-tokens", "8"]
    data = run_json(capsys, *args)
    assert data["models"] == models
    for row in data["rows"]:
        assert row["reward"] == -row["response"].count("a")
        assert row["judges"] == {"len": len(row["response"])}
    text = cli_run(capsys, *args).stdout
    assert "judges: len (raw scores, not calibrated)" in text
    assert "   reward      len" in text


def test_without_a_reward_samples_print_unscored_with_one_note(capsys, here, models):
    result = cli_run(capsys, "generate", "--models", models[0], "--prompt", PROMPTS[0], "-n", "2", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    [note] = result.stderr.splitlines()
    assert note.startswith("note: no reward to score with") and "--reward" in note
    assert "no reward: samples are not scored" in result.stdout
    data = run_json(capsys, "generate", "--models", models[0], "--prompt", PROMPTS[0], "-n", "2", "--max-new-tokens", "8")
    assert [r["reward"] for r in data["rows"]] == [None, None]


ERRORS = {
    "no_prompts": ([], ("No prompts", "--prompt")),
    "missing_file": (["--prompts-file", "missing.txt"], ("missing.txt", "was not found")),
    "no_prompt_column": (["--prompts-file", "reviews.csv"], ("no 'prompt' column", "text, label")),
    "both": (["--prompt", "hi", "--prompts-file", "prompts.txt"], ("--prompt", "--prompts-file", "not both")),
    "n_zero": (["--prompt", "hi", "-n", "0"], ("-n", "at least 1")),
    "best_of_zero": (["--prompt", "hi", "--best-of", "0", "--reward", "{reward}"], ("--best-of", "at least 1")),
    "best_of_no_reward": (["--prompt", "hi", "--best-of", "4"], ("--best-of", "pass --reward")),
    "unknown_model": (["--prompt", "hi", "--models", "./no-such-model"], ("no-such-model", "does not exist")),
    "model_twice": (["--prompt", "hi", "--models", "{model}", "{model}"], ("listed twice",)),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_errors_exit_2_with_one_line(capsys, here, models, reward, case):
    (here / "prompts.txt").write_text("hi\n", encoding="utf-8")
    (here / "reviews.csv").write_text("text,label\ngood,1\n", encoding="utf-8")
    extra, fragments = ERRORS[case]
    extra = [a.format(reward=reward, model=models[0]) for a in extra]
    chosen = [] if "--models" in extra else ["--models", models[0]]
    result = cli_run(capsys, "generate", *chosen, *extra, "--max-new-tokens", "4")
    assert_user_error(result, *fragments)
    assert result.stdout == ""


def test_a_probability_reward_reports_the_share_above_one_half(capsys, here, models, tiny_tokenizer_dir, tmp_path_factory):
    from tests.e2e.test_cli_score import save_tiny_bert

    classifier = str(save_tiny_bert(tmp_path_factory.mktemp("classifier"), tiny_tokenizer_dir))
    args = ["generate", "--models", models[0], "--prompt", PROMPTS[0], "-n", "4", "--reward", classifier,
            "--label", "NEGATIVE", "--max-new-tokens", "8"]
    data = run_json(capsys, *args)
    assert data["summary"]["reward_output"] == "probability"
    rewards = [r["reward"] for r in data["rows"]]
    assert all(0.0 <= p <= 1.0 for p in rewards)
    stats = data["summary"]["models"][models[0]]
    assert stats["share_above_half"] == sum(p >= 0.5 for p in rewards) / 4
    text = cli_run(capsys, *args).stdout
    summary = text.splitlines()[text.splitlines().index("summary: 1 prompt × 4 samples per model") + 1:]
    assert summary[0].split() == ["model", "mean", "reward", "share>=0.5"]
    assert summary[1].split()[-1] == f"{100 * stats['share_above_half']:.0f}%"
