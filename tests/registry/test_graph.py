"""Tool graphs: store, load, export, reload — equal; networkx conversion."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from astra.records import GraphEdge, ToolGraph
from astra.registry import NotFoundError, Registry, RegistryError, export_graph, from_networkx, parse_graph, to_networkx


def sample_graph(name: str = "travel") -> ToolGraph:
    return ToolGraph(
        name=name,
        nodes=["geo-locator/search_city", "weather-forecast/get_forecast", "hotel-booking/search_hotels",
               "hotel-booking/book_hotel", 'odd "name"/with\\slash'],
        edges=[
            GraphEdge(src="geo-locator/search_city", dst="weather-forecast/get_forecast", kind="data",
                      bindings={"latitude": "latitude", "longitude": "longitude"}, score=0.9, provenance="schema"),
            GraphEdge(src="hotel-booking/search_hotels", dst="hotel-booking/book_hotel", kind="data",
                      bindings={"hotel_id": "hotels[0].hotel_id"}, score=0.75, provenance="llm",
                      rationale='book what "search" found'),
            GraphEdge(src="geo-locator/search_city", dst="hotel-booking/search_hotels", kind="order", score=0.5,
                      provenance="trace"),
        ],
        meta={"builder": "test", "threshold": 0.5, "servers": ["geo-locator", "hotel-booking"]},
    )


def test_store_load_versions(registry: Registry) -> None:
    graph = sample_graph()
    assert registry.save_graph(graph) == 1
    smaller = graph.model_copy(update={"edges": graph.edges[:1]})
    assert registry.save_graph(smaller) == 2
    assert registry.graph_versions("travel") == [1, 2]
    assert registry.load_graph("travel") == smaller.model_copy(update={"version": 2})
    assert registry.load_graph("travel", 1) == graph
    info = registry.list_graphs()
    assert [(g.name, g.version, g.versions, g.nodes, g.edges) for g in info] == [("travel", 2, [1, 2], 5, 1)]
    with pytest.raises(NotFoundError, match="versions: \\[1, 2\\]"):
        registry.load_graph("travel", 7)
    with pytest.raises(NotFoundError):
        registry.load_graph("nope")
    assert registry.delete_graph("travel", 1) == 1
    assert registry.graph_versions("travel") == [2]


def test_load_networkx_matches_to_networkx(registry: Registry) -> None:
    graph = sample_graph()
    registry.save_graph(graph)
    direct = registry.load_networkx("travel")
    via_records = to_networkx(registry.load_graph("travel"))
    assert direct.graph == via_records.graph
    assert list(direct.nodes) == list(via_records.nodes)
    assert list(direct.edges(data=True)) == list(via_records.edges(data=True))
    assert from_networkx(direct) == graph
    with pytest.raises(NotFoundError):
        registry.load_networkx("travel", 2)


def test_bad_graphs_are_refused(registry: Registry) -> None:
    graph = sample_graph()
    dangling = graph.model_copy(update={"edges": [*graph.edges, GraphEdge(src="x/y", dst="geo-locator/search_city")]})
    with pytest.raises(RegistryError, match="'x/y' is not a node"):
        registry.save_graph(dangling)
    twice = graph.model_copy(update={"edges": [*graph.edges, graph.edges[0]]})
    with pytest.raises(RegistryError, match="a second edge"):
        registry.save_graph(twice)
    assert registry.graph_versions("travel") == []


@pytest.mark.parametrize("fmt", ["json", "graphml"])
def test_round_trip_store_load_export_reload(registry: Registry, fmt: str) -> None:
    graph = sample_graph()
    version = registry.save_graph(graph)
    loaded = registry.load_graph("travel", version)
    text = export_graph(loaded, fmt)
    reloaded = parse_graph(text, fmt)
    assert reloaded == loaded
    # and through the store again
    assert registry.load_graph("travel", registry.save_graph(reloaded)).model_copy(update={"version": 1}) == graph


def test_json_is_networkx_node_link() -> None:
    data = json.loads(export_graph(sample_graph(), "json"))
    g = nx.node_link_graph(data, edges="edges")
    assert g.is_directed() and g.number_of_edges() == 3
    assert g.edges["geo-locator/search_city", "weather-forecast/get_forecast"]["bindings"] == {
        "latitude": "latitude", "longitude": "longitude"}


def test_graphml_is_readable_by_networkx() -> None:
    g = nx.parse_graphml(export_graph(sample_graph(), "graphml"))
    assert g.number_of_nodes() == 5
    edge = g.edges["hotel-booking/search_hotels", "hotel-booking/book_hotel"]
    assert json.loads(edge["bindings"]) == {"hotel_id": "hotels[0].hotel_id"} and edge["score"] == 0.75


def test_dot_output() -> None:
    text = export_graph(sample_graph(), "dot")
    assert text.startswith('digraph "travel" {') and text.rstrip().endswith("}")
    assert ('"geo-locator/search_city" -> "weather-forecast/get_forecast" [kind="data", '
            'bindings="{\\"latitude\\": \\"latitude\\", \\"longitude\\": \\"longitude\\"}", score="0.9", '
            'provenance="schema", label="latitude<-latitude, longitude<-longitude"];') in text
    assert '"odd \\"name\\"/with\\\\slash" [label="with\\\\slash", server="odd \\"name\\""];' in text
    assert 'style="dashed"' in text  # the order edge
    assert text.count(" -> ") == 3


def test_networkx_conversion() -> None:
    graph = sample_graph()
    g = to_networkx(graph)
    assert g.graph == {"name": "travel", "version": 1, "meta": graph.meta}
    assert list(nx.topological_sort(g))[0] in {"geo-locator/search_city", 'odd "name"/with\\slash'}
    assert from_networkx(g) == graph
    plain = nx.DiGraph()
    plain.add_edge("a/x", "b/y")
    converted = from_networkx(plain, "plain")
    assert converted.edges == [GraphEdge(src="a/x", dst="b/y")]
    with pytest.raises(ValueError, match="pass name="):
        from_networkx(plain)
    with pytest.raises(ValueError, match="unknown graph format"):
        export_graph(graph, "gexf")  # type: ignore[arg-type]
