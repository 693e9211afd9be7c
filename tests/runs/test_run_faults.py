"""Runs under faults: a full disk, a corrupt line, SIGTERM, changed thresholds, infrastructure
failures. Every class: nothing marked done unless written in full, nothing lost, no duplicate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from astra.records import Task
from astra.runs import JsonlLog, RunDir
from astra.synthesis._stage import Outcome, Stage

HERE = Path(__file__).parent


class Item(BaseModel):
    id: str
    score: float = 0.0
    payload: str = ""


def _run(stage: Stage, items, fn, **kw):
    return anyio.run(lambda: stage.run_items(items, fn, progress=False, **kw))


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d"],
                           capture_output=True)
    return probe.returncode == 0


FULL_DISK_CHILD = textwrap.dedent('''
    import json, os, sys
    import anyio
    from pydantic import BaseModel
    from astra.errors import RunWriteError
    from astra.runs import RunDir
    from astra.synthesis._stage import Outcome, Stage

    class Item(BaseModel):
        id: str
        payload: str

    root = sys.argv[1]
    filler = os.path.join(root, "filler")
    run_dir = os.path.join(root, "run")
    ids = [f"item-{i:02d}" for i in range(24)]
    calls = []

    async def fn(item_id):
        calls.append(item_id)
        return Outcome.keep(Item(id=item_id, payload="x" * 6000))

    def attempt():
        stage = Stage(RunDir(run_dir), "work", Item)
        return anyio.run(lambda: stage.run_items([(i, i) for i in ids], fn, concurrency=1, progress=False))

    with open(filler, "wb") as fh:  # leave room for the manifest and a few records only
        fh.write(b"\\0" * (int(sys.argv[2]) - 40 * 1024))
    error = None
    try:
        attempt()
    except BaseException as exc:  # a task group wraps it
        found = [exc]
        while found and not isinstance(found[0], RunWriteError):
            e = found.pop(0)
            found.extend(getattr(e, "exceptions", ()))
        error = str(found[0]) if found else repr(exc)
    with open(os.path.join(run_dir, "work.jsonl"), "rb") as fh:
        first = fh.read()
    manifest = json.load(open(os.path.join(run_dir, "manifest.json")))
    os.unlink(filler)  # free the space, then resume
    calls_before = list(calls)
    attempt()
    lines = [json.loads(l) for l in open(os.path.join(run_dir, "work.jsonl"), "rb")]
    print(json.dumps({"error": error, "first_complete": first.endswith(b"\\n") or not first,
                      "first_lines": first.count(b"\\n"), "status_after_error": manifest["stages"]["work"]["status"],
                      "ids": [l["id"] for l in lines], "calls_before": calls_before, "calls": calls,
                      "status": json.load(open(os.path.join(run_dir, "manifest.json")))["stages"]["work"]["status"]}))
''')


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unprivileged user+mount namespaces (unshare -rm)")
def test_full_disk_stops_cleanly_and_resumes_without_duplicate_or_loss(tmp_path):
    size = 512 * 1024
    script = tmp_path / "child.py"
    script.write_text(FULL_DISK_CHILD)
    mnt = tmp_path / "small"
    mnt.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f'mount -t tmpfs -o size={size} tmpfs "$1" && exec "$2" "$3" "$1" {size}', "sh",
         str(mnt), sys.executable, str(script)],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] and "could not write a record in full" in out["error"]
    assert "No space left on device" in out["error"]
    assert out["first_complete"], "a torn record was left behind"
    assert 0 < out["first_lines"] < 24
    assert out["status_after_error"] != "done"  # the disk cannot take an "interrupted" note either
    ids = [f"item-{i:02d}" for i in range(24)]
    assert sorted(out["ids"]) == ids and len(out["ids"]) == 24, "duplicate or lost record after resume"
    assert out["status"] == "done"
    # the records written before the fault were not redone; the one that failed to land was
    written_first = out["first_lines"]
    assert out["calls"][len(out["calls_before"]):] == ids[written_first:]


def test_write_error_is_all_or_nothing(tmp_path, monkeypatch):
    log = JsonlLog(tmp_path / "s.jsonl")
    log.append({"id": "a", "v": 1})
    real_write = os.write

    def short_then_fail(fd, data):
        if len(data) > 5:
            real_write(fd, bytes(data[:5]))  # a short write, then the disk is full
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_then_fail)
    from astra.errors import RunWriteError

    with pytest.raises(RunWriteError, match="No space left on device"):
        log.append({"id": "b", "v": 2})
    monkeypatch.setattr(os, "write", real_write)
    assert "b" not in log
    assert (tmp_path / "s.jsonl").read_bytes() == b'{"id":"a","v":1}\n'
    assert log.append({"id": "b", "v": 2}) and [d["id"] for d in JsonlLog(tmp_path / "s.jsonl").read_dicts()] == [
        "a",
        "b",
    ]


def test_corrupt_middle_line_is_quarantined_and_redone(tmp_path):
    stage = Stage(RunDir(tmp_path), "work", Item)
    calls: list[str] = []

    async def fn(item_id: str) -> Outcome:
        calls.append(item_id)
        return Outcome.keep(Item(id=item_id))

    items = [(i, i) for i in "abcd"]
    _run(stage, items, fn, concurrency=1)
    path = tmp_path / "work.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b'{"id": "b", "stage": "work", "outp\xff\n'  # corrupted in place (not the torn tail)
    path.write_bytes(b"".join(lines))
    calls.clear()
    stage = Stage(RunDir(tmp_path), "work", Item)
    assert stage.log.quarantined == [f"{path}:2: not valid JSON ('utf-8' codec can't decode byte 0xff in position 34: "
                                     "invalid start byte)"]
    quarantine = [json.loads(x) for x in (tmp_path / "work.quarantine.jsonl").read_text().splitlines()]
    assert quarantine[0]["line"] == 2 and quarantine[0]["file"] == str(path) and "outp" in quarantine[0]["raw"]
    _run(stage, items, fn, concurrency=1)
    assert calls == ["b"]  # only the quarantined item is redone
    assert sorted(e.id for e in stage.entries()) == ["a", "b", "c", "d"]
    assert JsonlLog(path).quarantined == []  # the file is clean now


def test_infrastructure_failures_are_retried_on_resume_not_kept(tmp_path):
    stage = Stage(RunDir(tmp_path), "work", Item)
    broken = {"b"}

    async def fn(item_id: str) -> Outcome:
        if item_id in broken:
            return Outcome.drop("server_died: connection closed", failed=True)
        if item_id == "c":
            return Outcome.drop("filtered: not interesting")  # a real decision: kept as it is
        return Outcome.keep(Item(id=item_id))

    items = [(i, i) for i in "abc"]
    counts = _run(stage, items, fn)
    assert counts.failed == 1 and counts.outputs == 1
    broken.clear()  # the server is back
    counts = _run(Stage(RunDir(tmp_path), "work", Item), items, fn)
    assert counts.failed == 0 and counts.outputs == 2 and counts.inputs == 3
    stage = Stage(RunDir(tmp_path), "work", Item)
    assert sorted(o.id for o in stage.outputs()) == ["a", "b"]
    assert [e.id for e in stage.entries()] == ["a", "b", "c"]  # superseded, never duplicated


def test_changing_a_threshold_re_decides_earlier_items_without_redoing_them(tmp_path):
    scores = {"a": 0.9, "b": 0.55, "c": 0.2}
    calls: list[str] = []

    async def fn(item_id: str, threshold: float) -> Outcome:
        calls.append(item_id)
        return Outcome.gated(
            {"quality_threshold": (scores[item_id], threshold)}, Item(id=item_id, score=scores[item_id])
        )

    def run(threshold: float) -> list[str]:
        stage = Stage(RunDir(tmp_path), "quality", Item)
        _run(stage, [(i, i) for i in scores], lambda i: fn(i, threshold), gates={"quality_threshold": threshold})
        return sorted(o.id for o in Stage(RunDir(tmp_path), "quality", Item).outputs())

    assert run(0.6) == ["a"]
    assert sorted(calls) == ["a", "b", "c"]
    calls.clear()
    assert run(0.5) == ["a", "b"]  # relaxed: b passes now
    assert run(0.1) == ["a", "b", "c"]
    assert run(0.7) == ["a"]  # tightened again
    assert calls == []  # re-decided from the stored scores: no model call
    drops = Stage(RunDir(tmp_path), "quality", Item).counts().drop_reasons
    assert drops == {"below_quality_threshold": 2}


def test_sigterm_is_ctrl_c_for_a_run(tmp_path):
    task_file = tmp_path / "tasks.jsonl"
    task_file.write_text(Task(id="a", user_turns=["hello"]).model_dump_json() + "\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(HERE / "sigterm_child.py"), str(out), str(task_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and str(out) in stderr and "run the same command again" in stderr
    stage = json.loads((out / "manifest.json").read_text())["stages"]["trajectories"]
    assert stage["status"] == "interrupted" and stage["kept"] == 2
    assert [json.loads(x)["id"] for x in (out / "trajectories.jsonl").read_text().splitlines()] == ["a", "b"]
