"""The glibc heap setting: applied once on Linux, skipped when the user opts out."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("env, expected", [({}, "True"), ({"RLHFLAB_KEEP_FREED_MEMORY": "0"}, "False")])
def test_keep_freed_memory_applies_unless_opted_out(env, expected):
    code = "from rlhflab.malloc import keep_freed_memory as k; print(k(), k())"
    out = subprocess.run([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                         text=True, check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert out.stdout.split() == [expected, expected]
