"""Token-faithful export: the SmolLM2 GGUF's own tokenizer (no network, no torch), checked against TRL's SFT
tokenisation and llama.cpp's tokenizer; per-template mismatch causes."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from astra.synthesis.trajectories import write_exports
from astra.synthesis.trajectories._export import TOKENS_REPORT_FILE, conversations_for, report_lines
from astra.synthesis.trajectories._tokens import TokenIssue, gguf_tokenizer, token_sample, token_samples


@pytest.fixture(scope="module")
def smol(templates, smollm2_gguf):
    template = templates["SmolLM2"]
    return template, gguf_tokenizer(smollm2_gguf, template)


def test_smollm2_tokens_are_what_trl_and_llama_cpp_produce(smol, samples, smollm2_gguf, tmp_path):
    from trl.data_utils import _tokenize, is_conversational

    template, tokenizer = smol
    paths = write_exports(samples, tmp_path, ["hf", "tokens"], template=template, tokenizer=tokenizer)
    report = json.loads((tmp_path / TOKENS_REPORT_FILE).read_text())
    assert report["exported"] == report["samples"] == 90 and report["mismatches"] == {}
    assert report_lines(tmp_path) == ["template_report.json: 90 of 90 for SmolLM2",
                                      "tokens_report.json: 90 of 90 for SmolLM2"]
    records = [json.loads(line) for line in open(paths["tokens"], encoding="utf-8")]
    hf_rows = {r["id"]: r for r in map(json.loads, open(paths["hf"], encoding="utf-8"))}
    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(smollm2_gguf), vocab_only=True, verbose=False)
    for record in records:
        row = hf_rows[record["id"]]
        example = {"messages": row["messages"], "tools": row["tools"] or None}
        assert is_conversational(example)
        # TRL's SFT tokenisation (SFTTrainer's tokenize_fn calls this with the example's messages and tools)
        trl_ids = _tokenize(tokenizer, example["messages"], tools=example["tools"])["input_ids"]
        assert record["input_ids"] == list(trl_ids)
        text = template.render(row["messages"], row["tools"] or None)
        assert record["input_ids"] == llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        ids, mask = record["input_ids"], record["assistant_masks"]
        assert record["prompt_ids"] + record["response_ids"] == ids
        assert record["response_mask"] == mask[len(record["prompt_ids"]):] and not any(mask[:len(record["prompt_ids"])])
        runs, current = [], []  # the trained spans: exactly each assistant turn after its generation prompt
        for token, trained in zip(ids + [None], mask + [0], strict=True):
            if trained:
                current.append(token)
            elif current:
                runs.append(tokenizer.decode(current))
                current = []
        assert runs == [m["content"] + "<|im_end|>\n" for m in row["messages"] if m["role"] == "assistant"]


def test_mismatch_causes_per_template(templates, samples, smollm2_gguf):
    subset = [s for k in range(5) for s in samples if s.messages[1]["content"].startswith(
        "[" + ("single", "parallel", "text_beside", "multi_turn", "tool_error")[k])][::4]
    rates = {}
    for name in ("Qwen2.5", "Qwen3", "Hermes-3", "Mistral-Nemo"):
        template = templates[name]
        kept, convs, _ = conversations_for(subset, template)
        _, report = token_samples(template, gguf_tokenizer(smollm2_gguf, template),
                                  [(s.id, m, t) for s, (m, t) in zip(kept, convs, strict=True)])
        rates[name] = report.mismatches
    assert rates["Qwen2.5"] == {}
    # Qwen3 writes an empty think block on the final assistant turn only: per-turn rendering never matches
    assert rates["Qwen3"] == {TokenIssue.LAST_MESSAGE_RENDERED_DIFFERENTLY: len(subset)}
    # Hermes-3 closes a tool turn without its newline when it is the last message
    assert rates["Hermes-3"] == {TokenIssue.LAST_MESSAGE_RENDERED_DIFFERENTLY: len(subset)}
    # Mistral attaches the tools to the last user turn: only multi-turn conversations move them
    multi = sum(1 for s in subset if "multi_turn" in s.messages[1]["content"])
    assert rates["Mistral-Nemo"] == {TokenIssue.LAST_MESSAGE_RENDERED_DIFFERENTLY: multi}


def test_past_reasoning_dropped_is_named(templates, smollm2_gguf):
    qwen3 = templates["Qwen3"]
    messages = [{"role": "user", "content": "first"},
                {"role": "assistant", "content": "one", "reasoning_content": "thinking about the first"},
                {"role": "user", "content": "second"}, {"role": "assistant", "content": "two"}]
    from astra.synthesis.trajectories._tokens import TokenMismatch

    with pytest.raises(TokenMismatch) as caught:
        token_sample(qwen3, gguf_tokenizer(smollm2_gguf, qwen3), "r", messages, None)
    assert caught.value.issue is TokenIssue.PAST_REASONING_DROPPED
    qwen25 = templates["Qwen2.5"]
    plain = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
    record = token_sample(qwen25, gguf_tokenizer(smollm2_gguf, qwen25), "r", plain, None)
    assert Counter(record.assistant_masks)[1] > 0 and record.response_mask[0] == 1
