"""Stage 1 (schema candidates, batched LLM verification) and stage 2 (walks, tool sets, coverage)."""

from __future__ import annotations

import anyio
import networkx as nx

from astra.records import GraphEdge, ServerSpec, ToolGraph, ToolSpec
from astra.registry import Registry, to_networkx
from astra.synthesis.trajectories import TrajectoryConfig, TrajectoryPipeline
from astra.synthesis.trajectories._chains import coverage, sample_toolsets, sample_walks
from astra.synthesis.trajectories._graph import (
    ChainDetection,
    ChainDetections,
    EdgeVerdict,
    EdgeVerdicts,
    batch_candidates,
    chains_to_edges,
    generate_candidates,
    server_pair_count,
    tokens,
    verdicts_to_edges,
)

from .conftest import Router, router_model


def _servers(home) -> list[ServerSpec]:
    with Registry.open(home) as reg:
        return [reg.get_server(n) for n in reg.server_names()]


def test_tokens_normalise_case_and_plurals():
    assert tokens("getCityCoordinates") == ["get", "city", "coordinate"]  # verbs stay: they give the role
    assert tokens("city_ids of the Hotels") == ["city", "id", "hotel"]


def test_candidates_follow_typed_fields_across_servers(home):
    servers = _servers(home)
    cands, stats = generate_candidates(servers)
    pairs = {(c.src, c.dst): c for c in cands}
    # geo-locator/search_city returns latitude/longitude: the weather tools take them (cross-server)
    edge = pairs[("geo-locator/search_city", "weather-forecast/get_current_weather")]
    assert edge.bindings.get("latitude") == "latitude" and edge.bindings.get("longitude") == "longitude"
    assert "latitude" in edge.rationale and edge.kind == "data"
    # a city found by the geo server feeds the hotel search of a server in another declared domain
    domain = {s.name: s.domain for s in servers}
    crossing = pairs[("geo-locator/search_city", "hotel-booking/search_hotels")]
    assert domain["geo-locator"] != domain["hotel-booking"] and crossing.bindings == {"city_name": "city_name"}
    assert all(c.src != c.dst for c in cands)
    assert stats["tools"] == sum(len(s.tools) for s in servers)
    # within servers only
    local, _ = generate_candidates(servers, cross_server=False)
    assert local and all(c.src.split("/")[0] == c.dst.split("/")[0] for c in local)
    assert len(local) < len(cands)


def test_batches_cover_every_candidate_once_and_beat_server_pairs(home):
    servers = _servers(home)
    cands, _ = generate_candidates(servers)
    batches = batch_candidates(cands, 4)
    flat = [(c.src, c.dst) for _, b in batches for c in b]
    assert sorted(flat) == sorted((c.src, c.dst) for c in cands)
    assert all(len(b) <= 4 for _, b in batches) and len({i for i, _ in batches}) == len(batches)
    assert server_pair_count(servers) == 6 * 6  # every ordered server pair, a server with itself included


def test_verdicts_keep_real_params_and_count_the_rest():
    tools = {
        "s/a": ToolSpec(
            server="s", name="a", output_schema={"type": "object", "properties": {"id": {"type": "string"}}}
        ),
        "s/b": ToolSpec(
            server="s", name="b", input_schema={"type": "object", "properties": {"item_id": {"type": "string"}}}
        ),
    }
    from astra.synthesis.trajectories._graph import Candidate

    batch = [Candidate(src="s/a", dst="s/b", score=0.6, bindings={"item_id": "id"}),
             Candidate(src="s/b", dst="s/a", score=0.4)]
    verdicts = EdgeVerdicts(
        items=[
            EdgeVerdict(index=0, valid=True, score=0.9, bindings={"item_id": "id", "ghost": "x"}),
            EdgeVerdict(index=7, valid=True),
        ]
    )
    edges, why = verdicts_to_edges(batch, verdicts, tools, 0.5)
    assert [(e.src, e.dst, e.bindings, e.provenance) for e in edges] == [("s/a", "s/b", {"item_id": "id"}, "llm")]
    assert why == {"bad_index": 1, "unanswered": 1}


def test_server_chain_detections_as_in_the_original(home):
    server = next(s for s in _servers(home) if s.name == "flight-search")
    detections = ChainDetections(items=[
        ChainDetection(tool_graph_detect="yes", tool_graph_detect_chain=["search_airports", "hotel-booking/book_hotel",
                                                                         "search_flights", "get_flight_status"],
                       tool_graph_detect_task="fly from Lisbon to Porto and check the flight"),
        ChainDetection(tool_graph_detect="not sure", tool_graph_detect_chain=["get_flight_status", "search_airports"]),
        ChainDetection(tool_graph_detect="no"),
        ChainDetection(tool_graph_detect="yes", tool_graph_detect_chain=["search_flights"]),
    ])
    edges, outcome = chains_to_edges(server, detections)
    # only "yes" chains; an unknown name is skipped and the chain goes on from the last known tool
    assert [(e.src, e.dst) for e in edges] == [("flight-search/search_airports", "flight-search/search_flights"),
                                               ("flight-search/search_flights", "flight-search/get_flight_status")]
    assert all(e.provenance == "llm" and "fly from Lisbon" in e.rationale for e in edges)
    assert (outcome.yes, outcome.no, outcome.not_sure, outcome.unknown_tools) == (2, 1, 1, ["hotel-booking/book_hotel"])


def test_graph_stage_batches_llm_and_records_malformed_replies(tmp_path, home):
    config = TrajectoryConfig(out_dir=tmp_path / "run", home=home, servers=["geo-locator", "weather-forecast",
                              "flight-search", "hotel-booking"], model="scripted:r", graph={"batch_size": 3})
    router = Router()
    pipe = TrajectoryPipeline(config, models={"scripted:r": router_model(router)}, progress=False)
    graph = anyio.run(pipe.build_graph)
    counts = pipe.stage("graph", GraphEdge).counts()
    assert counts.inputs == router.seen["edges"] == pipe.run.manifest["stages"]["candidates"]["llm_calls"]
    assert all(e.provenance == "llm" and e.score == 0.9 for e in graph.edges)
    assert 0 < len(graph.edges) < pipe.run.manifest["stages"]["candidates"]["candidates"]  # the router rejects some
    with Registry.open(home) as reg:
        assert reg.load_graph(graph.name).edges == graph.edges
    # a judge that answers junk: each batch is a failed drop, never an edge
    config2 = config.model_copy(update={"out_dir": tmp_path / "run2"})
    pipe2 = TrajectoryPipeline(config2, models={"scripted:r": router_model(Router(bad=["edges"]))}, progress=False)
    graph2 = anyio.run(pipe2.build_graph)
    counts2 = pipe2.stage("graph", GraphEdge).counts()
    assert graph2.edges == [] and counts2.failed == counts2.inputs > 0
    assert set(counts2.drop_reasons) == {"judge_failed"}
    with Registry.open(home) as reg:
        assert reg.graph_versions(graph.name)[-1] == graph.version  # run2 saved under its own name
        assert graph2.version == 1


def _line_graph() -> ToolGraph:
    nodes = [f"s/t{i}" for i in range(8)] + ["u/x", "u/y"]
    edges = [GraphEdge(src=f"s/t{i}", dst=f"s/t{i + 1}", bindings={"p": "f"}, score=0.8) for i in range(7)]
    edges += [GraphEdge(src="s/t3", dst="s/t0", score=0.5), GraphEdge(src="s/t2", dst="s/t5", score=0.5)]
    return ToolGraph(name="g", version=3, nodes=nodes, edges=edges)


def test_walks_are_acyclic_bounded_deduplicated_and_seeded():
    graph = _line_graph()
    attempts, covered, _ = sample_walks(graph, num_chains=10, min_length=2, max_length=4, seed=1)
    chains = [c for _, c, _ in attempts if c is not None]
    assert chains
    g = to_networkx(graph)
    for c in chains:
        names = [x.tool for x in c.calls]
        assert 2 <= len(names) <= 4 and len(set(names)) == len(names)
        assert all(g.has_edge(a, b) for a, b in zip(names, names[1:], strict=False))
        assert c.calls[1].bindings == {"p": "0.f"} or not g.edges[names[0], names[1]]["bindings"]
        assert c.graph == "g" and c.graph_version == 3
    assert len({c.id for c in chains}) == len(chains)
    reasons = {r.split(":")[0] for _, c, r in attempts if c is None}
    assert reasons <= {"duplicate", "too_short"}
    again, _, _ = sample_walks(graph, num_chains=10, min_length=2, max_length=4, seed=1)
    assert [c.id for _, c, _ in again if c] == [c.id for c in chains]
    other, _, _ = sample_walks(graph, num_chains=10, min_length=2, max_length=4, seed=2)
    assert [c.id for _, c, _ in other if c] != [c.id for c in chains]
    assert isinstance(g, nx.DiGraph)


def test_uncovered_weighting_raises_coverage():
    graph = _line_graph()
    def share(weight: float) -> float:
        total = 0.0
        for seed in range(20):
            attempts, _, _ = sample_walks(
                graph, num_chains=3, min_length=2, max_length=2, seed=seed, uncovered_weight=weight
            )
            total += coverage(graph, [c for _, c, _ in attempts if c]).tool_share
        return total / 20
    assert share(50.0) > share(1.0)


def test_toolsets_and_coverage():
    graph = _line_graph()
    sets = sample_toolsets(graph, count=5, max_size=3, seed=0)
    assert len(sets) == 5 and all(s.kind == "toolset" and 1 <= len(s.calls) <= 3 for s in sets)
    assert all(len({c.tool.split("/")[0] for c in s.calls}) == 1 for s in sets), "one server per set"
    cov = coverage(graph, sets)
    assert (
        cov.tools == 10 and cov.edges_covered == 0 and cov.tools_covered == len({c.tool for s in sets for c in s.calls})
    )
