"""Tool graphs as networkx graphs, and their export formats (GraphML, node-link JSON, DOT).

A :class:`~astra.records.ToolGraph` is the stored form; :func:`to_networkx` gives the
algorithm side a ``networkx.DiGraph`` whose edges carry ``kind``, ``bindings``, ``score``,
``provenance`` and ``rationale``; :func:`from_networkx` goes back. GraphML holds only scalar
attributes, so dict attributes (``bindings``, the graph's ``meta``) are written as JSON
strings and decoded again by :func:`parse_graph`.
"""

from __future__ import annotations

import io
import json
from typing import Any, Literal

import networkx as nx

from astra.records import GraphEdge, ToolGraph

__all__ = ["to_networkx", "from_networkx", "export_graph", "parse_graph", "GraphFormat", "GRAPH_FORMATS"]

GraphFormat = Literal["graphml", "json", "dot"]
GRAPH_FORMATS: tuple[str, ...] = ("graphml", "json", "dot")

_EDGE_FIELDS = ("kind", "bindings", "score", "provenance", "rationale")


def to_networkx(graph: ToolGraph) -> nx.DiGraph[str]:
    """A ``DiGraph`` with one node per qualified tool name and the edge fields as attributes.

    Graph attributes: ``name``, ``version`` and ``meta`` (a dict).
    """
    g = nx.DiGraph(name=graph.name, version=graph.version, meta=dict(graph.meta))
    g.add_nodes_from(graph.nodes)
    g.add_edges_from(
        (
            e.src,
            e.dst,
            {"kind": e.kind, "bindings": dict(e.bindings), "score": e.score, "provenance": e.provenance,
             "rationale": e.rationale, "position": i},
        )
        for i, e in enumerate(graph.edges)
    )
    return g


def _maybe_json(value: Any, default: Any) -> Any:
    if value is None:
        return default
    if isinstance(value, str):
        return json.loads(value) if value else default
    return value


def from_networkx(
    g: nx.DiGraph[str],
    name: str | None = None,
    *,
    version: int | None = None,
    meta: dict[str, Any] | None = None,
) -> ToolGraph:
    """A :class:`ToolGraph` from a ``DiGraph`` (as made by :func:`to_networkx` or read from an export).

    Edges come in ``position`` order when every edge has one, else in networkx's order.
    Missing edge attributes take the :class:`GraphEdge` defaults; ``bindings`` and ``meta``
    may be JSON strings (GraphML). ``name``/``version``/``meta`` default to the graph's attributes.
    """
    attrs = g.graph
    edges: list[GraphEdge] = []
    listed = list(g.edges(data=True))
    if all("position" in data for _, _, data in listed):
        listed.sort(key=lambda edge: int(edge[2]["position"]))
    for src, dst, data in listed:
        fields: dict[str, Any] = {"src": str(src), "dst": str(dst)}
        for key in _EDGE_FIELDS:
            if key in data and data[key] is not None:
                fields[key] = data[key]
        if "bindings" in fields:
            fields["bindings"] = _maybe_json(fields["bindings"], {})
        if "rationale" in fields and fields["rationale"] == "":
            fields["rationale"] = None
        edges.append(GraphEdge.model_validate(fields))
    graph_name = name if name is not None else attrs.get("name")
    if not graph_name:
        raise ValueError("from_networkx: the graph has no 'name' attribute; pass name=")
    return ToolGraph(
        name=str(graph_name),
        version=int(version if version is not None else attrs.get("version", 1)),
        nodes=[str(n) for n in g.nodes],
        edges=edges,
        meta=meta if meta is not None else _maybe_json(attrs.get("meta"), {}),
    )


def _dot_id(value: Any) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def _to_dot(graph: ToolGraph) -> str:
    # Written here rather than through pydot/pygraphviz: DOT output is a few quoted lines,
    # not worth a graphviz system dependency. Attribute values are always quoted.
    lines = [f"digraph {_dot_id(graph.name)} {{"]
    lines.append(f"  graph [version={_dot_id(graph.version)}, meta={_dot_id(json.dumps(graph.meta, sort_keys=True))}];")
    lines.append('  node [shape="box"];')
    for node in graph.nodes:
        server, _, tool = node.rpartition("/")
        lines.append(f"  {_dot_id(node)} [label={_dot_id(tool or node)}, server={_dot_id(server)}];")
    for e in graph.edges:
        attrs = [
            f"kind={_dot_id(e.kind)}",
            f"bindings={_dot_id(json.dumps(e.bindings, sort_keys=True))}",
            f"score={_dot_id(repr(float(e.score)))}",
            f"provenance={_dot_id(e.provenance)}",
        ]
        if e.kind == "order":
            attrs.append('style="dashed"')
        if e.bindings:
            attrs.append(f"label={_dot_id(', '.join(f'{k}<-{v}' for k, v in e.bindings.items()))}")
        if e.rationale:
            attrs.append(f"rationale={_dot_id(e.rationale)}")
        lines.append(f"  {_dot_id(e.src)} -> {_dot_id(e.dst)} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def export_graph(graph: ToolGraph, fmt: GraphFormat) -> str:
    """The graph as GraphML, networkx node-link JSON, or Graphviz DOT text."""
    if fmt == "json":
        data = nx.node_link_data(to_networkx(graph), edges="edges")
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt == "graphml":
        g = to_networkx(graph)
        g.graph["meta"] = json.dumps(g.graph["meta"], sort_keys=True)
        for _, _, data in g.edges(data=True):
            data["bindings"] = json.dumps(data["bindings"], sort_keys=True)
            if data["rationale"] is None:
                del data["rationale"]  # GraphML has no null
        buf = io.BytesIO()
        nx.write_graphml(g, buf, encoding="utf-8")
        return buf.getvalue().decode("utf-8")
    if fmt == "dot":
        return _to_dot(graph)
    raise ValueError(f"unknown graph format {fmt!r}; use one of {', '.join(GRAPH_FORMATS)}")


def parse_graph(text: str, fmt: Literal["graphml", "json"]) -> ToolGraph:
    """Read a graph exported by :func:`export_graph` (GraphML or JSON) back into a ToolGraph."""
    if fmt == "json":
        g = nx.node_link_graph(json.loads(text), directed=True, edges="edges")
    elif fmt == "graphml":
        g = nx.parse_graphml(text)
    else:
        raise ValueError(f"cannot read graphs in format {fmt!r}; use graphml or json")
    return from_networkx(g)
