"""The exports through their consumers' own code: TRL's chat-template and tokenisation helpers on the Parquet rows
HF datasets loads, and LLaMA-Factory's tool formatter / extractor on the ShareGPT file (both installed --no-deps;
only their torch-free modules are imported)."""

from __future__ import annotations

import json

import pytest

from astra.synthesis.trajectories import write_exports
from astra.synthesis.trajectories._export import hf_messages
from astra.synthesis.trajectories._templates import expected_calls
from astra.synthesis.trajectories._tokens import gguf_tokenizer

from ._matrix import (
    LLAMAFACTORY_TOOL_FORMAT,
    llamafactory_function_turns,
    llamafactory_tool_utils,
    sharegpt_alternation_ok,
)


@pytest.mark.parametrize("name", ["SmolLM2", "Qwen2.5", "Qwen3", "Hermes-3", "Llama-3.1", "Mistral-Nemo"])
def test_trl_on_the_parquet_export(name, templates, samples, smollm2_gguf, tmp_path):
    datasets = pytest.importorskip("datasets")
    from trl.data_utils import _tokenize, is_conversational, maybe_apply_chat_template

    template = templates[name]
    tokenizer = gguf_tokenizer(smollm2_gguf, template)
    paths = write_exports(samples, tmp_path, ["parquet"], template=template)
    rows = datasets.load_dataset("parquet", data_files=paths["parquet"], split="train")
    originals = {s.id: expected_calls(hf_messages(s.messages)) for s in samples}
    assert rows.num_rows == 90
    for row in rows:
        example = {"messages": row["messages"]}
        tools = row["tools"] or None  # what SFTTrainer's tokenize_fn passes (a list: no json.loads needed)
        assert is_conversational(example)
        text = maybe_apply_chat_template(example, tokenizer, tools=tools)["text"]
        assert template.parse_calls(text) == originals[row["id"]]
        ids = _tokenize(tokenizer, example["messages"], tools=tools)["input_ids"]
        assert list(ids) == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_llamafactory_tool_formats_on_the_sharegpt_export(templates, samples, tmp_path):
    tool_utils = llamafactory_tool_utils()
    paths = write_exports(samples, tmp_path, ["sharegpt"])
    rows = json.load(open(paths["sharegpt"], encoding="utf-8"))
    info = json.load(open(tmp_path / "dataset_info.json"))
    assert info == {"astra_traj": {"file_name": "sharegpt.json", "formatting": "sharegpt", "columns": {
        "messages": "conversations", "system": "system", "tools": "tools"}}}
    originals = {s.id: expected_calls(hf_messages(s.messages)) for s in samples}
    for row in rows:
        assert sharegpt_alternation_ok(row)
        for template_format in {LLAMAFACTORY_TOOL_FORMAT[t.format] for t in templates.values()}:
            assert llamafactory_function_turns(tool_utils, template_format, row) == originals[row["id"]]
        tool_text = tool_utils.get_tool_utils("qwen").tool_formatter(json.loads(row["tools"]))
        assert all(t["function"]["name"] in tool_text for t in json.loads(json.dumps(samples[0].tools)))
