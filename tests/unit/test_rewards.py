"""Reward functions: label lookup, logits -> reward, and the three sources (classifier, trained
reward model, Python callable) checked against scores computed directly with the model."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rlhflab.config import RewardFnConfig
from rlhflab.errors import RlhfLabError
from rlhflab.models.reward_model import META_FILE, RewardMeta, save_reward_model
from rlhflab.rewards import RewardFunction, build_reward, label_index, load_callable, logits_to_reward

TEXTS = [
    "the film was great and the cast was charming.",
    "awful.",
    "the plot was dull and the ending was weak and the acting was bad and the script was tedious.",
    "the story was moving",
]
PROMPT = "the movie was"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# label_index


def test_label_index_is_case_insensitive():
    id2label = {0: "NEGATIVE", 1: "POSITIVE"}
    assert label_index(id2label, "POSITIVE") == 1
    assert label_index(id2label, "positive") == 1
    assert label_index(id2label, "Negative") == 0
    assert label_index({0: "neg", 1: "pos"}, "POS") == 1


def test_label_index_uses_names_not_positions():
    assert label_index({0: "POSITIVE", 1: "NEGATIVE"}, "POSITIVE") == 0
    assert label_index({0: "POSITIVE", 1: "NEGATIVE"}, "NEGATIVE") == 1
    assert label_index({2: "joy", 0: "anger", 1: "fear"}, "joy") == 2


def test_label_index_returns_an_int_for_string_keys():
    index = label_index({"0": "NEGATIVE", "1": "POSITIVE"}, "positive")
    assert index == 1 and isinstance(index, int)


def test_unknown_label_lists_the_model_labels():
    with pytest.raises(RlhfLabError) as info:
        label_index({0: "LABEL_0", 1: "LABEL_1"}, "POSITIVE")
    message = str(info.value)
    assert "'POSITIVE'" in message
    assert "LABEL_0, LABEL_1" in message
    assert "reward_fn.label" in message


# ---------------------------------------------------------------------------------------------
# logits_to_reward


def test_two_label_logits_to_reward_hand_values():
    logits = torch.tensor([[1.0, 3.0], [0.5, -0.5]])
    e = math.exp
    # probability: softmax column
    assert logits_to_reward(logits, 0, "probability").tolist() == pytest.approx([e(1) / (e(1) + e(3)), e(0.5) / (e(0.5) + e(-0.5))])
    assert logits_to_reward(logits, 1, "probability").tolist() == pytest.approx([e(3) / (e(1) + e(3)), e(-0.5) / (e(0.5) + e(-0.5))])
    # logit: raw value
    assert logits_to_reward(logits, 0, "logit").tolist() == pytest.approx([1.0, 0.5])
    assert logits_to_reward(logits, 1, "logit").tolist() == pytest.approx([3.0, -0.5])
    # logit_diff: l_i - l_other
    assert logits_to_reward(logits, 0, "logit_diff").tolist() == pytest.approx([-2.0, 1.0])
    assert logits_to_reward(logits, 1, "logit_diff").tolist() == pytest.approx([2.0, -1.0])


def test_two_label_logit_diff_is_log_odds_of_the_probability():
    logits = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    p = logits_to_reward(logits, 1, "probability")
    assert torch.allclose(logits_to_reward(logits, 1, "logit_diff"), torch.log(p / (1 - p)), atol=1e-5)


def test_three_label_logit_diff_subtracts_logsumexp_of_the_others():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    for index in range(3):
        expected = []
        for row in logits.tolist():
            others = [v for j, v in enumerate(row) if j != index]
            expected.append(row[index] - math.log(sum(math.exp(v) for v in others)))
        assert logits_to_reward(logits, index, "logit_diff").tolist() == pytest.approx(expected, rel=1e-6)
    probs = logits_to_reward(logits, 2, "probability")
    assert probs.tolist() == pytest.approx(torch.softmax(logits, -1)[:, 2].tolist())
    assert logits_to_reward(logits, 1, "logit").tolist() == pytest.approx([2.0, -1.0])


def test_one_output_head_is_sigmoid_or_raw():
    logits = torch.tensor([[0.0], [2.0], [-1.5]])
    sig = [1 / (1 + math.exp(-v)) for v in (0.0, 2.0, -1.5)]
    assert logits_to_reward(logits, 0, "probability").tolist() == pytest.approx(sig)
    assert logits_to_reward(logits, 0, "logit").tolist() == pytest.approx([0.0, 2.0, -1.5])


def test_logits_to_reward_returns_float32_rows():
    logits = torch.tensor([[1.0, 3.0]], dtype=torch.bfloat16)
    out = logits_to_reward(logits, 0, "probability")
    assert out.dtype == torch.float32 and out.shape == (1,)


# ---------------------------------------------------------------------------------------------
# Classifier source: a tiny BERT with labels in reversed order (POSITIVE first)


def _tokenizer(folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tiny_bert(tokenizer, num_labels: int, id2label: dict):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()},
        initializer_range=0.5,  # scores that differ visibly between texts
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


@torch.no_grad()
def _direct_logits(model, tokenizer, texts) -> torch.Tensor:
    """Logits computed one text at a time (no padding at all)."""
    return torch.cat([model(**tokenizer(text, return_tensors="pt")).logits for text in texts]).float()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp("tiny-bert-classifier")
    tokenizer = _tokenizer(tiny_tokenizer_dir)
    model = _tiny_bert(tokenizer, 2, {0: "POSITIVE", 1: "NEGATIVE"})
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def classifier_reward(folder, **kwargs):
    return build_reward(RewardFnConfig(source=str(folder), **kwargs))


def test_classifier_probability_matches_the_model(classifier):
    folder, model, tokenizer = classifier
    reward = classifier_reward(folder, label="POSITIVE", text="response")
    assert "classifier" in reward.description
    scores = reward([""] * len(TEXTS), TEXTS)
    assert scores.shape == (len(TEXTS),) and scores.dtype == torch.float32
    expected = torch.softmax(_direct_logits(model, tokenizer, TEXTS), -1)[:, 0]
    assert torch.allclose(scores, expected, atol=1e-5)
    assert scores.std() > 1e-3  # the texts really score differently


def test_a_model_that_is_no_classifier_is_refused_not_given_a_random_head(tiny_llama_dir):
    # A causal LM (say an SFT run) as a reward or gold judge loaded with a freshly initialised head.
    with pytest.raises(RlhfLabError, match="is not a text classifier .*LlamaForCausalLM.*random"):
        build_reward(RewardFnConfig(source=str(tiny_llama_dir), kind="classifier", label="LABEL_1"))


def test_classifier_label_is_found_by_name(classifier):
    folder, model, tokenizer = classifier
    positive = classifier_reward(folder, label="positive", text="response")([""] * 4, TEXTS)
    negative = classifier_reward(folder, label="NEGATIVE", text="response")([""] * 4, TEXTS)
    assert torch.allclose(negative, 1 - positive, atol=1e-5)
    expected = torch.softmax(_direct_logits(model, tokenizer, TEXTS), -1)[:, 1]
    assert torch.allclose(negative, expected, atol=1e-5)


def test_classifier_flip_gives_one_minus_probability(classifier):
    folder, _, _ = classifier
    plain = classifier_reward(folder, text="response")([""] * 4, TEXTS)
    flipped = classifier_reward(folder, text="response", flip=True)
    assert "flipped" in flipped.description
    assert torch.allclose(flipped([""] * 4, TEXTS), 1 - plain, atol=1e-6)


def test_classifier_logit_outputs(classifier):
    folder, model, tokenizer = classifier
    logits = _direct_logits(model, tokenizer, TEXTS)
    diff = classifier_reward(folder, output="logit_diff", text="response")([""] * 4, TEXTS)
    assert torch.allclose(diff, logits[:, 0] - logits[:, 1], atol=1e-5)
    raw = classifier_reward(folder, output="logit", text="response")([""] * 4, TEXTS)
    assert torch.allclose(raw, logits[:, 0], atol=1e-5)
    flipped = classifier_reward(folder, output="logit_diff", text="response", flip=True)([""] * 4, TEXTS)
    assert torch.allclose(flipped, -diff, atol=1e-6)


def test_classifier_rejects_score_output(classifier):
    folder, _, _ = classifier
    with pytest.raises(RlhfLabError, match="output=score"):
        classifier_reward(folder, output="score")


def test_classifier_unknown_label_names_the_labels(classifier):
    folder, _, _ = classifier
    with pytest.raises(RlhfLabError, match="POSITIVE, NEGATIVE"):
        classifier_reward(folder, label="joy")


def test_classifier_text_setting_decides_what_the_model_reads(classifier):
    folder, model, tokenizer = classifier
    prompts = [PROMPT] * len(TEXTS)
    response_only = classifier_reward(folder, text="response")(prompts, TEXTS)
    joined = classifier_reward(folder, text="prompt+response")(prompts, TEXTS)
    assert not torch.allclose(response_only, joined, atol=1e-4)
    expected = torch.softmax(_direct_logits(model, tokenizer, [f"{PROMPT} {t}" for t in TEXTS]), -1)[:, 0]
    assert torch.allclose(joined, expected, atol=1e-5)
    # an empty prompt adds nothing
    empty = [""] * len(TEXTS)
    assert torch.allclose(
        classifier_reward(folder, text="response")(empty, TEXTS),
        classifier_reward(folder, text="prompt+response")(empty, TEXTS),
        atol=1e-6,
    )


def test_classifier_scores_do_not_depend_on_batch_padding(classifier):
    folder, _, _ = classifier
    prompts = [PROMPT] * len(TEXTS)
    one = classifier_reward(folder, batch_size=1)(prompts, TEXTS)
    eight = classifier_reward(folder, batch_size=8)(prompts, TEXTS)
    three = classifier_reward(folder, batch_size=3)(prompts, TEXTS)
    assert torch.allclose(one, eight, atol=1e-5)
    assert torch.allclose(one, three, atol=1e-5)


def test_classifier_truncates_long_texts(classifier):
    folder, model, tokenizer = classifier
    long_text = " ".join(["the film was great"] * 400)  # far past BERT's 512 positions
    reward = classifier_reward(folder, max_length=16, text="response")
    score = reward([""], [long_text])
    ids = tokenizer(long_text, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(model(**ids).logits, -1)[:, 0]
    assert torch.allclose(score, expected, atol=1e-5)


def test_classifier_that_cannot_load_is_one_error(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(RlhfLabError, match="not-a-model"):
        build_reward(RewardFnConfig(source=str(tmp_path / "not-a-model")), device="cpu")
    with pytest.raises(RlhfLabError, match="does not exist"):
        build_reward(RewardFnConfig(source=str(tmp_path / "missing")), device="cpu")


def test_no_source_is_an_error():
    with pytest.raises(RlhfLabError, match="reward_fn.source"):
        build_reward(RewardFnConfig())


def test_hf_prefix_always_means_a_classifier(classifier, monkeypatch, tmp_path):
    folder, _, _ = classifier
    import shutil

    shutil.copytree(folder, tmp_path / "mymodel")
    monkeypatch.chdir(tmp_path)
    reward = build_reward(RewardFnConfig(source="hf:mymodel", text="response"))
    assert "classifier" in reward.description


# ---------------------------------------------------------------------------------------------
# Trained reward model source: one output, gain and bias in rlhflab_reward.json


@pytest.fixture(scope="module")
def reward_runs(tmp_path_factory, tiny_tokenizer_dir):
    """{objective: (run directory, raw logits of TEXTS)} for reward models saved as `rlhflab reward` does."""
    tokenizer = _tokenizer(tiny_tokenizer_dir)
    model = _tiny_bert(tokenizer, 1, {0: "POSITIVE"})
    logits = _direct_logits(model, tokenizer, TEXTS)[:, 0]
    runs = {}
    for objective in ("labels", "pairs"):
        run = tmp_path_factory.mktemp(f"reward-{objective}")
        meta = RewardMeta(objective=objective, gain=2.0, bias=-1.0, reference="test", base_model="x")
        save_reward_model(model, tokenizer, meta, run / "model")
        runs[objective] = (run, logits)
    return runs


@pytest.mark.parametrize("where", ["model folder", "run directory"])
def test_reward_model_is_detected_in_its_folder_or_run_directory(reward_runs, where):
    run, logits = reward_runs["labels"]
    assert (run / "model" / META_FILE).is_file()
    source = run / "model" if where == "model folder" else run
    reward = build_reward(RewardFnConfig(source=str(source), text="response"))
    assert "reward_model" in reward.description
    scores = reward([""] * len(TEXTS), TEXTS)
    assert torch.allclose(scores, 2.0 * logits - 1.0, atol=1e-5)
    assert logits.std() > 1e-3


def test_reward_model_outputs(reward_runs):
    run, logits = reward_runs["labels"]

    def scores(**kwargs):
        return build_reward(RewardFnConfig(source=str(run), text="response", **kwargs))([""] * 4, TEXTS)

    assert torch.allclose(scores(output="score"), 2.0 * logits - 1.0, atol=1e-5)
    assert torch.allclose(scores(output="probability"), torch.sigmoid(logits), atol=1e-5)
    assert torch.allclose(scores(output="logit"), logits, atol=1e-5)
    assert torch.allclose(scores(flip=True), -(2.0 * logits - 1.0), atol=1e-5)
    assert torch.allclose(scores(output="probability", flip=True), 1 - torch.sigmoid(logits), atol=1e-5)


def test_pairwise_reward_model_scores_without_probability(reward_runs):
    run, logits = reward_runs["pairs"]
    reward = build_reward(RewardFnConfig(source=str(run), text="response"))
    assert torch.allclose(reward([""] * 4, TEXTS), 2.0 * logits - 1.0, atol=1e-5)
    with pytest.raises(RlhfLabError, match="probability"):
        build_reward(RewardFnConfig(source=str(run), output="probability"), device="cpu")


@pytest.mark.parametrize("objective", ["labels", "pairs"])
def test_reward_model_rejects_logit_diff(reward_runs, objective):
    run, _ = reward_runs[objective]
    with pytest.raises(RlhfLabError, match="logit_diff"):
        build_reward(RewardFnConfig(source=str(run), output="logit_diff"), device="cpu")


def test_explicit_reward_model_kind_on_a_plain_folder_explains(tmp_path):
    with pytest.raises(RlhfLabError, match=META_FILE):
        build_reward(RewardFnConfig(source=str(tmp_path), kind="reward_model"), device="cpu")


# ---------------------------------------------------------------------------------------------
# Callable source


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


@pytest.fixture
def length_file(tmp_path) -> Path:
    return write(
        tmp_path / "my_reward.py",
        """
        def reward(prompts, responses):
            return [len(r) for r in responses]

        def with_prompt(prompts, responses):
            return [len(p) * 100 + len(r) for p, r in zip(prompts, responses)]

        not_a_function = 3
        """,
    )


def test_callable_file_is_detected_and_called(length_file):
    reward = build_reward(RewardFnConfig(source=f"{length_file}:reward"))
    assert "callable" in reward.description
    scores = reward(["p", "q", "r"], ["a", "bcd", ""])
    assert scores.dtype == torch.float32
    assert scores.tolist() == [1.0, 3.0, 0.0]


def test_callable_receives_prompts_and_responses_in_order(length_file):
    reward = build_reward(RewardFnConfig(source=f"{length_file}:with_prompt"))
    assert reward(["ab", ""], ["xyz", "q"]).tolist() == [203.0, 1.0]


def test_callable_relative_file_path(length_file, monkeypatch):
    monkeypatch.chdir(length_file.parent)
    reward = build_reward(RewardFnConfig(source="my_reward.py:reward"))
    assert reward(["", ""], ["hello", "hi"]).tolist() == [5.0, 2.0]


def test_callable_module_function_form(tmp_path, monkeypatch):
    write(tmp_path / "rlhflab_test_mod_reward.py", "def reward(prompts, responses):\n    return [len(r) for r in responses]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rlhflab_test_mod_reward", raising=False)
    try:
        reward = build_reward(RewardFnConfig(source="rlhflab_test_mod_reward:reward"))
        assert "callable" in reward.description
        assert reward(["", ""], ["four", "seven!!"]).tolist() == [4.0, 7.0]
    finally:
        sys.modules.pop("rlhflab_test_mod_reward", None)


def test_callable_dotted_module_path():
    fn = load_callable("os.path:basename")
    assert fn("/a/b.txt") == "b.txt"


def test_callable_flip_negates(length_file):
    reward = build_reward(RewardFnConfig(source=f"{length_file}:reward", flip=True))
    assert reward(["", ""], ["abc", "de"]).tolist() == [-3.0, -2.0]


def test_callable_returning_a_tensor_or_generator(tmp_path):
    path = write(
        tmp_path / "kinds.py",
        """
        import torch

        def tensor(prompts, responses):
            return torch.arange(len(responses), dtype=torch.float64, requires_grad=True) * 2

        def generator(prompts, responses):
            return (float(len(r)) for r in responses)
        """,
    )
    assert build_reward(RewardFnConfig(source=f"{path}:tensor"))(["", "", ""], ["a", "b", "c"]).tolist() == [0.0, 2.0, 4.0]
    assert build_reward(RewardFnConfig(source=f"{path}:generator"))(["", ""], ["ab", "c"]).tolist() == [2.0, 1.0]


BAD_RETURNS = {
    "wrong_length": ("[1.0]", "one number per response"),
    "too_many": ("[1.0, 2.0, 3.0]", "one number per response"),
    "nan": "[float('nan'), 1.0]",
    "inf": "[1.0, float('inf')]",
    "string": ("'good'", "not a list of numbers"),
    "strings": ("['1', '2']", "not a list of numbers"),
    "none": ("None", "not a list of numbers"),
    "two_d": ("[[1.0], [2.0]]", "one number per response"),
    "two_d_wide": ("[[1.0, 2.0], [3.0, 4.0]]", "one number per response"),
    "ragged": ("[[1.0, 2.0], [3.0]]", "not a list of numbers"),
    "scalar": ("3.0", "not a list of numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_RETURNS))
def test_callable_bad_returns_are_clear_errors(tmp_path, case):
    value = BAD_RETURNS[case]
    expression, fragment = value if isinstance(value, tuple) else (value, "non-finite")
    path = write(tmp_path / "bad.py", f"def reward(prompts, responses):\n    return {expression}\n")
    reward = build_reward(RewardFnConfig(source=f"{path}:reward"))
    with pytest.raises(RlhfLabError) as info:
        reward(["", ""], ["a", "b"])
    message = str(info.value)
    assert fragment in message
    assert f"{path}:reward" in message  # says which reward


def test_missing_reward_file(tmp_path):
    with pytest.raises(RlhfLabError, match="does not exist"):
        build_reward(RewardFnConfig(source=f"{tmp_path / 'nope.py'}:reward"))


def test_missing_function_in_file(length_file):
    with pytest.raises(RlhfLabError, match="no function 'score'"):
        build_reward(RewardFnConfig(source=f"{length_file}:score"))
    with pytest.raises(RlhfLabError, match="no function 'not_a_function'"):
        build_reward(RewardFnConfig(source=f"{length_file}:not_a_function"))


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("import rlhflab_no_such_package\n", "ModuleNotFoundError"),
        ("raise RuntimeError('boom at import')\n", "boom at import"),
        ("def reward(:\n", "SyntaxError"),
    ],
)
def test_error_while_importing_the_file(tmp_path, body, fragment):
    path = write(tmp_path / "broken.py", body)
    with pytest.raises(RlhfLabError) as info:
        build_reward(RewardFnConfig(source=f"{path}:reward"))
    assert fragment in str(info.value)
    assert "broken.py" in str(info.value)


def test_missing_module(monkeypatch):
    with pytest.raises(RlhfLabError, match="rlhflab_no_such_module"):
        build_reward(RewardFnConfig(source="rlhflab_no_such_module:reward"))


@pytest.mark.parametrize("body", ["raise RuntimeError('boom at import')\n", "def reward(:\n"])
def test_error_while_importing_a_module_is_one_error(tmp_path, monkeypatch, body):
    name = "rlhflab_test_broken_reward_mod"
    write(tmp_path / f"{name}.py", body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(RlhfLabError, match=name):
        build_reward(RewardFnConfig(source=f"{name}:reward"))


def test_missing_function_in_module():
    with pytest.raises(RlhfLabError, match="no function 'no_such_fn'"):
        load_callable("os.path:no_such_fn")


def test_reward_function_checks_lengths_and_handles_empty_input():
    calls = []

    def score(prompts, responses):
        calls.append(len(responses))
        return [1.0] * len(responses)

    reward = RewardFunction("test", score)
    with pytest.raises(RlhfLabError, match="2 prompts but 1 responses"):
        reward(["a", "b"], ["x"])
    empty = reward([], [])
    assert isinstance(empty, torch.Tensor) and empty.shape == (0,)
    assert calls == []  # the source is not asked about nothing
    assert reward(("a",), ("x",)).tolist() == [1.0]  # any sequence


def test_reward_function_result_is_detached_on_cpu():
    weights = torch.ones(2, requires_grad=True)
    reward = RewardFunction("test", lambda p, r: weights * 3)
    out = reward(["", ""], ["a", "b"])
    assert not out.requires_grad
    assert out.device.type == "cpu"
    assert out.tolist() == [3.0, 3.0]


# ---------------------------------------------------------------------------------------------
# A reward model scores at the length it was trained on (issue 19, §4)

LONG_PROMPT = " ".join(f"we sat in row {i} and the seat was near the door" for i in range(30))  # ~300 words


@pytest.fixture(scope="module")
def trained_at_16(tmp_path_factory, tiny_tokenizer_dir):
    """(run stage folder, model, tokenizer): a reward model whose rlhflab_reward.json records max_length=16."""
    tokenizer = _tokenizer(tiny_tokenizer_dir)
    model = _tiny_bert(tokenizer, 1, {0: "POSITIVE"})
    run = tmp_path_factory.mktemp("reward-16")
    meta = RewardMeta(objective="labels", gain=2.0, bias=-1.0, reference="test", base_model="x", max_length=16)
    save_reward_model(model, tokenizer, meta, run / "model")
    return run, model, tokenizer


def _score_of_last_tokens(model, tokenizer, prompt, response, length) -> float:
    """2 * logit - 1 of the model on the last `length` tokens of prompt + response."""
    from rlhflab.data import join_prompt_response

    ids = tokenizer(join_prompt_response(prompt, response))["input_ids"][-length:]
    with torch.no_grad():
        return 2.0 * model(input_ids=torch.tensor([ids])).logits[0, 0].item() - 1.0


def test_a_reward_model_scores_at_its_training_length_not_reward_fn_max_length(trained_at_16):
    run, model, tokenizer = trained_at_16
    reward = build_reward(RewardFnConfig(source=str(run)))  # reward_fn.max_length: the default 512
    responses = ["the film was great and the cast was charming.", "dull."]
    scores = reward([LONG_PROMPT] * 2, responses).tolist()
    assert reward.reads.max_length == 16 and "reads 16 tokens" in reward.description
    for response, value in zip(responses, scores):
        assert value == pytest.approx(_score_of_last_tokens(model, tokenizer, LONG_PROMPT, response, 16), abs=1e-4)
    # Reading 512 tokens (what scoring did before) gives other numbers.
    assert scores[1] != pytest.approx(_score_of_last_tokens(model, tokenizer, LONG_PROMPT, responses[1], 512), abs=1e-3)


def test_reward_fn_max_length_only_shortens_what_a_reward_model_reads(trained_at_16):
    run, _, _ = trained_at_16
    shorter = build_reward(RewardFnConfig(source=str(run), max_length=8))
    assert (shorter.reads.max_length, shorter.reads.limited_by) == (8, "reward_fn.max_length")
    longer = build_reward(RewardFnConfig(source=str(run), max_length=64))
    assert (longer.reads.max_length, longer.reads.limited_by) == (16, "the length it was trained on, reward.max_length")


def test_a_model_saved_before_the_length_was_recorded_takes_it_from_its_run_config(tmp_path, trained_at_16):
    import json
    import shutil

    run, _, _ = trained_at_16
    old = tmp_path / "reward"
    shutil.copytree(run / "model", old / "model")
    meta = json.loads((old / "model" / META_FILE).read_text())
    del meta["max_length"]
    (old / "model" / META_FILE).write_text(json.dumps(meta))
    # No config.yaml beside it: reward_fn.max_length and the tokenizer's limit are all there is.
    assert build_reward(RewardFnConfig(source=str(old), max_length=40)).reads.max_length == 40
    (old / "config.yaml").write_text("name: old\nreward:\n  max_length: 24\n  epochs: 1\n")
    assert build_reward(RewardFnConfig(source=str(old), max_length=40)).reads.max_length == 24


def test_texts_whose_prompt_takes_most_of_the_budget_are_counted_and_said(trained_at_16):
    run, _, _ = trained_at_16
    reward = build_reward(RewardFnConfig(source=str(run)))
    reward([LONG_PROMPT, "so:", ""], ["great.", "great.", "great."])
    assert reward.reads.summary() == {"max_length": 16, "limited_by": "the length it was trained on, reward.max_length",
                                      "texts": 3, "prompt_most": 1, "prompts_cut": 1, "responses_cut": 0}
    note = reward.reads.note()
    assert note.startswith("in 1 of 3 texts the prompt took more than half of the 16 tokens the reward reads")
    assert "1 prompt cut from the front" in note and f"up to {reward.reads.most_prompt_tokens} prompt tokens" in note
    assert 8 < reward.reads.most_prompt_tokens < 16


def test_scoring_the_response_alone_leaves_no_note(trained_at_16):
    run, _, _ = trained_at_16
    reward = build_reward(RewardFnConfig(source=str(run), text="response"))
    reward([LONG_PROMPT], ["great."])
    assert reward.reads.summary()["prompt_most"] == 0 and reward.reads.note() is None
    long_response = build_reward(RewardFnConfig(source=str(run), text="response"))
    long_response([""], [LONG_PROMPT])
    assert long_response.reads.responses_cut == 1
    assert "1 of 1 responses alone exceeded those 16 tokens" in long_response.reads.note()


# ---------------------------------------------------------------------------------------------
# A reward callable that raises, or returns something other than one number per response, is
# one clear RlhfLabError naming the function (issue 10, fault C).


SOURCE = """
def raises(prompts, responses):
    raise ValueError("no sentiment for an empty response")

def raises_multiline(prompts, responses):
    raise KeyError("first line\\nsecond line")

def keyed(prompts, responses):
    return {i: 1.0 for i in range(len(responses))}

def failing_generator(prompts, responses):
    yield 1.0
    raise RuntimeError("lost the connection")

def wrong_count(prompts, responses):
    return [0.5] * (len(responses) + 1)

def one_score(prompts, responses):
    return [0.5]

def one_number(prompts, responses):
    return 1

def one_nan(prompts, responses):
    return [float("nan"), 0.5]
"""


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(textwrap.dedent(SOURCE), encoding="utf-8")
    return path


def test_a_reward_function_that_raises_names_itself_and_chains_the_exception(reward_file):
    spec = f"{reward_file}:raises"
    with pytest.raises(RlhfLabError) as info:
        build_reward(RewardFnConfig(source=spec))(["p", "p"], ["a", ""])
    message = str(info.value)
    assert message.startswith(f"the reward function {spec} raised ValueError: no sentiment for an empty response.")
    assert "RLHFLAB_DEBUG=1" in message and "\n" not in message
    cause = info.value.__cause__
    assert isinstance(cause, ValueError) and str(cause) == "no sentiment for an empty response"
    assert cause.__traceback__ is not None  # the CLI prints it when RLHFLAB_DEBUG=1


def test_the_error_stays_one_line(reward_file):
    with pytest.raises(RlhfLabError) as info:
        build_reward(RewardFnConfig(source=f"{reward_file}:raises_multiline"))(["p"], ["a"])
    assert "raised KeyError: 'first line" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("keyed", "returned a dict, not a list of numbers"),
        ("failing_generator", "raised RuntimeError: lost the connection"),
        ("wrong_count", "returned 3 scores of shape (3,) for 2 responses"),
        ("one_score", "returned 1 score of shape (1,) for 2 responses"),
        ("one_number", "returned an int, not a list of numbers"),
        ("one_nan", "returned 1 non-finite score (nan or inf)"),
    ],
)
def test_bad_returns_are_errors(reward_file, name, fragment):
    with pytest.raises(RlhfLabError) as info:
        build_reward(RewardFnConfig(source=f"{reward_file}:{name}"))(["p", "p"], ["a", "b"])
    assert fragment in str(info.value) and f"{reward_file}:{name}" in str(info.value)

