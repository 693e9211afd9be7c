"""CLI group ``astra registry``: import, add (live discovery), list, show, remove."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from astra.cli._common import USAGE, HomeOption, JsonOption, console, emit_json, exit_code, fail, user
from astra.config import default_db_path
from astra.records import HttpLaunch, ServerSpec, StdioLaunch

app = typer.Typer(no_args_is_help=True)


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise fail(f"{option} {value!r}: expected KEY=VALUE", code=USAGE)
        out[key] = val
    return out


def _launch_text(spec: ServerSpec) -> str:
    launch = spec.launch
    if isinstance(launch, StdioLaunch):
        import shlex

        return "stdio: " + shlex.join([launch.command, *launch.args])
    if isinstance(launch, HttpLaunch):
        return f"{'sse' if launch.transport == 'sse' else 'http'}: {launch.url}"
    if launch.kind == "environment":
        return f"environment: {launch.environment_id}"
    if launch.remote is not None:
        return f"simulated (remote: {launch.remote.url})"
    return "simulated"


@app.command("import")
def import_(
    files: Annotated[list[Path], typer.Argument(help="ASTRA mcp_servers.jsonl and/or MCP registry server.json files")],
    strict: Annotated[bool, typer.Option("--strict", help="a broken tool rejects its server, and any error "
                                         "leaves the whole file unimported")] = False,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Import servers and tools from files; bad records are reported as FILE:LINE: field: reason.

    Also reads the original ASTRA's intermediate files (mcp_info-wrapped records). A broken tool
    is left out and reported while the rest of its server is kept (unless --strict). Secrets in
    call_info are never stored: the notices name the environment variable to set instead."""
    from astra.registry import ImportReport, Registry, import_file

    total = ImportReport()
    with Registry.open(home) as registry:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True, disable=json_out,
        ) as progress:
            for path in files:
                lines = 0
                try:
                    lines = path.read_bytes().count(b"\n") + 1 if path.is_file() else 0
                except OSError:
                    pass
                task = progress.add_task(str(path), total=lines or None)
                report = import_file(registry, path, strict=strict,
                                     on_record=lambda line, t=task: progress.update(t, completed=line))
                progress.update(task, completed=lines)
                total = total.merge(report)
    for error in total.errors:
        console.print(error, style="red", markup=False, highlight=False, soft_wrap=True)
    for notice in total.notices:
        console.print(notice, style="yellow", markup=False, highlight=False, soft_wrap=True)
    summary = {k: v for k, v in total.model_dump().items() if k != "servers"}
    summary["db"] = str(default_db_path(home))
    if json_out:
        emit_json(summary)
    console.print(
        f"{len(total.files)} file(s), {total.records} record(s): [green]{total.imported} imported[/], "
        f"{total.unchanged} unchanged, [{'red' if total.rejected else 'green'}]{total.rejected} rejected[/]"
        + (f", [red]{total.tools_rejected} tool(s) left out[/]" if total.tools_rejected else "")
    )
    if not total.ok:
        raise typer.Exit(1)


_ADD_OPTIONS = ("--url", "--header", "--sse", "--env", "--cwd", "--title", "--description", "--domain",
                "--timeout", "--home", "--json")


def _warn_own_options(server_args: list[str]) -> None:
    """Everything after ``--`` goes to the server, even what looks like astra's own options:
    say so, since ``... -- server --timeout 60`` usually meant astra's ``--timeout``."""
    own = [a for a in server_args if a.split("=", 1)[0] in _ADD_OPTIONS]
    if own:
        console.print(f"[yellow]warning:[/] {user(', '.join(own))} after -- {'is' if len(own) == 1 else 'are'} "
                      "passed to the server, not to astra; put astra's options before --", highlight=False)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="registry name for the server")],
    command: Annotated[
        list[str] | None, typer.Argument(help="after --: the command that starts a stdio server")
    ] = None,
    url: Annotated[str | None, typer.Option("--url", help="streamable HTTP endpoint instead of a command")] = None,
    header: Annotated[list[str] | None, typer.Option("--header", help="HTTP header K=V (repeatable)")] = None,
    sse: Annotated[bool, typer.Option("--sse", help="with --url: the legacy HTTP+SSE transport")] = False,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="environment variable K=V for the server (repeatable)")
    ] = None,
    cwd: Annotated[str | None, typer.Option("--cwd", help="working directory of the stdio server")] = None,
    title: Annotated[str | None, typer.Option("--title")] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    domain: Annotated[str | None, typer.Option("--domain")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for the server's tool list")] = 30.0,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Start (stdio) or reach (--url) a live MCP server, list all its tools and store them.

    Examples: astra registry add time -- mcp-server-time --local-timezone UTC;
    astra registry add docs --url http://127.0.0.1:8000/mcp --header Authorization='Bearer X';
    astra registry add legacy --url http://127.0.0.1:8000/sse --sse
    """
    from astra.registry import DiscoveryError, Registry, add_server

    target: StdioLaunch | HttpLaunch
    if url and command:
        raise fail("give either --url URL or -- COMMAND [ARGS...], not both", code=USAGE)
    if url:
        if env:
            raise fail("--env applies to stdio servers (-- COMMAND ...), not --url", code=USAGE)
        target = HttpLaunch(url=url, headers=_pairs(header, "--header"), transport="sse" if sse else "streamable-http")
    elif command:
        if header or sse:
            raise fail("--header and --sse apply to --url servers", code=USAGE)
        _warn_own_options(command[1:])
        program = command[0]
        if os.sep in program and not os.path.isabs(program):
            program = os.path.abspath(program)  # stored launches must work from any directory
        target = StdioLaunch(command=program, args=command[1:], env=_pairs(env, "--env"), cwd=cwd)
    else:
        raise fail("nothing to reach: give -- COMMAND [ARGS...] or --url URL", code=USAGE)

    with console.status(f"discovering tools of {name}...", spinner="dots") if not json_out else nullcontext():
        try:
            with Registry.open(home) as registry:
                spec, changed = add_server(
                    registry, name, target, title=title, description=description, domain=domain, timeout_s=timeout
                )
        except DiscoveryError as exc:
            if json_out:
                emit_json({"name": name, "ok": False, "error": str(exc)})
            raise fail(str(exc), code=exit_code(exc)) from None
    if json_out:
        emit_json({"name": name, "ok": True, "changed": changed, "tools": [t.name for t in spec.tools],
                   "launch": spec.launch.model_dump()})
    console.print(
        f"[green]{user(name)}[/]: {len(spec.tools)} tool(s) {'stored' if changed else 'unchanged'} "
        f"({user(', '.join(t.name for t in spec.tools[:8]))}{', ...' if len(spec.tools) > 8 else ''})"
    )


@app.command("list")
def list_(
    domain: Annotated[str | None, typer.Option("--domain", help="only servers of this domain")] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """List the registered servers with their domain, launch and tool count."""
    from astra.registry import Registry

    with Registry.open(home) as registry:
        servers = registry.list_servers(domain)
    if json_out:
        emit_json([
            {"name": s.name, "title": s.title, "domain": s.domain, "launch": s.launch.kind, "tools": len(s.tools),
             "source": s.source}
            for s in servers
        ])
    table = Table(title=f"{len(servers)} server(s)" + (f" in domain {user(repr(domain))}" if domain else ""))
    for col in ("name", "domain", "tools", "launch", "title"):
        table.add_column(col, justify="right" if col == "tools" else "left")
    for s in servers:
        table.add_row(
            user(s.name), user(s.domain or "-"), str(len(s.tools)), user(_launch_text(s)), user(s.title or "")
        )
    console.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="server name")],
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show one server: how it is launched, and each tool with its parameters."""
    from astra.registry import Registry

    with Registry.open(home) as registry:
        spec = registry.get_server(name)
        known = registry.server_names() if spec is None else []
    if spec is None:
        hint = f" (known: {', '.join(known[:20])}{', ...' if len(known) > 20 else ''})" if known else ""
        raise fail(f"no server named {name!r} in the registry{hint}", code=USAGE)
    if json_out:
        emit_json(spec.model_dump(mode="json"))
    console.print(f"[bold]{user(spec.name)}[/]  {user(spec.title or '')}", highlight=False)
    if spec.description:
        console.print(user(spec.description), highlight=False)
    console.print(f"domain: {user(spec.domain or '-')}   launch: {user(_launch_text(spec))}   "
                  f"source: {user(spec.source or '-')}", highlight=False)
    table = Table(title=f"{len(spec.tools)} tool(s)")
    for col in ("tool", "parameters", "outputs", "description"):
        table.add_column(col)
    for tool in spec.tools:
        required = set(tool.input_schema.get("required", []))
        params = ", ".join(f"{p}{'*' if p in required else ''}" for p in tool.input_schema.get("properties", {}))
        outputs = ", ".join((tool.output_schema or {}).get("properties", {}))
        table.add_row(user(tool.name), user(params), user(outputs or "-"), user(tool.description[:80]))
    console.print(table)


@app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="server name")],
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Remove a server and its tools from the registry."""
    from astra.registry import Registry

    with Registry.open(home) as registry:
        removed = registry.delete_server(name)
    if json_out:
        emit_json({"name": name, "removed": removed})
    if not removed:
        raise fail(f"no server named {name!r} in the registry", code=USAGE)
    console.print(f"removed {user(name)}")
