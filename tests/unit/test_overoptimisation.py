"""The over-optimisation signals and rule, and the gold judges' calibration, on hand-made values."""

from __future__ import annotations

import math

import pytest

from rlhflab.config import RewardFnConfig, load_config
from rlhflab.errors import RlhfLabError
from rlhflab.eval.gold import VADER_POSITIVE, build_judge, calibrate, gain_check, vader
from rlhflab.eval.overoptimisation import gold_peak, onset, pieces, separator_ratio


def test_pieces_are_words_and_single_characters():
    assert pieces("Not bad, really.") == ["Not", " ", "bad", ",", " ", "really", "."]
    assert pieces("a  b\n") == ["a", " ", " ", "b", "\n"]


def test_separator_ratio_by_hand():
    # "Good film." -> Good, ' ', film, '.' : 2 of 4;  "greatgreat!" -> greatgreat, '!' : 0 of 2
    assert separator_ratio(["Good film."]) == 0.5
    assert separator_ratio(["Good film.", "greatgreat!"]) == pytest.approx(2 / 6)
    assert separator_ratio(["a,b"], separators=[","]) == pytest.approx(1 / 3)
    assert math.isnan(separator_ratio(["", ""]))
    with pytest.raises(RlhfLabError, match="single characters"):
        separator_ratio(["x"], separators=[", "])


def point(name, kl, proxy, gold, separators=0.5, distinct=0.9):
    return {"name": name, "kl": kl, "proxy": proxy, "gold": {"vader": gold}, "separator_ratio": separators,
            "distinct_2": distinct}


def test_onset_is_the_checkpoint_after_which_gold_falls_while_proxy_rises():
    points = [point("start", 0.0, 0.5, 0.4), point("epoch-1", 2.0, 0.7, 0.5), point("epoch-2", 4.0, 0.8, 0.55),
              point("epoch-3", 8.0, 0.9, 0.45), point("final", 9.0, 0.95, 0.3)]
    verdict = onset(points, gold_drop=0.05, separator_drop=0.25, diversity_drop=0.25)
    assert verdict["onset"] == "epoch-2" and verdict["kl"] == 4.0 and verdict["max_kl"] == 9.0
    assert verdict["reason"] == ("after epoch-2 vader fell from 0.550 to at most 0.450 and stayed there, while the proxy "
                                 "went 0.800 -> 0.950")


def test_a_gold_dip_that_recovers_is_noise_not_an_onset():
    points = [point("start", 0.0, 0.5, 0.1), point("epoch-1", 4.0, 0.88, 0.50), point("epoch-2", 5.0, 0.89, 0.42),
              point("epoch-3", 5.5, 0.90, 0.51), point("final", 6.0, 0.89, 0.46)]
    assert onset(points, gold_drop=0.05, separator_drop=0.25, diversity_drop=0.25)["onset"] is None


def test_a_gold_fall_within_the_margin_or_without_a_proxy_rise_is_not_an_onset():
    small = [point("start", 0.0, 0.5, 0.5), point("epoch-1", 1.0, 0.6, 0.47), point("final", 2.0, 0.7, 0.46)]
    both_fall = [point("start", 0.0, 0.5, 0.5), point("epoch-1", 1.0, 0.4, 0.3)]
    for points in (small, both_fall):
        verdict = onset(points, gold_drop=0.05, separator_drop=0.25, diversity_drop=0.25)
        assert verdict["onset"] is None
    assert onset(small, gold_drop=0.05, separator_drop=0.25, diversity_drop=0.25)["reason"] == "no over-optimisation seen up to KL 2.00 nats"
    assert onset(small, gold_drop=0.02, separator_drop=0.25, diversity_drop=0.25)["onset"] == "start"  # 0.5 -> 0.47 is a fall of 0.03


def test_a_separator_ratio_far_below_the_reference_is_an_onset():
    points = [point("start", 0.0, 0.5, 0.5, separators=0.40), point("epoch-1", 1.0, 0.6, 0.6, separators=0.31),
              point("epoch-2", 2.0, 0.7, 0.7, separators=0.29)]
    verdict = onset(points, gold_drop=0.05, separator_drop=0.25, diversity_drop=0.25)  # below 0.75 * 0.40 = 0.30
    assert verdict["onset"] == "epoch-2" and "separator ratio 0.290, reference 0.400" in verdict["reason"]


def test_repetition_that_keeps_the_separators_is_caught_by_distinct_2():
    # "great great great": as many spaces as ever, but few distinct bigrams
    points = [point("start", 0.0, 0.5, 0.5, distinct=0.94), point("epoch-1", 3.0, 0.8, 0.7, distinct=0.80),
              point("epoch-2", 20.0, 0.94, 0.95, distinct=0.61)]
    verdict = onset(points, gold_drop=0.05, separator_drop=0.25, diversity_drop=0.25)  # below 0.75 * 0.94 = 0.705
    assert verdict["onset"] == "epoch-2" and verdict["kl"] == 20.0
    assert verdict["reason"] == "distinct-2 0.610, reference 0.940"
    assert "distinct-2 is more than 25%" in verdict["rule"]


def test_gold_peak_is_the_highest_point_first_on_ties():
    points = [point("start", 0.0, 0.5, 0.4), point("epoch-1", 2.0, 0.7, 0.6), point("epoch-2", 4.0, 0.8, 0.6)]
    assert gold_peak(points) == {"vader": {"name": "epoch-1", "kl": 2.0, "value": 0.6}}


def test_gain_check_flags_a_gold_gain_under_half_the_proxy_gain():
    assert gain_check(0.5, 0.9, 0.5, 0.6)["disagree"]  # +0.4 against +0.1
    agree = gain_check(0.5, 0.9, 0.5, 0.75)  # +0.25 is more than half of +0.4
    assert not agree["disagree"] and agree["proxy_gain"] == pytest.approx(0.4) and agree["gold_gain"] == pytest.approx(0.25)
    assert not gain_check(0.5, 0.4, 0.5, 0.1)["disagree"]  # the proxy did not gain: nothing to contradict


def test_vader_judge_and_its_calibration_on_a_tiny_labelled_set():
    judge = build_judge("vader", "vader", RewardFnConfig(), device="cpu")
    assert judge.threshold == VADER_POSITIVE
    texts = ["A wonderful, moving film.", "Great acting and a lovely story.", "Dull, awful and boring.",
             "The worst movie I have seen.", "It is a film."]
    labels = [1, 1, 0, 0, 1]  # the last is neutral to VADER (compound 0): judged not positive, so wrong
    assert vader([""] * 5, texts)[4] == 0.0
    result = calibrate(judge, texts, labels)
    assert result == {"accuracy": 0.8, "n": 5, "threshold": VADER_POSITIVE, "predicted_positive": 0.4}
    with pytest.raises(RlhfLabError, match="needs labelled texts"):
        calibrate(judge, [], [])


def test_a_callable_judge_scores_and_a_classifier_source_error_is_clear(tmp_path):
    path = tmp_path / "judge.py"
    path.write_text("def long(prompts, responses):\n    return [len(r) - 5 for r in responses]\n")
    judge = build_judge("len", f"{path}:long", RewardFnConfig(), device="cpu")
    assert judge.threshold == 0.0 and judge.positive_rate([-1.0, 0.0, 3.0, -2.0]) == 0.5
    assert calibrate(judge, ["abcdefgh", "ab"], [1, 0])["accuracy"] == 1.0


def test_gold_and_overopt_settings_are_checked_when_the_config_loads():
    with pytest.raises(RlhfLabError, match="'proxy'"):
        load_config(None, ["evaluate.gold.proxy=vader"])
    with pytest.raises(RlhfLabError, match="single characters"):
        load_config(None, ["overopt.separators=[', ']"])
    with pytest.raises(RlhfLabError, match="separator_drop"):
        load_config(None, ["overopt.separator_drop=1.5"])
    cfg = load_config(None, ["evaluate.gold.vader=vader", "stages=[sft,reward,rl,evaluate,overopt]"])
    assert cfg.evaluate.gold == {"vader": "vader"} and cfg.stages[-1] == "overopt"


def test_the_study_key_does_not_hash_the_separators_as_folders(tmp_path, monkeypatch):
    # "." (the default's full stop) and "/" are folders too: hashed, they made the key read the whole
    # working folder (runs/ included), so the study was never up to date and every key took minutes.
    from rlhflab.stages.registry import stage_key

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [f"runs_dir={tmp_path / 'runs'}", "evaluate.gold.vader=vader",
                             "overopt.separators=['.', '/', '~', ',']"])
    before = stage_key(cfg, "overopt")
    assert not {".", "/", "~"} & set(before["references"])
    (tmp_path / "new-file.txt").write_text("the working folder changed")
    assert stage_key(cfg, "overopt")["key"] == before["key"]


def test_a_study_that_cannot_run_is_refused_when_the_config_loads(monkeypatch):
    # Not after SFT, the reward model and RL have trained.
    study = "stages=[sft,reward,rl,evaluate,overopt]"
    with pytest.raises(RlhfLabError, match="evaluate.gold is empty"):
        load_config(None, [study])
    with pytest.raises(RlhfLabError, match="snapshot_each_epoch"):
        load_config(None, [study, "evaluate.gold.vader=vader", "ppo.snapshot_each_epoch=false"])
    load_config(None, [study, "evaluate.gold.vader=vader", "ppo.snapshot_each_epoch=false", "overopt.run=elsewhere/ppo"])
    monkeypatch.setitem(__import__("sys").modules, "vaderSentiment", None)  # not installed
    with pytest.raises(RlhfLabError, match="evaluate.gold.v=vader needs the vadersentiment package"):
        load_config(None, ["evaluate.gold.v=VADER"])


def test_a_gold_judge_that_cannot_load_is_named():
    from rlhflab.eval.gold import build_gold

    with pytest.raises(RlhfLabError, match=r"^The gold judge evaluate.gold.second=/no/such/judge: .*does not exist"):
        build_gold({"vader": "vader", "second": "/no/such/judge"}, RewardFnConfig(), device="cpu")


def test_no_config_value_naming_the_working_folder_or_above_is_hashed(tmp_path, monkeypatch):
    from rlhflab.fingerprint import references

    (tmp_path / "data.csv").write_text("text,label\nfine,1\n")
    monkeypatch.chdir(tmp_path)
    found = references({"a": ".", "b": "..", "c": str(tmp_path), "d": "/", "e": "~", "f": "data.csv"})
    assert list(found) == ["data.csv"]


def test_calibration_data_errors_name_evaluate_gold_data(tmp_path):
    from rlhflab.stages.evaluate import calibration_set

    cfg = load_config(None, ["evaluate.gold.vader=vader", f"evaluate.gold_data={tmp_path / 'missing.csv'}"])
    with pytest.raises(RlhfLabError, match=r"^evaluate.gold_data=.*missing.csv: "):
        calibration_set(cfg)
    one_class = tmp_path / "happy.csv"
    one_class.write_text("text,label\nlovely,1\nsplendid,1\n")
    cfg.evaluate.gold_data = str(one_class)
    with pytest.raises(RlhfLabError, match="2 positive and 0 negative"):
        calibration_set(cfg)
