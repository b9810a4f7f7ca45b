"""Head + tail truncation (rlhflab/models/encoding.py) and the matmul attention the reward stage
trains with on a CPU (rlhflab/models/reward_model.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhflab.errors import RlhfLabError
from rlhflab.models.encoding import encode, head_and_tail_ids
from rlhflab.models.reward_model import MATMUL_ATTENTION, use_matmul_attention

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

    from rlhflab.models import reward_model

    calls = []
    real = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].shape[2]) or real(*a, **k))
    monkeypatch.setattr(reward_model, "MATMUL_MAX_KEYS", 8)
    reference, model = _classifier(tiny_bert_dir), _classifier(tiny_bert_dir)
    assert use_matmul_attention(model)
    for width, sdpa_calls in ((8, 0), (12, model.config.num_hidden_layers)):  # one call a layer
        calls.clear()
        ids = torch.randint(5, 100, (2, width), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        assert len(calls) == sdpa_calls


def test_decoders_keep_their_attention(tiny_llama_dir):
    from transformers import AutoModelForSequenceClassification as Auto

    model = Auto.from_pretrained(tiny_llama_dir, num_labels=1)
    before = model.config._attn_implementation
    assert not use_matmul_attention(model)
    assert model.config._attn_implementation == before
