"""CLI group ``astra bfcl``: the BFCL v3 multi-turn arena over MCP."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from astra.cli._common import USAGE, HomeOption, JsonOption, console, emit_json, fail, resumable_run

app = typer.Typer(no_args_is_help=True)

_SHOWN_FAILURES = 40


def _split(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _categories(values: list[str] | None) -> list[str]:
    from astra.bfcl import CATEGORIES

    chosen = _split(values) or ["all"]
    if "all" in chosen:
        return list(CATEGORIES)
    unknown = [c for c in chosen if c not in CATEGORIES]
    if unknown:
        raise fail(f"--category {', '.join(unknown)}: choose from {', '.join(CATEGORIES)} or all", code=USAGE)
    return [c for c in CATEGORIES if c in chosen]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _score_table(summary: Any) -> Table:
    from astra.bfcl import CATEGORIES, CATEGORY_TITLES

    table = Table(title=f"BFCL v3 multi-turn, accuracy %: {summary.model}")
    table.add_column("", no_wrap=True)
    for category in CATEGORIES:
        table.add_column(CATEGORY_TITLES[category], justify="right", no_wrap=True)
    table.add_column("Overall", justify="right", style="bold", no_wrap=True)
    accuracy, counts = [], []
    for category in CATEGORIES:
        score = summary.categories.get(category)
        accuracy.append("-" if score is None else _percent(score["accuracy"]))
        counts.append("" if score is None else f"{int(score['passed'])}/{int(score['total'])}")
    table.add_row("accuracy", *accuracy, _percent(summary.overall))
    table.add_row("passed", *counts, "", style="dim")
    return table


@app.command("run")
def run(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="model spec: scripted:gold | openai:<m> | anthropic:<m> | local:<gguf|smollm2>"
        ),
    ],
    category: Annotated[
        list[str] | None,
        typer.Option(
            "--category", "-c", help="base | long_context | miss_func | miss_param | all (repeat or comma-separate)"
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="at most N entries per category")] = None,
    ids: Annotated[
        list[str] | None,
        typer.Option("--ids", help="only these entries: multi_turn_base_3 or base_3 (repeat or comma-separate)"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="run directory (default: <home>/runs/bfcl/<model>[-<servers>]); rerun to resume"
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-j", min=1, help="entries played at once")] = 8,
    temperature: Annotated[float | None, typer.Option("--temperature", help="sampling temperature")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="max tokens per model reply")] = None,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint (openai: specs)")
    ] = None,
    n_ctx: Annotated[int | None, typer.Option("--n-ctx", help="context window for local: models")] = None,
    max_steps_per_turn: Annotated[
        int,
        typer.Option(
            "--max-steps-per-turn", min=1, help="BFCL's limit is 20; lower only for smoke runs (not comparable)"
        ),
    ] = 20,
    servers: Annotated[
        str,
        typer.Option(
            "--servers", help="MCP server implementation: astra (astra.servers) | bfcl (BFCL's exact result text)"
        ),
    ] = "astra",
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Play BFCL multi-turn entries through our MCP servers and score them with BFCL's checker."""
    import anyio

    from astra.bfcl import SERVER_IMPLEMENTATIONS, BfclUnavailable, load_entries, model_factory, run_bfcl
    from astra.client import ModelError, ModelSettings
    from astra.config import astra_home

    if servers not in SERVER_IMPLEMENTATIONS:
        raise fail(f"--servers {servers}: choose from {', '.join(SERVER_IMPLEMENTATIONS)}", code=USAGE)
    categories = _categories(category)
    try:
        entries = load_entries(categories, ids=_split(ids) or None, limit=limit)
    except BfclUnavailable as exc:
        raise fail(str(exc), code=exc.exit_code) from exc
    except ValueError as exc:
        raise fail(str(exc), code=USAGE) from exc
    if not entries:
        raise fail("no entries selected", code=USAGE)

    options: dict[str, Any] = {}
    if base_url:
        options["base_url"] = base_url
    if n_ctx:
        options["n_ctx"] = n_ctx
    try:
        factory = model_factory(model, **options)
    except (ModelError, ValueError) as exc:
        raise fail(f"--model {model}: {exc}", code=USAGE) from exc
    settings = ModelSettings(temperature=temperature, max_tokens=max_tokens)
    run_dir = out or astra_home(home) / "runs" / "bfcl" / (_slug(model) + ("" if servers == "astra" else f"-{servers}"))

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[score]}"), console=console, transient=False, disable=json_out,
    ) as progress:
        task = progress.add_task(f"bfcl {model}", total=len(entries), score="")
        passed = seen = 0

        def on_result(result: Any) -> None:
            nonlocal passed, seen
            seen += 1
            passed += result.valid
            progress.update(task, advance=1, score=f"{passed}/{seen} pass")

        # Entries already in the run directory are not replayed: count them as done up front.
        from astra.runs import RunDir

        already = len({e.id for e in entries} & RunDir(run_dir).stage("results").ids)
        progress.update(task, completed=already)
        with resumable_run(run_dir):
            summary = anyio.run(
                lambda: run_bfcl(
                    factory, entries, run_dir, model_name=model, concurrency=concurrency, settings=settings,
                    max_steps_per_turn=max_steps_per_turn, servers=servers, on_result=on_result,
                )
            )
    if json_out:
        emit_json(summary.model_dump())
    console.print(_score_table(summary))
    if summary.failures:
        table = Table(title=f"failing entries ({len(summary.failures)})")
        table.add_column("id")
        table.add_column("BFCL error type")
        for failure in summary.failures[:_SHOWN_FAILURES]:
            table.add_row(failure["id"], str(failure["error_type"]))
        if len(summary.failures) > _SHOWN_FAILURES:
            table.add_row(f"... {len(summary.failures) - _SHOWN_FAILURES} more", "(see --json or results.jsonl)")
        console.print(table)
    for disagreement in summary.gold_disagreements:
        console.print(
            f"[red]gold replay differs from the ground truth fed directly: {disagreement}[/]", highlight=False
        )
    if summary.mcp_unfaithful:
        note = (" (astra.servers refuses arguments that do not match the schema; BFCL's executor runs them: "
                "--servers bfcl reproduces BFCL exactly)" if servers == "astra" else "")
        console.print(
            f"[yellow]server state differs from BFCL executing the same calls on {len(summary.mcp_unfaithful)} "
            f"entries{note}: {', '.join(summary.mcp_unfaithful)}[/]", highlight=False,
        )
    console.print(
        f"{len(entries)} entries ({summary.scored_now} played now, {summary.resumed} resumed) in "
        f"{summary.elapsed_s:.1f}s; results in {summary.run_dir}/results.jsonl"
    )
    if summary.gold_disagreements:
        raise typer.Exit(1)
