"""rlhflab/eval/side_by_side.py without models: the best-of-n KL bound, best-of selection, prompt files, text layout."""

from __future__ import annotations

import json
import math

import pytest

from rlhflab.errors import RlhfLabError
from rlhflab.data.prompts import read_prompts
from rlhflab.eval.side_by_side import SideBySide, best_of_n_kl, format_text, select_best, to_json


def test_best_of_n_kl_hand_values():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    assert best_of_n_kl(16) == pytest.approx(2.772588722 - 0.9375)
    for bad in (0, -3):
        with pytest.raises(RlhfLabError, match="n >= 1"):
            best_of_n_kl(bad)


def test_select_best_keeps_the_maximum_of_each_group():
    rewards = [0.1, 0.9, 0.3, 0.2,   5.0, -1.0, 4.0, 5.0,   -2.0, -3.0, -1.5, -9.0]
    best = select_best(rewards, 4)
    assert best == [1, 4, 10]  # a tie keeps the first drawn
    for group, index in enumerate(best):
        assert rewards[index] == max(rewards[4 * group:4 * group + 4])
    assert select_best([3.0, 1.0], 1) == [0, 1]  # best of 1 keeps everything
    with pytest.raises(RlhfLabError, match="groups of 4"):
        select_best([1.0] * 6, 4)


def test_read_prompts_txt_skips_and_counts_blank_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("I went to see this film\n\n   \nAn absolute masterpiece of \n", encoding="utf-8")
    prompts, groups, notes = read_prompts(path)
    assert prompts == ["I went to see this film", "An absolute masterpiece of "]  # a trailing space is part of it
    assert groups is None
    assert notes == [f"skipped 2 blank lines in {path}"]


def test_read_prompts_tables_with_and_without_groups(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "Bad", "group": "negative"}\n{"prompt": "Good", "group": "positive"}\n'
                     '{"prompt": "", "group": "x"}\n', encoding="utf-8")
    assert read_prompts(jsonl) == (["Bad", "Good"], ["negative", "positive"], [f"skipped 1 row with an empty prompt in {jsonl}"])
    csv = tmp_path / "p.csv"
    csv.write_text("prompt\nOne\nTwo\n", encoding="utf-8")
    assert read_prompts(csv) == (["One", "Two"], None, [])


def test_read_prompts_errors_name_the_fix(tmp_path):
    with pytest.raises(RlhfLabError, match="was not found"):
        read_prompts(tmp_path / "missing.txt")
    wrong = tmp_path / "p.jsonl"
    wrong.write_text('{"text": "a", "label": 1}\n', encoding="utf-8")
    with pytest.raises(RlhfLabError, match=r"no 'prompt' column \(its columns: text, label\)"):
        read_prompts(wrong)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(RlhfLabError, match="holds no prompts"):
        read_prompts(empty)
    other = tmp_path / "p.parquet"
    other.write_bytes(b"")
    with pytest.raises(RlhfLabError, match="unsupported type"):
        read_prompts(other)
    listed = tmp_path / "listed.jsonl"
    listed.write_text('{"prompt": "fine"}\n{"prompt": ["a", "b"]}\n', encoding="utf-8")
    with pytest.raises(RlhfLabError, match=r"column 'prompt' of .*listed\.jsonl holds a list, not text, at line 2"):
        read_prompts(listed)


def test_the_prompt_study_example_has_three_groups_of_five():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "prompt-study.jsonl"
    prompts, groups, notes = read_prompts(path)
    assert notes == []
    assert {g: groups.count(g) for g in groups} == {"negative": 5, "neutral": 5, "positive": 5}
    assert all(3 <= len(p.split()) <= 6 for p in prompts)


def _result(best_of=None) -> SideBySide:
    rows = []
    for p, prompt in enumerate(["Good", "Bad"]):
        for model, base in (("a", 0.2), ("b", 0.7)):
            for s in range(2):
                row = {"prompt": prompt, "prompt_index": p, "group": ["positive", "negative"][p], "model": model,
                       "sample": s, "response": f" sample {s} of {model}\nnext line " + "word " * 40,
                       "reward": base + 0.1 * s, "judges": {"vader": -0.5}}
                if best_of:
                    row |= {"best_of": best_of, "mean_of_n": base, "candidate_rewards": [base] * best_of}
                rows.append(row)

    def stats(base):
        out = {"samples": 4, "mean_reward": base + 0.05, "share_above_half": float(base > 0.5),
               "judges": {"vader": {"mean": -0.5}}}
        return out | ({"mean_of_n": base, "drawn": 4 * best_of, "best_of_n_kl": best_of_n_kl(best_of)} if best_of else {})

    summary = {"models": {m: stats(b) | {"by_group": {"positive": stats(b), "negative": stats(b)}}
                          for m, b in (("a", 0.2), ("b", 0.7))}}
    return SideBySide(["a", "b"], ["Good", "Bad"], ["positive", "negative"], rows, summary, 2, best_of,
                      "clf (classifier, probability)", "probability", ["vader"])


def test_format_text_groups_prompts_wraps_and_summarises():
    text = format_text(_result(), width=80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert text.index("=== positive") < text.index("[1/2] 'Good'") < text.index("=== negative") < text.index("[2/2] 'Bad'")
    assert "⏎" in text and "…" in text  # newlines shown, long responses cut after 3 lines
    assert "   reward    vader" in text
    assert lines[-6:] == ["by group:",
                          "  model  group     samples  mean reward  share>=0.5   vader",
                          "  a      positive        4        0.250          0%  -0.500",
                          "  a      negative        4        0.250          0%  -0.500",
                          "  b      positive        4        0.750        100%  -0.500",
                          "  b      negative        4        0.750        100%  -0.500"]
    first = lines.index("  a") + 1  # the first sample of model a: its scores, then its text, wrapped
    assert lines[first].startswith("        0.200   -0.500  sample 0 of a ⏎ next line word")
    assert lines[first + 1].startswith(" " * 24 + "word")
    summary = lines[lines.index("summary: 2 prompts × 2 samples per model") + 1:]
    assert summary[0].split() == ["model", "mean", "reward", "share>=0.5", "vader"]
    assert summary[1].split() == ["a", "0.250", "0%", "-0.500"]
    assert summary[2].split() == ["b", "0.750", "100%", "-0.500"]


def test_format_text_best_of_shows_the_mean_of_n_and_the_kl_bound():
    text = format_text(_result(best_of=4), width=100)
    assert f"KL bound {best_of_n_kl(4):.3f} nats" in text
    assert "     best   mean/4    vader" in text
    assert any(line.split()[:1] == ["a"] and f"{best_of_n_kl(4):.3f}" in line for line in text.splitlines())


def test_to_json_is_one_document():
    data = json.loads(to_json(_result()))
    assert set(data) == {"prompts", "groups", "models", "rows", "summary", "notes"}
    assert data["rows"][0]["judges"] == {"vader": -0.5}
