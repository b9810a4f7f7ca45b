"""`rlhflab score`: one `value  text` line per text; reward sources that cannot load exit 2 with
one `error:` line and no traceback.

Each call imports torch (~1-3 s of CPU), so all cases start together in one module-scoped batch,
each in its own folder, and the tests read their results.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
from tests.helpers import assert_user_error, finish, start_cli


REWARD_FILE = """\
def reward(prompts, responses):
    return [len(r) for r in responses]


def with_prompt(prompts, responses):
    return [100 * len(p) + len(r) for p, r in zip(prompts, responses)]
"""

TEXTS = ["hello", "abc", "a b c d", "x"]

# ~300 words of a positive review, longer than the 32 tokens the test's reward model was trained on.
LONG_PROMPT = "A wonderful, moving film. " + " ".join(f"in scene {i} the cast was charming and the music fine" for i in range(30))
ANSWERS = ["A wonderful film.", "Dull and far too long."]

CASES = {
    "callable": ["--reward", "my_reward.py:reward", *TEXTS],
    "callable_flip_prompt": ["--reward", "my_reward.py:with_prompt", "--flip", "--prompt", "hi", *TEXTS],
    "missing_model": ["--reward", "./missing-model", "hello"],
    "unknown_label": ["--reward", "{bert}", "--label", "joy", "hello"],
    "long_prompt": ["--reward", "{reward32}", "--prompt", LONG_PROMPT, *ANSWERS],
    "answers_alone": ["--reward", "{reward32}", *ANSWERS],
}


def save_reward_model_trained_at_32(folder: Path, tokenizer_dir: Path) -> Path:
    """A reward model as `rlhflab reward` saves it, with reward.max_length=32 recorded."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rlhflab.models.reward_model import RewardMeta, save_reward_model

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1, id2label={0: "POSITIVE"}, label2id={"POSITIVE": 0},
                        initializer_range=0.5, pad_token_id=tokenizer.pad_token_id or 0)
    torch.manual_seed(0)
    meta = RewardMeta(objective="labels", gain=1.0, bias=0.0, reference="test", base_model="x", max_length=32)
    save_reward_model(BertForSequenceClassification(config).eval(), tokenizer, meta, folder / "model")
    return folder


def save_tiny_bert(folder: Path, tokenizer_dir: Path) -> Path:
    """A two-label text classifier whose first label is POSITIVE."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=2, id2label={0: "POSITIVE", 1: "NEGATIVE"}, label2id={"POSITIVE": 0, "NEGATIVE": 1},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer_dir) -> dict[str, subprocess.CompletedProcess]:
    started = {}

    models = {}

    def launch(name):
        folder = tmp_path_factory.mktemp(name)
        (folder / "my_reward.py").write_text(REWARD_FILE, encoding="utf-8")
        args = [models.get(a[1:-1], a) for a in CASES[name]]
        started[name] = start_cli(folder, "score", *args)

    def needs_model(name):
        return any(a[1:-1] in ("bert", "reward32") for a in CASES[name])

    for name in CASES:
        if not needs_model(name):
            launch(name)
    # Build the models while the first cases import torch.
    models["bert"] = str(save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), tiny_tokenizer_dir))
    models["reward32"] = str(save_reward_model_trained_at_32(tmp_path_factory.mktemp("reward-32"), tiny_tokenizer_dir))
    for name in CASES:
        if needs_model(name):
            launch(name)
    results = {}
    for name, process in started.items():
        results[name] = finish(process)
    return results



def parse_scores(stdout: str) -> list[tuple[float, str]]:
    rows = []
    for line in stdout.splitlines():
        value, sep, text = line.strip().partition("  ")
        assert sep, f"not a `value  text` line: {line!r}"
        rows.append((float(value), text))
    return rows


def test_callable_reward_prints_one_line_per_text(runs):
    result = runs["callable"]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert parse_scores(result.stdout) == [(float(len(t)), t) for t in TEXTS]
    assert result.stdout.splitlines()[0] == f"{5.0:9.4f}  hello"


def test_flip_negates_and_prompt_reaches_the_callable(runs):
    result = runs["callable_flip_prompt"]
    assert result.returncode == 0, result.stderr
    assert parse_scores(result.stdout) == [(-(200.0 + len(t)), t) for t in TEXTS]


def test_missing_reward_folder_is_one_error_line(runs):
    assert_user_error(runs["missing_model"], "missing-model", "does not exist")
    assert runs["missing_model"].stdout == ""


def test_unknown_classifier_label_names_the_available_labels(runs):
    line = assert_user_error(runs["unknown_label"], "'joy'", "POSITIVE, NEGATIVE")
    assert runs["unknown_label"].stdout == ""
    assert "reward_fn.label" in line


def test_scores_from_the_cli_match_the_library(runs, tmp_path):
    """The callable run printed what build_reward returns in-process (same parse, same values)."""
    from rlhflab.config import RewardFnConfig
    from rlhflab.rewards import build_reward

    (tmp_path / "my_reward.py").write_text(REWARD_FILE, encoding="utf-8")
    reward = build_reward(RewardFnConfig(source=f"{tmp_path / 'my_reward.py'}:with_prompt", flip=True))
    expected = reward(["hi"] * len(TEXTS), TEXTS).tolist()
    printed = [value for value, _ in parse_scores(runs["callable_flip_prompt"].stdout)]
    assert all(math.isclose(a, b, abs_tol=5e-5) for a, b in zip(printed, expected)) and len(printed) == len(expected)


def test_a_reward_model_scores_at_its_training_length_and_says_when_the_prompt_fills_it(runs):
    """Issue 19: scoring read 512 tokens of a model trained on 256, so the prompt, not the answer,
    decided the score. Now the CLI reads the recorded 32 tokens and notes the crowding prompt."""
    import torch

    from rlhflab.data import join_prompt_response
    from rlhflab.models.reward_model import load_reward_model

    result = runs["long_prompt"]
    assert result.returncode == 0, result.stderr
    printed = parse_scores(result.stdout)
    assert [text for _, text in printed] == ANSWERS
    folder = Path(result.args[result.args.index("--reward") + 1])
    model, tokenizer, meta = load_reward_model(folder)
    assert meta.max_length == 32
    for value, answer in printed:  # the model on the last 32 tokens: the whole answer, the prompt's end
        ids = tokenizer(join_prompt_response(LONG_PROMPT, answer))["input_ids"][-32:]
        with torch.no_grad():
            assert value == pytest.approx(model(input_ids=torch.tensor([ids])).logits[0, 0].item(), abs=1e-4)
    notes = result.stderr.splitlines()
    assert len(notes) == 1 and notes[0].startswith(
        "note: in 2 of 2 texts the prompt took more than half of the 32 tokens the reward reads "
        "(the length it was trained on, reward.max_length; up to "), result.stderr
    assert "2 prompts cut from the front" in notes[0] and notes[0].endswith("leave out --prompt to score each text alone.")


def test_answers_scored_alone_carry_no_note(runs):
    result = runs["answers_alone"]
    assert result.returncode == 0, result.stderr
    assert [text for _, text in parse_scores(result.stdout)] == ANSWERS and result.stderr == ""
