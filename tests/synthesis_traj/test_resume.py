"""kill -9 in the middle of the rollout and reward stages, then resume: same final set, no duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

CHILD = Path(__file__).parent / "_child.py"


def _spawn(out: Path, home: Path, *block: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.Popen([sys.executable, str(CHILD), str(out), str(home), *block], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_line(proc: subprocess.Popen[str], timeout_s: float = 120.0) -> str:
    watchdog = threading.Timer(timeout_s, proc.kill)  # a hung child fails the test instead of hanging it
    watchdog.start()
    try:
        line = proc.stdout.readline() if proc.stdout else ""
    finally:
        watchdog.cancel()
    if not line:
        raise AssertionError(
            f"child exited early: rc={proc.wait()} stderr={proc.stderr.read()[-2000:] if proc.stderr else ''}"
        )
    return line.strip()


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


def _outputs(path: Path) -> list[dict]:
    return [o for line in path.read_text().splitlines() if line.strip() for o in json.loads(line)["outputs"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, shared by the kill tests; returns (run dir, registry home)."""
    from astra.registry import SAMPLE_SERVERS, Registry, import_file

    base = tmp_path_factory.mktemp("resume")
    with Registry.open(base / "home") as reg:
        assert import_file(reg, SAMPLE_SERVERS).ok
    ref = _spawn(base / "ref", base / "home")
    assert _wait_line(ref).startswith("DONE")
    assert ref.wait() == 0
    return base / "ref", base / "home"


@pytest.mark.parametrize(("kind", "stage", "n"), [("agent", "rollout", 4), ("judge", "reward", 3)])
def test_kill9_mid_stage_then_resume(tmp_path, reference, kind, stage, n):
    ref_dir, home = reference
    out = tmp_path / "run"
    proc = _spawn(out, home, kind, str(n))
    assert _wait_line(proc) == "READY"
    before = _ids(out / f"{stage}.jsonl")
    assert len(before) == n - 1, "the items finished before the kill are on disk"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (json.loads((out / "manifest.json").read_text())["stages"].get(stage) or {}).get("status") != "done"

    again = _spawn(out, home)
    assert _wait_line(again).startswith("DONE")
    assert again.wait() == 0

    for name in ("rollout", "reward", "export"):
        ids = _ids(out / f"{name}.jsonl")
        assert not [i for i, c in Counter(ids).items() if c > 1], f"duplicates in {name}"
        assert sorted(ids) == sorted(_ids(ref_dir / f"{name}.jsonl")), f"{name}: lost or extra items"
    assert set(before) <= set(_ids(out / f"{stage}.jsonl"))
    # the exported dataset is the same as the uninterrupted run's
    ref_rows = (ref_dir / "export" / "openai.jsonl").read_text()
    assert (out / "export" / "openai.jsonl").read_text().count("\n") == ref_rows.count("\n") > 0
    assert sorted(o["id"] for o in _outputs(out / "reward.jsonl")) == sorted(
        o["id"] for o in _outputs(ref_dir / "reward.jsonl")
    )
