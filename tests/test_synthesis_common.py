import anyio
import pytest
from pydantic import BaseModel

from astra.client import ScriptedModel
from astra.jsonutil import JSONExtractionError, extract_all_json_objects, extract_json
from astra.records import QAItem
from astra.runs import RunDir
from astra.synthesis import LLMOutputError, Outcome, Stage, ask_json


def test_extract_json_variants():
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('Sure!\n```json\n{"a": 2}\n```') == {"a": 2}
    assert extract_json('<tool_call>{"name": "f"}</tool_call>') == {"name": "f"}
    assert extract_json('blah {"a": [1, 2]} trailing') == {"a": [1, 2]}
    with pytest.raises(JSONExtractionError):
        extract_json("no json here {")
    assert extract_all_json_objects('{"a":1} and {"b":2}') == [{"a": 1}, {"b": 2}]


class Verdict(BaseModel):
    ok: bool
    score: float


def test_ask_json_retries_then_validates():
    model = ScriptedModel(["not json", '{"ok": true}', '```json\n{"ok": true, "score": 0.5}\n```'])
    value, audit = anyio.run(lambda: ask_json(model, "judge this", Verdict))
    assert value == Verdict(ok=True, score=0.5)
    assert len(audit) == 3 and audit[0]["raw"] == "not json"


def test_ask_json_fails_loudly_never_defaults():
    model = ScriptedModel(["nope", "still nope"])
    with pytest.raises(LLMOutputError) as info:
        anyio.run(lambda: ask_json(model, "judge", Verdict, retries=1))
    assert info.value.reason.startswith("bad_json")
    assert len(info.value.audit) == 2


def test_stage_resumes_without_duplicates(tmp_path):
    run = RunDir(tmp_path / "run")
    calls: list[str] = []

    async def fn(item: str) -> Outcome:
        calls.append(item)
        if item == "boom":
            raise RuntimeError("exploded")
        if item == "skip":
            return Outcome.drop("filtered: too easy")
        return Outcome.keep(QAItem(id=item, question=f"q {item}", answer="a"))

    items = [(x, x) for x in ["a", "skip", "boom", "b"]]
    stage = Stage(run, "qa", QAItem)
    counts = anyio.run(lambda: stage.run_items(items[:2], fn, progress=False))
    assert counts.inputs == 2 and counts.outputs == 1
    counts = anyio.run(lambda: Stage(run, "qa", QAItem).run_items(items, fn, progress=False))
    assert calls == ["a", "skip", "boom", "b"] or sorted(calls) == sorted(["a", "skip", "boom", "b"])
    assert counts.inputs == 4 and counts.outputs == 2 and counts.dropped == 2 and counts.failed == 1
    assert counts.drop_reasons == {"filtered": 1, "error": 1}
    assert [q.id for q in Stage(run, "qa", QAItem).outputs()] in (["a", "b"],)
