"""The template x target conformance matrix and the token-faithful mismatch table.

``PYTHONPATH=.:tests python -m sft._matrix`` (from the repository root, after scripts/setup.sh) runs the scripted
100-sample run and prints both tables in Markdown (the closing note of issue 15 quotes them).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from astra.synthesis.trajectories._export import SFTSample, hf_messages, hf_tools
from astra.synthesis.trajectories._templates import ChatTemplate, ToolCallFormat, expected_calls

TARGETS = ("openai", "hf", "parquet", "hf+target")


def render_counts(template: ChatTemplate, target: str, samples: Sequence[SFTSample],
                  parquet_rows: Sequence[dict[str, Any]] | None = None) -> Counter[str]:
    """Samples by outcome ("clean" or a RenderIssue) for one export profile through one template."""
    out: Counter[str] = Counter()
    for index, s in enumerate(samples):
        calls = expected_calls(hf_messages(s.messages))
        if target == "openai":
            check = template.check(s.messages, s.tools, calls)
        elif target == "hf":
            check = template.check(hf_messages(s.messages), hf_tools(s.tools), calls)
        elif target == "parquet":
            assert parquet_rows is not None
            check = template.check(parquet_rows[index]["messages"], parquet_rows[index]["tools"], calls)
        else:
            messages, tools, _ = template.adapt(hf_messages(s.messages), hf_tools(s.tools))
            check = template.check(messages, tools, calls)
        out["clean" if check.clean else str(check.issue)] += 1
    return out


def llamafactory_tool_utils() -> ModuleType:
    """LLaMA-Factory's tool_utils module, loaded by path: the package's __init__ imports torch, this file does not."""
    spec = importlib.util.find_spec("llamafactory")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llamafactory is not installed (scripts/setup.sh installs it --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "tool_utils.py"
    module_spec = importlib.util.spec_from_file_location("llamafactory_tool_utils", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses and NamedTuples look their module up
    module_spec.loader.exec_module(module)
    return module


# which LLaMA-Factory tool format each template family's LLaMA-Factory template uses
LLAMAFACTORY_TOOL_FORMAT = {ToolCallFormat.HERMES: "qwen", ToolCallFormat.LLAMA3_JSON: "llama3",
                            ToolCallFormat.MISTRAL: "mistral", ToolCallFormat.TEXT: "default"}


def llamafactory_function_turns(tool_utils: ModuleType, tool_format: str, row: dict[str, Any]
                                ) -> list[tuple[str, Any]]:
    """The calls LLaMA-Factory trains on for a ShareGPT row: each function_call value split as its
    FunctionFormatter does (text before ``<tool_call>``, calls inside), formatted by the template's tool utils,
    then read back with the same utils' extractor."""
    utils = tool_utils.get_tool_utils(tool_format)
    calls: list[tuple[str, Any]] = []
    for turn in row["conversations"]:
        if turn["from"] != "function_call":
            continue
        match = re.search(r"<tool_call>(.*?)</tool_call>", turn["value"], re.DOTALL)
        assert match is not None, turn["value"]
        items = json.loads(match.group(1))
        functions = [tool_utils.FunctionCall(i["name"], json.dumps(i["arguments"], ensure_ascii=False)) for i in items]
        extracted = utils.tool_extractor(utils.function_formatter(functions))
        assert not isinstance(extracted, str), f"{tool_format}: could not read back {extracted!r}"
        calls += [(f.name, json.loads(f.arguments)) for f in extracted]
    return calls


def sharegpt_alternation_ok(row: dict[str, Any]) -> bool:
    """LLaMA-Factory's SharegptDatasetConverter rule: human/observation at odd, gpt/function_call at even positions,
    an even number of turns (its module imports torch through llamafactory.extras, so the rule is restated here)."""
    odd, even = ("human", "observation"), ("gpt", "function_call")
    turns = row["conversations"]
    return len(turns) % 2 == 0 and all(t["from"] in (odd, even)[i % 2] for i, t in enumerate(turns))


def main() -> None:
    import tempfile

    import datasets

    from astra.client._local import smollm2_path
    from astra.synthesis.trajectories._export import answer_missing, conversations_for, write_exports
    from astra.synthesis.trajectories._templates import MATRIX_TEMPLATES, load_template
    from astra.synthesis.trajectories._tokens import gguf_tokenizer, token_samples

    from ._run import run
    from .conftest import as_sample

    with tempfile.TemporaryDirectory() as tmp:
        trajs = run(Path(tmp) / "run")
        samples = sorted((as_sample(t) for t in trajs if answer_missing(t) is None), key=lambda s: s.id)
        paths = write_exports(samples, Path(tmp) / "export", ["parquet"])
        rows = list(datasets.load_dataset("parquet", data_files=paths["parquet"], split="train"))
    print(f"{len(trajs)} trajectories, {len(samples)} end with an answer\n")
    print("| template | " + " | ".join(TARGETS) + " |\n|---|" + "---|" * len(TARGETS))
    token_lines = []
    for name in MATRIX_TEMPLATES:
        template = load_template(name)
        cells = []
        for target in TARGETS:
            counts = render_counts(template, target, samples, rows)
            rest = ", ".join(f"{k} {v}" for k, v in counts.most_common() if k != "clean")
            cells.append(f"{counts['clean']}/{len(samples)}" + (f" ({rest})" if rest else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
        kept, convs, _ = conversations_for(samples, template)
        tokenizer = gguf_tokenizer(smollm2_path(), template)
        conversations = [(s.id, m, t) for s, (m, t) in zip(kept, convs, strict=True)]
        _, report = token_samples(template, tokenizer, conversations)
        causes = ", ".join(f"{k} {v}" for k, v in sorted(report.mismatches.items()))
        token_lines.append(f"| {name} | {report.exported}/{report.samples} | {report.mismatch_rate:.0%} | {causes} |")
    print("\n| template | token-faithful | mismatch rate | causes |\n|---|---|---|---|")
    print("\n".join(token_lines))


if __name__ == "__main__":
    main()
