"""A reward callable that raises, or returns something other than one number per response, is one
clear RlhfLabError naming the function (issue 10, fault C)."""

from __future__ import annotations

import textwrap

import pytest

from rlhflab.config import RewardFnConfig
from rlhflab.errors import RlhfLabError
from rlhflab.rewards import build_reward

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
