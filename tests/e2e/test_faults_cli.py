"""Model-loading faults on the command line (issue 10): exit 2 with one `error:` line, quickly."""

from __future__ import annotations

import time

import pytest

from tests.helpers import assert_user_error, finish, start_cli


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_bert_dir):
    """Both cases start together (each CLI start imports torch and transformers)."""
    cases = {
        "encoder": ["sft", f"sft.model={tiny_bert_dir}"],
        "hub_offline": ["sft", "sft.model=nobody-here/no-such-model-4521"],
    }
    started = {}
    for name, args in cases.items():
        folder = tmp_path_factory.mktemp(name)
        rows = "".join(f"the film was {'great' if i % 2 else 'awful'} {i},{i % 2}\n" for i in range(40))
        (folder / "reviews.csv").write_text("text,label\n" + rows, encoding="utf-8")
        started[name] = start_cli(folder, *args, "data.source=reviews.csv", "data.per_class=20")
    begin, out = time.perf_counter(), {}
    for name, process in started.items():
        out[name] = finish(process)
    out["seconds"] = time.perf_counter() - begin
    return out


def test_an_encoder_given_as_the_sft_model_is_refused(results, tiny_bert_dir):
    assert_user_error(results["encoder"], f"{tiny_bert_dir} is an encoder (bert), not a causal language model",
                      "smollm2-135m or gpt2")


def test_an_unreachable_hub_model_is_one_line_at_once(results):
    assert_user_error(results["hub_offline"], "nobody-here/no-such-model-4521", "HF_HUB_OFFLINE",
                      "local model folder", "smollm2-135m")
    assert results["seconds"] < 60  # not ~50 s of retries per file
