"""CLI group ``astra env``: environments as MCP servers (emit, serve, validate, score, list)."""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from astra.cli._common import USAGE, HomeOption, JsonOption, console, emit_json, fail, user
from astra.errors import validation_problem
from astra.records import EnvironmentSpec

app = typer.Typer(no_args_is_help=True)


def _spec_from_file(path: Path) -> EnvironmentSpec:
    from pydantic import ValidationError

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(f"{path}: cannot read: {exc.strerror or exc}", code=USAGE) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"{path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}", code=USAGE) from exc
    try:
        return EnvironmentSpec.model_validate(data)
    except ValidationError as exc:
        raise fail(validation_problem(f"{path}: not an EnvironmentSpec", exc), code=USAGE) from exc


def _resolve(target: str, home: Path | None) -> tuple[EnvironmentSpec, str | None]:
    """An environment from an emitted DIR, a spec JSON file, a registry name/id, or ``sample:NAME``."""
    from astra.servers import load_sample

    path = Path(target).expanduser()
    if path.is_dir():
        if not (path / "environment.json").is_file():
            raise fail(f"{path}: not an emitted environment directory (no environment.json)", code=USAGE)
        return _spec_from_file(path / "environment.json"), str(path.resolve())
    if path.is_file():
        return _spec_from_file(path), None
    if target.startswith("sample:"):
        try:
            return load_sample(target.split(":", 1)[1]), None
        except FileNotFoundError as exc:
            raise fail(str(exc), code=USAGE) from exc
    from astra.registry import Registry

    with Registry.open(home) as registry:
        found = registry.get_environment(target)
    if found is None:
        raise fail(
            f"no environment {target!r}: not a directory, not a file, not in the registry (see `astra env list`)",
            code=USAGE,
        )
    return found


def _check_starts(spec: EnvironmentSpec) -> None:
    """Launch ``spec`` as an emitted server in a scratch directory; fail (nothing written) unless
    every tool's code compiles (compiled here, never run) and the server starts and lists the
    spec's tools. Failing reference calls only warn: the spec may be work in progress."""
    import tempfile

    from astra.servers import CheckKind, certify_emitted, emit

    broken: list[str] = []
    for impl in spec.tools:
        try:
            compile(impl.source or "", f"<{impl.spec.name}>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            where = f":{exc.lineno}" if isinstance(exc, SyntaxError) and exc.lineno else ""
            broken.append(f"tool {impl.spec.name}{where}: {exc.msg if isinstance(exc, SyntaxError) else exc}")
    if broken:
        raise fail(f"{spec.name}: tool code does not compile, nothing written: {'; '.join(broken)}")
    with tempfile.TemporaryDirectory(prefix="astra-emit-check-") as scratch:
        import anyio

        directory = emit(spec, Path(scratch) / "env")
        report = anyio.run(lambda: certify_emitted(directory))
    listing = [c for c in report.failed if c.kind is CheckKind.LISTING]
    if report.error or listing:
        why = report.error or "; ".join(f"{c.name}: {c.detail}" for c in listing)
        raise fail(f"{spec.name}: the emitted server does not start cleanly, nothing written: {why}")
    for check in report.failed:
        console.print(
            f"[yellow]warning:[/] {user(spec.name)}: {user(check.name)}: {user(check.detail)}", highlight=False
        )


@app.command("emit")
def emit_cmd(
    spec_json: Annotated[str, typer.Argument(help="EnvironmentSpec JSON file, registry name/id, or sample:NAME")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory to write the server into")],
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="record the environment and its location in the registry")
    ] = True,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Write a standalone MCP server directory (server.py, environment.json, README, mcpServers block).

    The server is first emitted into a scratch directory and launched over stdio: a spec whose
    server does not start (or lists other tools than the spec) exits non-zero and writes nothing."""
    from astra.servers import emit, mcp_servers_block

    spec, _ = _resolve(spec_json, home)
    _check_starts(spec)
    directory = emit(spec, out)
    if register:
        from astra.registry import Registry

        with Registry.open(home) as registry:
            registry.save_environment(spec, directory)
    summary = {
        "environment_id": spec.id,
        "name": spec.name,
        "directory": str(directory),
        "tools": [t.spec.name for t in spec.tools],
        "sandboxed": spec.sandboxed,
        "registered": register,
        "stdio": f"python {directory / 'server.py'}",
        "http": f"python {directory / 'server.py'} --http --port 8000",
        "mcp_servers": mcp_servers_block(spec, directory),
    }
    if json_out:
        emit_json(summary)
    console.print(f"[green]emitted[/] {user(spec.name)} ({len(spec.tools)} tools) -> {user(directory)}",
                  highlight=False)
    console.print(f"  stdio: python {user(directory / 'server.py')}", highlight=False)
    console.print(f"  http:  python {user(directory / 'server.py')} --http --port 8000", highlight=False)


@app.command("serve")
def serve_cmd(
    target: Annotated[str, typer.Argument(help="emitted DIR, spec JSON, registry name/id, or sample:NAME")],
    http: Annotated[bool, typer.Option("--http", help="serve streamable HTTP instead of stdio")] = False,
    port: Annotated[int, typer.Option("--port")] = 8000,
    host: Annotated[str, typer.Option(
        "--host", help="HTTP bind address (others than loopback need --token and --allow-remote)")] = "127.0.0.1",
    token: Annotated[str | None, typer.Option(
        "--token", help="require this bearer token (HTTP; visible in the process list: prefer --token-file or "
        "ASTRA_ENV_TOKEN)")] = None,
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", help="read the bearer token from this file (chmod 600)")] = None,
    unsafe_no_sandbox: Annotated[bool, typer.Option(
        "--unsafe-no-sandbox", help="run model-written tool code WITHOUT the bubblewrap sandbox (dangerous)")] = False,
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="allow a non-loopback --host (needs --token)")] = False,
    max_episodes: Annotated[int, typer.Option(
        "--max-episodes", min=1, help="open episodes at most; more are refused")] = 1024,
    episode_ttl: Annotated[float, typer.Option(
        "--episode-ttl", min=0, help="seconds an idle episode lives (0: forever)")] = 3600.0,
    home: HomeOption = None,
) -> None:
    """Serve an environment over stdio (default) or streamable HTTP."""
    from rich.markup import escape

    from astra.servers import BindRefused, build_server, check_bind, serve
    from astra.servers._runtime import TokenError, resolve_token
    from astra.servers._sandbox import UNSAFE_ENV

    if unsafe_no_sandbox:
        os.environ[UNSAFE_ENV] = "1"
    try:
        token = resolve_token(token, token_file)
    except TokenError as exc:
        raise fail(escape(str(exc)), code=USAGE) from None

    if http:
        try:
            check_bind(host, token=token, allow_remote=allow_remote)
        except BindRefused as exc:
            raise fail(escape(str(exc)), code=USAGE) from None
    spec, _ = _resolve(target, home)
    server = build_server(spec, bearer_token=token if http else None, public_url=f"http://{host}:{port}/mcp",
                          max_episodes=max_episodes, episode_ttl_s=episode_ttl or None)
    if http:
        console.print(f"serving {escape(spec.name)} on http://{escape(host)}:{port}/mcp"
                      + (" (bearer token required)" if token else ""))
    serve(server, http=http, host=host, port=port, allow_remote=allow_remote)


@app.command("validate")
def validate_cmd(
    directory: Annotated[Path, typer.Argument(help="an emitted environment directory")],
    timeout: Annotated[float, typer.Option("--timeout", help="seconds for the whole run")] = 120.0,
    json_out: JsonOption = False,
) -> None:
    """Launch DIR/server.py over stdio, list its tools, replay the reference calls, check the results."""
    import anyio

    from astra.servers import certify_emitted

    with console.status(f"validating {directory} over stdio", spinner="dots") if not json_out else nullcontext():
        report = anyio.run(lambda: certify_emitted(directory, timeout_s=timeout))
    if json_out:
        emit_json(report.model_dump(mode="json") | {"failed": len(report.failed)})
    else:
        table = Table("check", "result", "detail", title=user(report.name or directory))
        for check in report.checks:  # names and details carry the server's own text (tool results)
            table.add_row(user(check.name), "[green]ok[/]" if check.ok else "[red]FAIL[/]", user(check.detail))
        console.print(table)
    if report.error:
        console.print(f"[red]error:[/] {user(report.error)}", highlight=False)
    passed = sum(c.ok for c in report.checks)
    console.print(
        f"{passed}/{len(report.checks)} checks passed" + ("" if report.ok else " [red](validation failed)[/]")
    )
    if not report.ok:
        raise typer.Exit(1)


@app.command("score")
def score_cmd(
    env: Annotated[str, typer.Argument(help="emitted DIR, spec JSON, registry name/id, or sample:NAME")],
    trajectory_file: Annotated[
        Path, typer.Argument(help="Trajectory records: JSONL (one per line) or one JSON object")
    ],
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Score trajectories against the environment's verifiers: per-call checks and the process reward."""
    from pydantic import ValidationError

    from astra.records import Trajectory
    from astra.servers import EpisodeScore, score_episode

    spec, _ = _resolve(env, home)
    try:
        text = trajectory_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(f"{trajectory_file}: cannot read: {exc.strerror or exc}", code=USAGE) from exc
    stripped = text.strip()
    lines: list[tuple[int, str]]
    if stripped.startswith("{") and "\n{" not in stripped:
        lines = [(1, stripped)]
    else:
        lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    scores: list[EpisodeScore] = []
    errors: list[str] = []
    for lineno, line in lines:
        try:
            trajectory = Trajectory.model_validate_json(line)
        except ValidationError as exc:
            errors.append(validation_problem(f"{trajectory_file}:{lineno}", exc))
            continue
        scores.append(score_episode(spec, trajectory))
    for error in errors:
        console.print(error, style="red", markup=False, highlight=False)
    mean = sum(s.process_reward for s in scores) / len(scores) if scores else None
    if json_out:
        emit_json(
            {
                "environment_id": spec.id,
                "scores": [s.model_dump() for s in scores],
                "errors": errors,
                "mean_process_reward": mean,
            }
        )
    else:
        table = Table("trajectory", "calls", "solved", "recall", "precision", "process reward", "verified calls passed")
        for s in scores:
            verified = [c for c in s.per_call if c.passed is not None]
            table.add_row(
                user(s.trajectory_id or "-"), str(s.tool_calls), f"{len(s.solved_subquestions)}/{s.total_subquestions}",
                f"{s.recall:.2f}", f"{s.precision:.2f}", f"{s.process_reward:.3f}",
                f"{sum(bool(c.passed) for c in verified)}/{len(verified)}",
            )
        console.print(table)
        console.print(
            f"{len(scores)} scored, {len(errors)} rejected"
            + (f", mean process reward {mean:.3f}" if mean is not None else "")
        )
    failed = [s for s in scores if s.status != "ok"]
    for s in failed:
        console.print(f"[red]{user(s.trajectory_id)}: {user(s.error)}[/]", highlight=False)
    if errors or failed or not scores:
        raise typer.Exit(1)


@app.command("list")
def list_cmd(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Environments in the registry (with where they were emitted) and the bundled samples."""
    from astra.registry import Registry
    from astra.servers import SAMPLES_DIR

    with Registry.open(home) as registry:
        rows = registry.list_environments()
    samples = sorted(p.stem for p in SAMPLES_DIR.glob("*.json"))
    if json_out:
        emit_json(
            {
                "environments": [
                    {
                        "id": s.id,
                        "name": s.name,
                        "tools": len(s.tools),
                        "verifiers": len(s.verifiers),
                        "sandboxed": s.sandboxed,
                        "location": loc,
                    }
                    for s, loc in rows
                ],
                "samples": samples,
            }
        )
        return
    table = Table("name", "id", "tools", "verifiers", "sandboxed", "location")
    for s, loc in rows:
        table.add_row(
            user(s.name), user(s.id), str(len(s.tools)), str(len(s.verifiers)), "yes" if s.sandboxed else "no",
            user(loc or "-"),
        )
    console.print(table)
    console.print(f"{len(rows)} environment(s); samples: {', '.join('sample:' + n for n in samples)}")
