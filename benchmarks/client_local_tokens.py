"""Local model: end-to-end tokens/s through the harness vs raw llama-cpp on the same prompts.

Raw: ``Llama.create_chat_completion`` called directly. Harness: ``LocalModel.request`` (the
``local:smollm2`` provider: message conversion, worker thread, reply parsing) on the same
loaded model, same prompts, same settings (greedy, fixed seed, fixed max_tokens), interleaved
prompt by prompt. Target: harness/raw >= 0.9. Also prints the grammar-constrained tool-call
mode (the harness with tools) for reference — not comparable to raw, it decodes under a grammar.
Run: python benchmarks/client_local_tokens.py [rounds]
"""

from __future__ import annotations

import statistics
import sys
import time

import anyio

from astra.client import LocalModel, ModelSettings
from astra.client._local import load_llama
from astra.records import ChatMessage

PROMPTS = [
    "Write two sentences about the sea.",
    "List three uses of a paperclip.",
    "Explain what a time zone is, briefly.",
    "Describe a cat to someone who has never seen one.",
]
MAX_TOKENS = 64
TOOLS = [{"type": "function", "function": {"name": "get_current_time", "description": "Current time in a timezone",
          "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}]


async def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    model = LocalModel("smollm2", n_ctx=2048)
    llm, lock = load_llama(model.path, model.n_ctx)
    settings = ModelSettings(temperature=0.0, max_tokens=MAX_TOKENS, seed=0)
    raw_rates, harness_rates = [], []
    for _ in range(rounds):
        for prompt in PROMPTS:
            start = time.perf_counter()
            with lock:
                out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}],
                                                 max_tokens=MAX_TOKENS, temperature=0.0, seed=0)
            raw_rates.append(out["usage"]["completion_tokens"] / (time.perf_counter() - start))
            start = time.perf_counter()
            resp = await model.request([ChatMessage(role="user", content=prompt)], settings=settings)
            harness_rates.append(resp.usage.output_tokens / (time.perf_counter() - start))
    raw, har = statistics.median(raw_rates), statistics.median(harness_rates)
    ratios = [h / r for h, r in zip(harness_rates, raw_rates, strict=True)]
    print(f"raw llama-cpp   {raw:7.1f} tok/s (median of {len(raw_rates)})")
    print(f"harness local:  {har:7.1f} tok/s   ratio {statistics.median(ratios):.3f} (median of paired ratios)")
    start = time.perf_counter()
    tokens = 0
    for prompt in PROMPTS:
        resp = await model.request([ChatMessage(role="user", content=prompt)], TOOLS, settings)
        tokens += resp.usage.output_tokens
    print(f"harness, grammar-constrained tool mode: {tokens / (time.perf_counter() - start):7.1f} tok/s (reference)")


if __name__ == "__main__":
    anyio.run(main)
