"""CLI group: ``astra judge`` — measure a trajectory judge against the bundled labelled set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import anyio
import typer

from astra.cli._common import USAGE, JsonOption, console, deprecated_option, emit_json, exit_code, fail

app = typer.Typer(no_args_is_help=True)


@app.command("calibrate")
def calibrate(
    judge: Annotated[str, typer.Option("--judge", help="judge model spec, or 'rules' for the rule-only judge")],
    set_path: Annotated[
        Path | None, typer.Option("--set", help="a calibration JSONL (default: the bundled set)")
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, help="runs over the set, for the spread between runs")] = 1,
    concurrency: Annotated[int, typer.Option(min=1, help="cases judged at once")] = 4,
    timeout_s: Annotated[float, typer.Option("--model-timeout", help="per judge request, seconds")] = 300.0,
    old_timeout_s: Annotated[
        float | None, typer.Option("--timeout", hidden=True, help="deprecated: --model-timeout")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Per-dimension agreement (accuracy, Cohen's kappa) of a judge with labelled trajectories whose
    defects are known (hallucinated parameters, redundant calls, ignored errors, wrong or ungrounded
    answers, fabricated URLs, language mismatch, missing plan), and the spread over repeated runs."""
    from astra.cli.traj import closing, judge_model
    from astra.client import ModelError
    from astra.synthesis.trajectories import JudgeMode
    from astra.synthesis.trajectories._calibration import OUT_PATH, load_calibration_set
    from astra.synthesis.trajectories._calibration import calibrate as run_calibration

    path = set_path or OUT_PATH
    try:
        cases, errors = load_calibration_set(path)
    except OSError as exc:
        raise fail(f"{path}: cannot read: {exc.strerror}", code=USAGE) from None
    for e in errors:
        console.print(f"[yellow]skipped[/] {e}", highlight=False)
    if not cases:
        raise fail(f"{path}: no usable calibration case", code=USAGE)
    mode = JudgeMode.RULES if judge == "rules" else JudgeMode.LLM
    if old_timeout_s is not None:
        deprecated_option("--timeout", "--model-timeout")
        timeout_s = old_timeout_s
    model = judge_model(judge, timeout_s) if mode is JudgeMode.LLM else None
    try:
        report = anyio.run(lambda: closing(model, run_calibration(
            cases, model, mode=mode, repeats=repeats, concurrency=concurrency,
            set_name=str(path) if set_path else "bundled")))
    except (ModelError, ValueError) as exc:
        raise fail(f"{type(exc).__name__}: {exc}", code=exit_code(exc)) from None
    if as_json:
        emit_json(report.model_dump(mode="json", exclude={"runs": {"__all__": {"verdicts"}}}))
        return
    console.print(report.table())
    last = report.runs[-1]
    console.print("per defect (share of items right, last run): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in last.by_defect.items()), highlight=False)
    if last.failed_cases:
        console.print(f"judge failed on {len(last.failed_cases)} case(s) (counted as wrong): "
                      + ", ".join(last.failed_cases[:5]), highlight=False)
    console.print(f"judge calls per case: {report.judge_calls_per_case:g}", highlight=False)
