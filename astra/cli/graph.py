"""CLI group ``astra graph``: list, show and export stored tool dependency graphs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from astra.cli._common import USAGE, HomeOption, JsonOption, console, emit_json, fail

app = typer.Typer(no_args_is_help=True)


def _load(home: Path | None, name: str, version: int | None):  # noqa: ANN202 - ToolGraph, imported lazily
    from astra.registry import NotFoundError, Registry

    with Registry.open(home) as registry:
        try:
            return registry.load_graph(name, version)
        except NotFoundError as exc:
            known = [g.name for g in registry.list_graphs()]
            hint = f" (graphs: {', '.join(known)})" if known and name not in known else ""
            raise fail(f"{exc}{hint}", code=USAGE) from None


@app.command("list")
def list_(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """List stored graphs: latest version, its node and edge counts, and all versions."""
    from astra.registry import Registry

    with Registry.open(home) as registry:
        graphs = registry.list_graphs()
    if json_out:
        emit_json([g.model_dump() for g in graphs])
    table = Table(title=f"{len(graphs)} graph(s)")
    for col in ("name", "version", "nodes", "edges", "versions"):
        table.add_column(col)
    for g in graphs:
        table.add_row(g.name, str(g.version), str(g.nodes), str(g.edges), ", ".join(map(str, g.versions)))
    console.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="graph name")],
    version: Annotated[int | None, typer.Option("--version", help="graph version (default: latest)")] = None,
    limit: Annotated[int, typer.Option("--limit", help="edges to print")] = 30,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Summarise a graph: size, edge kinds and provenance, connectivity, and its top edges."""
    import networkx as nx

    from astra.registry import to_networkx

    graph = _load(home, name, version)
    g = to_networkx(graph)
    summary = {
        "name": graph.name,
        "version": graph.version,
        "nodes": g.number_of_nodes(),
        "edges": g.number_of_edges(),
        "kinds": dict(Counter(e.kind for e in graph.edges)),
        "provenance": dict(Counter(e.provenance for e in graph.edges)),
        "isolated_nodes": nx.number_of_isolates(g),
        "weakly_connected_components": nx.number_weakly_connected_components(g) if g.number_of_nodes() else 0,
        "is_dag": nx.is_directed_acyclic_graph(g),
        "meta": graph.meta,
    }
    if json_out:
        emit_json(summary)
    console.print(
        f"[bold]{graph.name}[/] v{graph.version}: {summary['nodes']} nodes, {summary['edges']} edges, "
        f"{summary['weakly_connected_components']} component(s), {summary['isolated_nodes']} isolated, "
        f"{'acyclic' if summary['is_dag'] else 'has cycles'}; kinds {summary['kinds']}, "
        f"provenance {summary['provenance']}",
        highlight=False,
    )
    table = Table(title=f"top {min(limit, len(graph.edges))} edge(s) by score")
    for col in ("src", "dst", "kind", "score", "bindings"):
        table.add_column(col)
    for e in sorted(graph.edges, key=lambda e: -e.score)[:limit]:
        table.add_row(e.src, e.dst, e.kind, f"{e.score:.2f}", ", ".join(f"{k}<-{v}" for k, v in e.bindings.items()))
    console.print(table)


@app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="graph name")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="graphml | json (networkx node-link) | dot")] = "graphml",
    version: Annotated[int | None, typer.Option("--version", help="graph version (default: latest)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write here instead of stdout")] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Export a graph as GraphML, node-link JSON or Graphviz DOT (to --out, else stdout)."""
    from astra.registry import GRAPH_FORMATS, export_graph

    if fmt not in GRAPH_FORMATS:
        raise fail(f"--format {fmt!r}: use one of {', '.join(GRAPH_FORMATS)}", code=USAGE)
    if json_out and out is None:
        raise fail("--json owns stdout: give --out FILE for the exported graph", code=USAGE)
    graph = _load(home, name, version)
    text = export_graph(graph, fmt)  # type: ignore[arg-type]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {graph.name} v{graph.version} ({len(graph.nodes)} nodes, {len(graph.edges)} edges) "
                      f"as {fmt} to {out}", highlight=False)
    else:
        typer.echo(text, nl=False)
    if json_out:
        emit_json({"name": graph.name, "version": graph.version, "format": fmt, "out": str(out),
                   "nodes": len(graph.nodes), "edges": len(graph.edges), "bytes": len(text.encode("utf-8"))})
