"""The one resumable runner (astra.runner.ItemRunner): resume, dedupe, keep going, interruption."""

from __future__ import annotations

import json

import anyio
import pytest
from pydantic import BaseModel

from astra.runner import Failure, ItemRunner
from astra.runs import RunDir


class Done(BaseModel):
    id: str
    value: int


def _status(run: RunDir) -> dict:
    return json.loads((run.path / "manifest.json").read_text())["stages"]["work"]


def test_resume_dedupe_keep_going_and_redo(tmp_path) -> None:
    run = RunDir(tmp_path)
    calls: list[str] = []
    broken = {3}
    factor = {"now": 10}

    async def work(item: int) -> Done:
        calls.append(str(item))
        if item in broken:
            raise RuntimeError("server gone")
        return Done(id=str(item), value=item * factor["now"])

    items = [("1", 1), ("2", 2), ("1", 1), ("3", 3)]  # "1" twice: runs once
    runner = ItemRunner[int, Done](run, "work", concurrency=2)
    first = anyio.run(lambda: runner.run(items, work))
    assert (first.planned, first.todo, first.written, first.failed) == (3, 3, 2, 1)
    assert first.errors == ["3: RuntimeError: server gone"] and sorted(calls) == ["1", "2", "3"]
    assert _status(run)["status"] == "partial"  # an item without a record: a rerun retries it

    broken.clear()
    calls.clear()
    again = anyio.run(lambda: ItemRunner[int, Done](run, "work").run(items, work))
    assert (again.resumed, again.todo, again.written, again.failed) == (2, 1, 1, 0) and calls == ["3"]
    assert _status(run)["status"] == "done"

    calls.clear()
    factor["now"] = 100
    redo = anyio.run(lambda: ItemRunner[int, Done](run, "work").run(
        [("1", 1), ("2", 2), ("3", 3)], work, redo={"1"}))
    assert (redo.redone, redo.written) == (1, 1) and calls == ["1"]
    records = list(run.stage("work").read(Done))
    assert [(r.id, r.value) for r in records] == [("1", 100), ("2", 20), ("3", 30)]  # superseded, in place


def test_a_record_under_another_id_stops_the_run(tmp_path) -> None:
    async def work(item: int) -> Done:
        return Done(id="other", value=item)

    with pytest.raises(BaseException) as info:  # noqa: B017 - a ValueError, maybe in anyio's exception group
        anyio.run(lambda: ItemRunner[int, Done](RunDir(tmp_path), "work").run([("1", 1)], work))
    assert "the record of item '1' has id 'other'" in repr(info.value) + repr(getattr(info.value, "exceptions", ""))
    assert not RunDir(tmp_path).stage("work").ids


def test_a_failure_record_is_written_and_the_rest_goes_on(tmp_path) -> None:
    run = RunDir(tmp_path)

    async def work(item: int) -> Done:
        if item == 2:
            raise ValueError("bad item")
        return Done(id=str(item), value=item)

    def failed(failure: Failure[int]) -> Done:
        return Done(id=failure.item_id, value=-1)

    seen: list[str] = []
    report = anyio.run(lambda: ItemRunner[int, Done](run, "work").run(
        [(str(i), i) for i in range(1, 5)], work, on_error=failed, on_record=lambda r: seen.append(r.id)))
    assert (report.written, report.failed) == (4, 0) and sorted(seen) == ["1", "2", "3", "4"]
    assert {r.id: r.value for r in run.stage("work").read(Done)}["2"] == -1


def test_cancelled_run_is_marked_interrupted_with_what_is_kept(tmp_path) -> None:
    run = RunDir(tmp_path)

    async def work(item: int) -> Done:
        await anyio.sleep(0 if item < 3 else 30)
        return Done(id=str(item), value=item)

    async def cancelled() -> None:
        with anyio.move_on_after(1.0):
            await ItemRunner[int, Done](run, "work", concurrency=8).run([(str(i), i) for i in range(6)], work)

    anyio.run(cancelled)
    status = _status(run)
    assert status["status"] == "interrupted" and status["kept"] == 3
    assert "run the same command again" in status["resume"]
    assert sorted(run.stage("work").ids) == ["0", "1", "2"]


def test_progress_lines_in_a_log(tmp_path, capsys) -> None:
    async def work(item: int) -> Done:
        return Done(id=str(item), value=item)

    anyio.run(lambda: ItemRunner[int, Done](RunDir(tmp_path), "work", progress=True, label=lambda r: "even"
                                            if r.value % 2 == 0 else "odd").run([(str(i), i) for i in range(5)], work))
    err = capsys.readouterr().err
    assert "work: 5 to do" in err and "work: done in" in err and "5 (3 even, 2 odd)" in err
