"""A bounded run of the coverage-guided fuzzer (tests/fuzz/atheris_frames.py) per target."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("atheris_frames.py")
RUNS = 20_000

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (wheels exist for Linux x86_64 only): pip install atheris",
)


@pytest.mark.parametrize(
    "target_args", [["--target=frames"], ["--target=api-body", "--allow-known-bugs"]]
)
def test_fuzzer_runs_without_a_crash(tmp_path: Path, target_args: list[str]) -> None:
    command = [
        sys.executable,
        str(SCRIPT),
        *target_args,
        f"-runs={RUNS}",
        "-seed=1",  # the same inputs on every run of the suite
        f"-artifact_prefix={tmp_path}/",
    ]
    # The seed corpus goes to a temporary directory: keep it in this test's.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"Done {RUNS} runs" in done.stderr
    assert not list(tmp_path.glob("crash-*"))
