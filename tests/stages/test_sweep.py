"""`rlhflab sweep` on the tiny pipeline of test_pipeline.py: shared stages trained once and linked,
each point its own pipeline process, reruns skip finished points, failures and Ctrl-C recorded."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhflab import sweep as sweep_module
from rlhflab.config import dump_yaml, load_config, parse_yaml
from rlhflab.errors import RlhfLabError, RunInterrupted
from rlhflab.pipeline import stage_state
from rlhflab.stages.registry import stage_key
from tests.helpers import assert_user_error, cli_run, hold_lock, synthetic_reviews
from tests.stages.test_pipeline import make_config

POINTS = ["learning_rate-1e-5", "learning_rate-1e-4"]


class FakeProcess:
    """Stands in for a point's process: exits with `code`; `on_poll` runs once, at the first poll."""

    def __init__(self, code: int = 0, on_poll=None):
        self.returncode = code
        self.on_poll = on_poll
        self.signals: list[int] = []

    def poll(self):
        if self.on_poll is not None:
            action, self.on_poll = self.on_poll, None
            action()
        return self.returncode

    def wait(self):
        return self.returncode

    def send_signal(self, signum):
        self.signals.append(signum)


def run_sweep(config: Path, *overrides: str) -> list[str]:
    lines: list[str] = []
    sweep_module.run(str(config), list(overrides), progress=False, echo=lines.append)
    return lines


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_llama_dir, tiny_bert_dir):
    """The tiny pipeline swept over two PPO learning rates, each point in a real `python -m rlhflab` process."""
    root = tmp_path_factory.mktemp("sweep")
    reviews = root / "reviews.csv"
    with open(reviews, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("text", "label"), *synthetic_reviews(30)])
    config = root / "tiny.yaml"
    config.write_text(dump_yaml(make_config(root, tiny_llama_dir, tiny_bert_dir, reviews)), encoding="utf-8")
    launched = []
    real = sweep_module._launch

    def spy(command, log, env):
        launched.append(command)
        return real(command, log, env)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sweep_module, "_launch", spy)
        patch.setenv("OMP_NUM_THREADS", "1")  # the points' processes: tiny models run faster on one thread
        lines = run_sweep(config, "ppo.learning_rate=1e-5,1e-4")
    return config, root / "runs" / "tiny", lines, launched


def copy_runs(swept, tmp_path: Path, *stages: str) -> tuple[Path, Path]:
    """The module's config pointed at a copy of the base run's `stages` (each test its own runs folder)."""
    config, base, _, _ = swept
    for stage in stages:
        shutil.copytree(base / stage, tmp_path / "runs" / "tiny" / stage, symlinks=True)
    own = tmp_path / "tiny.yaml"
    text = parse_yaml(config.read_text(encoding="utf-8"))
    text["runs_dir"] = str(tmp_path / "runs")
    own.write_text(json.dumps(text), encoding="utf-8")  # JSON is YAML
    return own, tmp_path / "runs" / "tiny"


def test_stages_the_points_share_are_trained_once_and_linked(swept):
    config, base, lines, launched = swept
    assert lines[1] == f"shared    sft, reward: trained once, in {base}"
    assert sorted(p.name for p in base.iterdir()) == ["reward", "sft", "sweep"]  # no PPO in the base run
    for name in POINTS:
        point = base / "sweep" / name
        for stage in ("sft", "reward"):
            assert (point / stage).is_symlink() and os.readlink(point / stage) == str(Path("..") / ".." / stage)
            assert (point / stage / "stage.json").read_text() == (base / stage / "stage.json").read_text()
        for stage in ("rl", "evaluate"):
            assert (point / stage / "summary.json").is_file() and not (point / stage).is_symlink()
        assert (point / "report" / "report.html").is_file() and "up to date" in (point / "log.txt").read_text()
    assert [command[-3:] for command in launched] == [
        ["--config", str(base / "sweep" / name / "point.yaml"), "--no-progress"] for name in POINTS]
    rates = [parse_yaml((base / "sweep" / n / "rl" / "config.yaml").read_text())["rl"]["learning_rate"] for n in POINTS]
    assert rates == [1e-5, 1e-4]


def test_a_point_sees_the_linked_stages_as_up_to_date_with_the_base_runs_key(swept):
    config, base, _, _ = swept
    base_cfg = load_config(config)
    point = load_config(base / "sweep" / POINTS[0] / "point.yaml")
    for stage in ("sft", "reward"):
        assert stage_key(point, stage)["key"] == stage_key(base_cfg, stage)["key"]
        assert stage_state(point, stage) == "done"
    rl = json.loads((base / "sweep" / POINTS[0] / "rl" / "stage.json").read_text())
    sft_run = json.loads((base / "sft" / "stage.json").read_text())["run_id"]
    assert rl["references"]["<this run>/sft"] == f"run:{sft_run}"  # the fingerprint followed the link


def test_the_manifest_and_the_comparison_cover_every_point(swept):
    config, base, lines, _ = swept
    manifest = json.loads((base / "sweep" / "sweep.json").read_text())
    assert manifest["config"] == str(config) and manifest["axes"] == {"ppo.learning_rate": ["1e-5", "1e-4"]}
    assert manifest["shared"] == ["sft", "reward"]
    assert [(p["name"], p["status"], p["overrides"]) for p in manifest["points"]] == [
        (POINTS[0], "done", ["ppo.learning_rate=1e-5"]), (POINTS[1], "done", ["ppo.learning_rate=1e-4"])]
    assert all(p["seconds"] > 0 and p["error"] is None for p in manifest["points"])
    done = [line for line in lines if " done in " in line and line.startswith("[")]
    assert len(done) == 2 and all("KL" in line for line in done)
    compared = json.loads((base / "sweep" / "compare" / "compare.json").read_text())
    assert [row[0] for row in compared["rows"]] == POINTS and compared["rows"][0][1] == "1e-5"
    assert lines[-1] == str(base / "sweep" / "compare" / "compare.md")
    # each point names the shared reward model by its own link (<point>/reward): one reward all the same, by its run id
    assert len(compared["tables"]) == 1 and " (reward_model, " in compared["tables"][0]["reward"]
    assert len({run["reward_described"] for run in compared["runs"]}) == 2 and len({run["reward_id"] for run in compared["runs"]}) == 1
    # one seed each: the ranking says whether the difference is inside the held-out noise, and from how many prompts
    ranked = compared["sentences"][0]
    assert (" tie for the highest " in ranked or "by more than the noise" in ranked) and " held-out prompts" in ranked


def test_rerunning_the_same_command_runs_no_point_again(swept, tmp_path, monkeypatch):
    own, base = copy_runs(swept, tmp_path, "sft", "reward", "sweep")
    monkeypatch.setattr(sweep_module, "_launch", lambda *a: pytest.fail("a finished point was started again"))
    lines = run_sweep(own, "ppo.learning_rate=1e-5,1e-4")
    assert "sft       up to date" in lines[2] and "reward    up to date" in lines[3]
    assert [line.split()[2:4] for line in lines if line.startswith("[")] == [["up", "to"], ["up", "to"]]
    # a point cut off mid-run is started again (its pipeline resumes the stage itself); the other is not
    shutil.rmtree(base / "sweep" / POINTS[1] / "evaluate")
    launched = []
    monkeypatch.setattr(sweep_module, "_launch", lambda command, log, env: launched.append(command) or FakeProcess())
    run_sweep(own, "ppo.learning_rate=1e-5,1e-4")
    assert [command[-2] for command in launched] == [str(base / "sweep" / POINTS[1] / "point.yaml")]


def test_a_new_grid_under_the_same_name_says_which_earlier_points_leave_the_manifest(swept, tmp_path, monkeypatch):
    own, base = copy_runs(swept, tmp_path, "sft", "reward", "sweep")
    monkeypatch.setattr(sweep_module, "_launch", lambda *a: FakeProcess())
    lines = run_sweep(own, "ppo.learning_rate=1e-5,3e-4")
    note = next(line for line in lines if line.startswith("note"))
    assert note.endswith(f"(their folders stay): {POINTS[1]}")
    assert (base / "sweep" / POINTS[1]).is_dir()
    names = [p["name"] for p in json.loads((base / "sweep" / "sweep.json").read_text())["points"]]
    assert names == [POINTS[0], "learning_rate-3e-4"]


def test_a_failing_point_is_recorded_and_the_others_still_run(swept, tmp_path, monkeypatch):
    """The failing point runs for real (its model folder holds no model); the next one is only started."""
    own, base = copy_runs(swept, tmp_path, "sft", "reward")
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    real, launched = sweep_module._launch, []

    def launch(command, log, env):
        launched.append(command[-2])
        return real(command, log, env) if len(launched) == 1 else FakeProcess()

    monkeypatch.setattr(sweep_module, "_launch", launch)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(RlhfLabError) as caught:
        run_sweep(own, f"ppo.policy={not_a_model},null")
    manifest = json.loads((base / "sweep" / "sweep.json").read_text())
    statuses = [p["status"] for p in manifest["points"]]
    assert statuses == ["failed", "done"] and len(launched) == 2
    bad = manifest["points"][0]
    assert bad["error"].startswith("error: ") and str(not_a_model) in bad["error"]
    assert bad["error"] in (base / "sweep" / bad["name"] / "log.txt").read_text()
    assert str(caught.value) == f"1 of 2 points failed: {bad['name']}; see {bad['log']}."
    compared = json.loads((base / "sweep" / "compare" / "compare.json").read_text())
    assert compared["rows"][0][2] == "not finished"


def test_sweeping_an_sft_setting_makes_sft_per_point_and_shares_the_reward_model(swept, tmp_path, monkeypatch):
    own, base = copy_runs(swept, tmp_path, "sft", "reward")
    monkeypatch.setattr(sweep_module, "_launch", lambda *a: FakeProcess())
    lines = run_sweep(own, "sft.learning_rate=1e-3,2e-3")
    assert lines[1] == f"shared    reward: trained once, in {base}"
    for name in ("learning_rate-1e-3", "learning_rate-2e-3"):
        point = base / "sweep" / name
        assert (point / "reward").is_symlink() and not (point / "sft").exists()
        assert load_config(point / "point.yaml").sft.learning_rate == float(name.split("-", 1)[1])


def test_ctrl_c_waits_for_the_running_point_and_says_how_to_resume(swept, tmp_path, monkeypatch):
    own, base = copy_runs(swept, tmp_path, "sft", "reward")
    processes = []
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def interrupted(*args):
        def ctrl_c():
            raise KeyboardInterrupt
        processes.append(FakeProcess(130, on_poll=ctrl_c))
        return processes[-1]

    monkeypatch.setattr(sweep_module, "_launch", interrupted)
    with pytest.raises(RunInterrupted, match="rerun the same command to resume"):
        run_sweep(own, "ppo.kl_coef=0.1,0.2")
    statuses = [p["status"] for p in json.loads((base / "sweep" / "sweep.json").read_text())["points"]]
    assert statuses == ["interrupted", "pending"] and len(processes) == 1
    assert processes[0].signals == [signal.SIGTERM]  # the point runs in a session of its own: the driver passes one on

    def terminated(*args):
        processes.append(FakeProcess(130, on_poll=lambda: os.kill(os.getpid(), signal.SIGTERM)))
        return processes[-1]

    monkeypatch.setattr(sweep_module, "_launch", terminated)
    with pytest.raises(RunInterrupted):
        run_sweep(own, "ppo.kl_coef=0.1,0.2")
    assert processes[-1].signals == [signal.SIGTERM]
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # the handlers are put back


def test_bad_grids_fail_in_one_line_before_anything_runs(capsys, tmp_path):
    result = cli_run(capsys, "sweep", f"runs_dir={tmp_path}", "ppo.steps=3")
    assert_user_error(result, "rlhflab pipeline")
    result = cli_run(capsys, "sweep", f"runs_dir={tmp_path}", "ppo.kl_coef=0.1,-1")
    assert_user_error(result, "kl_coef-", "kl_coef must be >= 0")
    result = cli_run(capsys, "sweep", f"runs_dir={tmp_path}", "ppo.kl_coef=0.1,0.2", "--parallel", "0")
    assert_user_error(result, "--parallel")
    assert not any(tmp_path.iterdir())


# -- one writer per point, and no point outlives its driver ----------------------------------------



def test_a_rerun_waits_for_a_point_an_earlier_process_still_writes(swept, tmp_path, monkeypatch):
    own, base = copy_runs(swept, tmp_path, "sft", "reward")
    # a point stopping after its driver was killed: it ends once the sweep says it waits for it (no
    # timing: a holder that held for a fixed time was gone before a loaded host reached the lock)
    holder = hold_lock(base / "sweep" / "kl_coef-0.1")
    launched = []
    say = sweep_module.Sweep._say

    def say_then_stop_the_holder(self, index, point, text):
        say(self, index, point, text)
        if "waiting for" in text:
            holder.terminate()
            holder.wait()

    def launch(command, log, env):
        launched.append((command[-2], holder.poll()))
        return FakeProcess()

    monkeypatch.setattr(sweep_module.Sweep, "_say", say_then_stop_the_holder)
    monkeypatch.setattr(sweep_module, "_launch", launch)
    lines = run_sweep(own, "ppo.kl_coef=0.1,0.2")
    waiting = [line for line in lines if "waiting for" in line]
    assert waiting == [f"[1/2] kl_coef-0.1  waiting for process {holder.pid} (rlhflab {base / 'sweep' / 'kl_coef-0.1'} 600), "
                       f"which still writes this point, to stop ..."]
    ended = -signal.SIGTERM  # the holder's exit status: launched only after it ended
    assert launched == [(str(base / "sweep" / "kl_coef-0.1" / "point.yaml"), ended),
                        (str(base / "sweep" / "kl_coef-0.2" / "point.yaml"), ended)]


def test_a_point_another_process_keeps_writing_is_failed_and_the_sweep_held_once(swept, tmp_path, monkeypatch):
    own, base = copy_runs(swept, tmp_path, "sft", "reward")
    monkeypatch.setattr(sweep_module, "LOCK_WAIT_SECONDS", 0.5)
    monkeypatch.setattr(sweep_module, "_launch", lambda *a: FakeProcess())
    busy = base / "sweep" / "kl_coef-0.1"
    holder = hold_lock(busy)
    try:
        with pytest.raises(RlhfLabError, match=r"^1 of 2 points failed: kl_coef-0.1; see "):
            run_sweep(own, "ppo.kl_coef=0.1,0.2")
        manifest = json.loads((base / "sweep" / "sweep.json").read_text())
        assert [p["status"] for p in manifest["points"]] == ["failed", "done"]
        assert manifest["points"][0]["error"].startswith(f"error: {busy} is in use: process {holder.pid} ")
        assert manifest["points"][0]["error"] in (busy / "log.txt").read_text()
    finally:
        holder.kill()
        holder.wait()
    # the same sweep twice at once: the second driver is refused in one line
    holder = hold_lock(base)
    try:
        with pytest.raises(RlhfLabError, match=f"^{base} is in use: process {holder.pid} "):
            run_sweep(own, "ppo.kl_coef=0.1,0.2")
    finally:
        holder.kill()
        holder.wait()


def alive(pid: int) -> bool:
    """The process runs (a zombie no one reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def start_sweep(own: Path, base: Path, *, background: bool) -> tuple[subprocess.Popen, int, Path]:
    """`rlhflab sweep` over two PPO points in its own process (from a shell's `&` when `background`:
    SIGINT ignored, as a shell does); returns it, the driver's pid and the first point's folder,
    once that point has logged a training step."""
    command = [sys.executable, "-m", "rlhflab", "sweep", "--config", str(own), "--no-progress", "ppo.steps=400",
               "ppo.kl_coef=0.1,0.2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    pid_file = own.parent / "driver.pid"
    if background:
        script = f"{shlex.join(command)} & echo $! > {shlex.quote(str(pid_file))}; wait $!"
        process = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    else:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    point = base / "sweep" / "kl_coef-0.1"
    metrics = point / "rl.partial" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and '"train"' in metrics.read_text():
            break
        time.sleep(0.1)
    assert process.poll() is None, process.communicate()
    driver = int(pid_file.read_text()) if background else process.pid
    return process, driver, point


def point_pid(point: Path) -> int:
    return int((point.parent / f".{point.name}.lock").read_text().split()[0])


def test_a_point_does_not_outlive_its_driver_killed_with_sigkill(swept, tmp_path):
    own, base = copy_runs(swept, tmp_path, "sft", "reward")
    process, driver, point = start_sweep(own, base, background=False)
    pid = point_pid(point)
    assert pid != driver and alive(pid)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    deadline = time.time() + 30
    while time.time() < deadline and alive(pid):
        time.sleep(0.1)
    assert not alive(pid), "the point kept running without its driver"
    assert (point / "rl.partial" / "checkpoints" / "latest" / "state.json").is_file()  # SIGTERM: it saved a checkpoint
    assert (point / "log.txt").read_text().strip().splitlines()[-1].startswith("interrupted: rl stopped and saved")
    with sweep_module.run_lock(point):  # nothing holds the point any more
        pass


def test_a_background_sweep_stops_on_sigint_and_its_point_saves_a_checkpoint(swept, tmp_path):
    own, base = copy_runs(swept, tmp_path, "sft", "reward")
    process, driver, point = start_sweep(own, base, background=True)
    pid = point_pid(point)
    os.kill(driver, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == ("interrupted: the sweep stopped with 2 of 2 points not finished "
                                               "(kl_coef-0.1, kl_coef-0.2); rerun the same command to resume.")
    assert "Traceback" not in stderr and not alive(pid)
    manifest = json.loads((base / "sweep" / "sweep.json").read_text())
    assert [p["status"] for p in manifest["points"]] == ["interrupted", "pending"]
    assert (point / "rl.partial" / "checkpoints" / "latest" / "state.json").is_file()
