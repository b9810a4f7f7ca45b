"""`rlhflab` on the command line: user errors exit 2 with one `error:` line and no traceback.

Every error here surfaces before a model loads, so each call takes about a second.
"""

import subprocess
import time
from pathlib import Path

import pytest
import yaml
from tests.helpers import assert_user_error, finish, start_cli



def rlhflab(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    process = start_cli(cwd, *args)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)




# `rlhflab sft` imports torch and transformers (~1.3 s a call), so these cases start together
# in one module-scoped batch, each in its own empty folder, and the tests read their results.
SFT_CASES = {
    "missing_source": ["sft", "data.source=/nonexistent/reviews.csv"],
    "no_text_column": ["sft", "data.source=reviews.csv"],
    "missing_label_column": ["sft", "data.source=good.csv", "data.label_column=stars"],
    "unknown_key": ["sft", "sft.epochz=3"],
    "missing_config": ["sft", "--config", "missing.yaml"],
    "invalid_setting": ["sft", "sft.epochs=0", "data.source=/nonexistent/reviews.csv"],
}


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    started = {}
    for name, args in SFT_CASES.items():
        folder = tmp_path_factory.mktemp(name)
        (folder / "reviews.csv").write_text("body,stars\nGreat film,5\nAwful,1\n", encoding="utf-8")
        (folder / "good.csv").write_text("text,label\nGreat film,1\nAwful,0\n", encoding="utf-8")
        started[name] = (folder, args, start_cli(folder, *args))
    results = {}
    for name, (folder, args, process) in started.items():
        try:
            stdout, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        results[name] = (folder, subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def sft_input_files_only(folder: Path) -> None:
    """Nothing written: no runs/ folder, no converted model in the cache."""
    assert sorted(p.name for p in folder.iterdir()) == ["good.csv", "reviews.csv"]


def test_missing_data_source(sft_runs):
    folder, result = sft_runs["missing_source"]
    assert_user_error(result, "/nonexistent/reviews.csv")
    sft_input_files_only(folder)


def test_csv_without_a_text_column_names_it(sft_runs):
    folder, result = sft_runs["no_text_column"]
    assert_user_error(result, "reviews.csv", "text column", "body, stars", "data.text_column")
    sft_input_files_only(folder)


def test_csv_with_a_missing_named_label_column(sft_runs):
    folder, result = sft_runs["missing_label_column"]
    assert_user_error(result, "good.csv", "stars")
    sft_input_files_only(folder)


def test_unknown_key_suggests_the_nearest(sft_runs):
    folder, result = sft_runs["unknown_key"]
    assert_user_error(result, "sft.epochz", "Did you mean 'sft.epochs'?")
    sft_input_files_only(folder)


def test_missing_config_file(sft_runs):
    folder, result = sft_runs["missing_config"]
    assert_user_error(result, "missing.yaml")
    sft_input_files_only(folder)


def test_invalid_stage_setting_is_caught_before_data_or_model(sft_runs):
    folder, result = sft_runs["invalid_setting"]
    assert_user_error(result, "sft.epochs must be at least 1")
    sft_input_files_only(folder)


def test_wrong_type_names_the_key(tmp_path):
    result = rlhflab(tmp_path, "config", "sft.epochs=true")
    assert_user_error(result, "sft.epochs", "bool")


def test_invalid_yaml_config_is_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("sft:\n  epochs: [1, 2\n  batch_size: 3\n", encoding="utf-8")
    result = rlhflab(tmp_path, "config", "--config", "bad.yaml")
    assert_user_error(result, "bad.yaml")


def test_override_without_equals(tmp_path):
    result = rlhflab(tmp_path, "config", "sft.epochs")
    assert_user_error(result, "sft.epochs", "key=value")


def test_config_command_prints_resolved_yaml(tmp_path):
    result = rlhflab(tmp_path, "config", "sft.epochs=3", "sft.learning_rate=1e-4")
    assert result.returncode == 0, result.stderr
    assert "  epochs: 3" in result.stdout.splitlines()  # under sft:
    data = yaml.safe_load(result.stdout)
    assert data["sft"]["epochs"] == 3
    assert data["sft"]["learning_rate"] == pytest.approx(1e-4)
    assert data["name"] == "default"
    assert result.stderr == ""


def test_config_command_output_loads_back_as_the_same_config(tmp_path):
    result = rlhflab(tmp_path, "config", "sft.trainable=all", "data.fractions=[0.8,0.1,0.1]", "name=x")
    assert result.returncode == 0, result.stderr
    (tmp_path / "resolved.yaml").write_text(result.stdout, encoding="utf-8")
    again = rlhflab(tmp_path, "config", "--config", "resolved.yaml")
    assert again.returncode == 0, again.stderr
    assert again.stdout == result.stdout


def test_usage_errors_exit_2_from_argparse(tmp_path):
    result = rlhflab(tmp_path, "no-such-command")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "invalid choice" in result.stderr


# ---------------------------------------------------------------------------------------------
# Model-loading faults on the command line (issue 10): exit 2 with one `error:` line, quickly.


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

