"""Head + tail truncation (rlhflab/models/encoding.py) and the matmul attention the reward stage
trains with on a CPU (rlhflab/models/reward_model.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhflab.errors import RlhfLabError
from rlhflab.models.encoding import encode, head_and_tail_ids
from rlhflab.models.attention import MATMUL_ATTENTION, use_matmul_attention
import json
from rlhflab.config import Config, DataConfig, PairsConfig, RewardConfig, RewardFnConfig
from rlhflab.data import join_prompt_response
from rlhflab.models.encoding import encode_prompt_response, prompt_response_ids
from rlhflab.rewards import build_reward
from rlhflab.stages.common import run_stage
from tests.helpers import FP32, synthetic_reviews

WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def bert_tokenizer(tiny_tokenizer_dir):
    """The tiny test tokenizer with BERT's [CLS] ... [SEP] added around every text."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.add_special_tokens({"cls_token": "[CLS]", "sep_token": "[SEP]"})
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    assert tokenizer("w1")["input_ids"][0] == cls
    return tokenizer


def _word_ids(tokenizer, words):
    return tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]


def test_head_and_tail_keeps_a_quarter_from_the_front_and_the_rest_from_the_end(bert_tokenizer):
    text = " ".join(WORDS)
    content = _word_ids(bert_tokenizer, WORDS)
    [row] = head_and_tail_ids([text], bert_tokenizer, 18)
    assert len(row) == 18
    assert row[0] == bert_tokenizer.cls_token_id and row[-1] == bert_tokenizer.sep_token_id
    budget = 16
    assert row[1:-1] == content[: budget // 4] + content[-(budget - budget // 4):]
    assert encode([text], bert_tokenizer, 18, keep="head+tail").input_ids[0].tolist() == row
    # the default cut keeps the beginning only
    assert encode([text], bert_tokenizer, 18).input_ids[0, 1:-1].tolist() == content[:16]


def test_texts_that_fit_are_read_whole_by_either_cut(bert_tokenizer):
    texts = ["w1 w2 w3", "", " ".join(WORDS[:10])]
    whole = bert_tokenizer(texts)["input_ids"]
    assert head_and_tail_ids(texts, bert_tokenizer, 64) == [list(ids) for ids in whole]
    assert torch.equal(encode(texts, bert_tokenizer, 64, keep="head+tail").input_ids, encode(texts, bert_tokenizer, 64).input_ids)


def test_head_and_tail_without_room_is_refused(bert_tokenizer):
    whole = list(bert_tokenizer("w1")["input_ids"])
    assert head_and_tail_ids(["w1"], bert_tokenizer, len(whole)) == [whole]  # fits: no cut needed
    with pytest.raises(RlhfLabError, match="max_length=3 leaves 1 tokens"):
        head_and_tail_ids([" ".join(WORDS)], bert_tokenizer, 3)


def _classifier(folder):
    from rlhflab.models.blocks import disable_dropout

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, attn_implementation="sdpa")
    disable_dropout(model)  # as the reward stage does by default; the two models must see the same inputs
    return model


@pytest.mark.parametrize("padded", [True, False])
def test_matmul_attention_gives_sdpa_outputs_and_gradients(tiny_bert_dir, padded):
    reference, model = _classifier(tiny_bert_dir), _classifier(tiny_bert_dir)
    assert use_matmul_attention(model) and model.config._attn_implementation == MATMUL_ATTENTION
    ids = torch.randint(5, 100, (4, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 7:] = 0
        mask[3, 2:] = 0
    outputs = []
    for m in (reference, model):
        m.train()
        out = m(input_ids=ids, attention_mask=mask).logits
        out.sum().backward()
        outputs.append((out.detach(), [p.grad for p in m.parameters()]))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], atol=1e-5, rtol=1e-5)
    for theirs, ours in zip(outputs[0][1], outputs[1][1]):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits.float(),
                                   reference(input_ids=ids, attention_mask=mask).logits.float(), atol=0.05, rtol=0.05)


def test_long_keys_go_to_sdpa(tiny_bert_dir, monkeypatch):
    from transformers.integrations import sdpa_attention

    from rlhflab.models import attention

    calls = []
    real = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].shape[2]) or real(*a, **k))
    monkeypatch.setattr(attention, "MATMUL_MAX_KEYS", 8)
    reference, model = _classifier(tiny_bert_dir), _classifier(tiny_bert_dir)
    assert use_matmul_attention(model)
    for width, sdpa_calls in ((8, 0), (12, model.config.num_hidden_layers)):  # one call a layer
        calls.clear()
        ids = torch.randint(5, 100, (2, width), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        assert len(calls) == sdpa_calls


# ---------------------------------------------------------------------------------------------
# Truncation never cuts away the response being judged (issue 10, fault A): the prompt gives
# way from its front, special tokens survive, and a response that cannot fit alone is a clear
# error.


pytestmark = pytest.mark.usefixtures("one_torch_thread")


LONG_PROMPT = "Here is what happened at the cinema last week. " + " ".join(
    f"we sat in row {i} and the seat {i} was near the door" for i in range(30)
) + " So, in short:"


def _tokenizer(folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="module")
def bpe(tiny_tokenizer_dir):
    """The tests' byte-level BPE tokenizer (GPT-2 style, no special tokens added)."""
    return _tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def wordpiece_like():
    """A BERT tokenizer: [CLS] text [SEP], whitespace split (words outside the vocabulary -> [UNK])."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    words = "[PAD] [UNK] [CLS] [SEP] a b c d e f g h the movie was great awful".split()
    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=words[:4]))
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return BertTokenizerFast(tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")


def tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


def test_short_texts_are_encoded_exactly_as_before(bpe, wordpiece_like):
    prompts, responses = ["the movie was", ""], ["great and the cast was fine.", "awful."]
    for tokenizer in (bpe, wordpiece_like):
        rows, cut = prompt_response_ids(prompts, responses, tokenizer, 64)
        expected = tokenizer([join_prompt_response(p, r) for p, r in zip(prompts, responses)])["input_ids"]
        assert rows == expected and cut == 0


def test_the_prompt_is_cut_from_the_front_and_special_tokens_stay(wordpiece_like):
    rows, cut = prompt_response_ids(["a b c d e f g h"], ["the movie was great"], wordpiece_like, 8)
    assert tokens(wordpiece_like, rows[0]) == ["[CLS]", "g", "h", "the", "movie", "was", "great", "[SEP]"]
    assert cut == 1
    # Exactly the room for the response: the whole prompt goes, nothing of the response.
    rows, cut = prompt_response_ids(["a b c d"], ["the movie was great"], wordpiece_like, 6)
    assert tokens(wordpiece_like, rows[0]) == ["[CLS]", "the", "movie", "was", "great", "[SEP]"]


def test_byte_level_tokenizer_keeps_the_end(bpe):
    response = "the plot was dull and the ending was weak."
    rows, cut = prompt_response_ids([LONG_PROMPT], [response], bpe, 24)
    assert len(rows[0]) == 24 and cut == 1
    assert bpe.decode(rows[0]).endswith(" " + response)
    # The tokenizer's own truncation side is left as it was.
    assert bpe.truncation_side == "right"


def test_a_response_longer_than_max_length_is_an_error_naming_the_row(wordpiece_like):
    with pytest.raises(RlhfLabError) as info:
        prompt_response_ids(["a", "b"], ["great", "the movie was great a b c d e f"], wordpiece_like, 8,
                            setting="reward.max_length")
    message = str(info.value)
    assert message.startswith("The response in row 2 is 12 tokens long")
    assert "reward.max_length=8" in message and "at least 12" in message
    assert "\n" not in message


def test_scoring_reads_a_too_long_response_alone_from_its_beginning(wordpiece_like):
    response = "the movie was great a b c d e f"
    rows, _ = prompt_response_ids(["a b"], [response], wordpiece_like, 6, long_response="truncate")
    assert tokens(wordpiece_like, rows[0]) == ["[CLS]", "the", "movie", "was", "great", "[SEP]"]


def test_encode_prompt_response_right_pads(wordpiece_like):
    split, cut = encode_prompt_response(["a b c d e f", ""], ["great", "awful"], wordpiece_like, 5)
    ids = wordpiece_like.convert_tokens_to_ids
    assert split.input_ids.tolist() == [ids(["[CLS]", "e", "f", "great", "[SEP]"]), ids(["[CLS]", "awful", "[SEP]", "[PAD]", "[PAD]"])]
    assert split.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert cut == 1


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, bpe):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=len(bpe), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                        label2id={"NEGATIVE": 0, "POSITIVE": 1}, initializer_range=0.5, pad_token_id=bpe.pad_token_id,
                        max_position_embeddings=64)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    folder = tmp_path_factory.mktemp("tiny-classifier")
    model.save_pretrained(folder)
    bpe.save_pretrained(folder)
    return folder, model


def test_responses_to_one_long_prompt_score_differently(classifier, bpe):
    folder, model = classifier
    score = build_reward(RewardFnConfig(source=str(folder), output="logit", max_length=32), device="cpu")
    responses = ["the film was great and the cast was charming.", "the plot was dull and the acting was bad."]
    scores = score([LONG_PROMPT] * 2, responses)
    assert abs(float(scores[0] - scores[1])) > 1e-3
    # Each equals the model on the last 32 tokens of prompt + response.
    for response, value in zip(responses, scores.tolist()):
        ids = bpe(join_prompt_response(LONG_PROMPT, response))["input_ids"][-32:]
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([ids])).logits[0, 1].item()
        assert value == pytest.approx(expected, abs=1e-4)


def write_pairs(path, prompt: str, chosen_override: dict[int, str] | None = None):
    reviews = synthetic_reviews(40, seed=3)
    positive = [t for t, label in reviews if label == 1]
    negative = [t for t, label in reviews if label == 0]
    with open(path, "w", encoding="utf-8") as handle:
        for i, (good, bad) in enumerate(zip(positive, negative)):
            good = (chosen_override or {}).get(i, good)
            handle.write(json.dumps({"prompt": prompt, "chosen": good, "rejected": bad}) + "\n")
    return path


def pairs_config(tmp_path, model_dir, source) -> Config:
    settings = dict(model=str(model_dir), trainable="all", max_length=32, epochs=8, batch_size=8, learning_rate=3e-3,
                    warmup_ratio=0.0, eval_batch_size=16, log_every=1, early_stopping_patience=8,
                    objective="pairs", pairs=PairsConfig(source=str(source)))
    return Config(runtime=FP32, name="tiny", seed=0, runs_dir=str(tmp_path / "runs"), data=DataConfig(source=str(source)),
                  reward=RewardConfig(**settings))


def test_long_prompt_pairs_train_like_short_prompt_pairs(tmp_path, tiny_bert_dir, capsys):
    source = write_pairs(tmp_path / "long.jsonl", LONG_PROMPT)
    run_dir = run_stage("reward", pairs_config(tmp_path, tiny_bert_dir, source), progress=False)
    metrics = json.loads(run_dir.summary_path.read_text())["metrics"]
    # Before the fix every split read accuracy 0.500, margin 0.000, loss 0.693.
    assert metrics["train"]["pairwise_accuracy"] >= 0.9
    assert metrics["test"]["pairwise_accuracy"] >= 0.75
    assert metrics["train"]["mean_margin"] > 0.5 and metrics["train"]["loss"] < 0.5
    assert "80 of 80 prompt + response texts exceed reward.max_length=32" in capsys.readouterr().out


def test_a_pair_whose_response_cannot_fit_is_an_error_before_the_run_starts(tmp_path, tiny_bert_dir):
    long_review = " and ".join(["the movie was great"] * 12) + "."
    source = write_pairs(tmp_path / "pairs.jsonl", "review:", {6: long_review})
    cfg = pairs_config(tmp_path, tiny_bert_dir, source)
    with pytest.raises(RlhfLabError) as info:
        run_stage("reward", cfg, progress=False)
    message = str(info.value)
    assert message.startswith("The chosen response of the pair at line 7 of ")
    assert "reward.max_length=32" in message and "Raise reward.max_length to at least" in message
    assert not (tmp_path / "runs" / "tiny" / "reward").exists()


def test_a_pure_python_tokenizer_follows_the_same_rule():
    from transformers import CanineTokenizer  # character-level, needs no vocabulary file

    tokenizer = CanineTokenizer()
    assert not tokenizer.is_fast
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    rows, cut = prompt_response_ids(["abcdef", "x"], ["good", "ok"], tokenizer, 8)
    assert rows == [[cls, *map(ord, "f good"), sep], [cls, *map(ord, "x ok"), sep]] and cut == 1
    with pytest.raises(RlhfLabError, match="row 1 is 10 tokens long"):
        prompt_response_ids(["abc"], ["goodness"], tokenizer, 8)


def test_labelled_answers_to_long_prompts_train_on_the_answers(tmp_path, tiny_bert_dir):
    """A labels file with a prompt column (what `label export` writes): long prompts give way, the
    judged answers are read whole, so the labels stay learnable."""
    from rlhflab.io import read_json

    long_prompt = " ".join(["the cinema was dark and the seats were old"] * 30)
    path = tmp_path / "labels.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for text, label in synthetic_reviews(30):
            handle.write(json.dumps({"prompt": long_prompt, "text": text, "label": label}) + "\n")
    cfg = Config(runtime=FP32, name="tiny", seed=0, runs_dir=str(tmp_path / "runs"),
                 data=DataConfig(source=str(path), per_class=30),
                 reward=RewardConfig(model=str(tiny_bert_dir), trainable="all", max_length=48, epochs=20, batch_size=8,
                                     learning_rate=3e-3, warmup_ratio=0.0, eval_batch_size=16, early_stopping_patience=20))
    summary = read_json(run_stage("reward", cfg, progress=False).summary_path)
    assert summary["metrics"]["train"]["accuracy"] >= 0.9

