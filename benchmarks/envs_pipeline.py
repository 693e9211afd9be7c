"""Benchmark: the environment synthesis pipeline on the bundled QA set (run by hand).

    .venv/bin/python benchmarks/envs_pipeline.py                 # scripted oracle, concurrency 1 vs 2
    .venv/bin/python benchmarks/envs_pipeline.py --model local:smollm2 --questions 8

With the scripted oracle the model costs nothing, so the figures are the pipeline's own cost:
sandboxed tool verification, merging, server emission and stdio certification. The baseline
(concurrency 1: one sandbox, one certification at a time) runs in the same process, and each
stage's time is printed with its ratio against it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anyio
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from astra.synthesis.environments import (  # noqa: E402
    STAGES,
    demo_config,
    funnel_problems,
    run_environment_pipeline,
)

console = Console(stderr=True)


def _run(root: Path, label: str, model_spec: str, questions: int, concurrency: int):
    config = demo_config(root / label, model_spec=model_spec, home=root / label / "home")
    lines = config.qa_path.read_text().splitlines()[:questions]
    qa = root / label / "qa.jsonl"
    qa.parent.mkdir(parents=True, exist_ok=True)
    qa.write_text("\n".join(lines) + "\n")
    config = config.model_copy(update={"qa_path": qa, "concurrency": concurrency})
    model = None
    if model_spec == "scripted:oracle":
        from synthesis_envs.envs_gold import oracle_model

        model = oracle_model()
    start = time.perf_counter()
    result = anyio.run(lambda: run_environment_pipeline(config, model=model, progress=False))
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="scripted:oracle")
    parser.add_argument("--questions", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = {}
        levels = (1, 2) if args.model == "scripted:oracle" else (1,)
        for c in levels:
            runs[c] = _run(root, f"c{c}", args.model, args.questions, c)
        base_result, base_total = runs[levels[0]]
        table = Table(title=f"envs pipeline, {args.questions} questions, model {args.model}")
        table.add_column("stage")
        for c in levels:
            table.add_column(f"concurrency {c} (s)")
        if len(levels) > 1:
            table.add_column("ratio vs baseline")
        for stage in STAGES:
            cells = [f"{runs[c][0].timings.get(stage, 0.0):.3f}" for c in levels]
            if len(levels) > 1:
                base = base_result.timings.get(stage, 0.0)
                cells.append(f"{runs[levels[-1]][0].timings.get(stage, 0.0) / base:.2f}" if base else "-")
            table.add_row(stage, *cells)
        totals = [f"{runs[c][1]:.2f}" for c in levels]
        if len(levels) > 1:
            totals.append(f"{runs[levels[-1]][1] / base_total:.2f}")
        table.add_row("total", *totals)
        console.print(table)
        final = runs[levels[-1]][0]
        console.print(final.funnel.render())
        console.print(f"funnel problems: {funnel_problems(final.funnel) or 'none'}")
        console.print(f"servers emitted: {len(final.server_dirs)}")


if __name__ == "__main__":
    main()
