"""A synthetic ASTRA-scale corpus in ``mcp_servers.jsonl`` format, and a large tool graph.

ASTRA's published scale is 1,585 servers with 19,036 tools. The records here have the same
shape as the real ones (``base_info.group_info`` + ``tool_list`` with ``parameters`` and
``output_schema``), with realistic variety: 0-10 parameters per tool, loose type names
("float", "int", "dict") in about a tenth of them, enums, defaults, nested objects and
arrays, per-property ``required: true``, and output schemas whose field names overlap with
other tools' parameters (so schema-based graph builders find chains).

Importable (``generate``, ``synthetic_graph``) and runnable:
``python benchmarks/synthetic_corpus.py OUT.jsonl [--servers N] [--tools N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from astra.records import GraphEdge, ToolGraph

DOMAINS = [
    "travel", "finance", "weather", "e-commerce", "healthcare", "education", "entertainment", "sports",
    "news", "developer-tools", "productivity", "maps", "food", "real-estate", "social-media", "science",
    "government", "automotive", "music", "security",
]
VERBS = ["get", "search", "list", "create", "update", "delete", "find", "lookup", "fetch", "compute", "convert",
         "book", "cancel", "analyze", "summarize", "validate", "translate", "estimate", "track", "export"]
NOUNS = ["user", "order", "product", "flight", "hotel", "forecast", "stock_quote", "invoice", "ticket", "route",
         "restaurant", "recipe", "article", "repository", "issue", "patient", "appointment", "course", "movie",
         "song", "team", "match", "listing", "vehicle", "payment", "account", "document", "event", "station",
         "package", "shipment", "review", "coupon", "exchange_rate", "city", "country", "job", "company"]
# names that occur both as outputs and as parameters: the raw material of tool chains
SHARED_FIELDS = ["user_id", "order_id", "product_id", "city_name", "country_code", "latitude", "longitude",
                 "date", "start_date", "end_date", "currency", "amount", "symbol", "query", "limit", "page",
                 "hotel_id", "flight_id", "booking_id", "account_id", "email", "language", "timezone", "url",
                 "repository", "issue_number", "patient_id", "course_id", "movie_id", "team_id", "station_id",
                 "tracking_number", "address", "zip_code", "category", "price", "rating", "status", "title", "text"]
FIELD_TYPES = {
    "latitude": "number", "longitude": "number", "amount": "number", "price": "number", "rating": "number",
    "limit": "integer", "page": "integer", "issue_number": "integer",
}
LOOSE = {"number": "float", "integer": "int", "string": "str", "boolean": "bool", "object": "dict", "array": "list"}
WORDS = ("the a of for to with from by identifier value name code number date time location user result item "
         "list filter optional required maximum minimum format ISO returned used when given default").split()


def _sentence(rng: random.Random, lo: int = 5, hi: int = 16) -> str:
    words = rng.choices(WORDS, k=rng.randint(lo, hi))
    return " ".join(words).capitalize() + "."


def _field_type(name: str, rng: random.Random) -> str:
    if name in FIELD_TYPES:
        return FIELD_TYPES[name]
    return rng.choices(["string", "integer", "number", "boolean", "array", "object"], [60, 12, 8, 8, 8, 4])[0]


def _property(name: str, rng: random.Random, loose: bool, depth: int = 0) -> dict[str, Any]:
    kind = _field_type(name, rng)
    prop: dict[str, Any] = {"type": LOOSE[kind] if loose and rng.random() < 0.5 else kind,
                            "description": _sentence(rng, 4, 12)}
    if kind == "string" and rng.random() < 0.15:
        prop["enum"] = [f"{name}_{i}" for i in range(rng.randint(2, 6))]
    elif kind == "integer" and rng.random() < 0.4:
        prop["minimum"], prop["maximum"] = 0, rng.choice([10, 100, 1000])
    elif kind == "array":
        item_kind = rng.choice(["string", "integer", "object"])
        prop["items"] = ({"type": "object", "properties": {f"{name}_field_{i}": {"type": "string"} for i in range(3)}}
                         if item_kind == "object" and depth < 1 else {"type": item_kind})
    elif kind == "object" and depth < 1:
        prop["properties"] = {f"{name}_{k}": _property(f"{name}_{k}", rng, loose, depth + 1)
                              for k in rng.sample(["key", "value", "unit", "source"], 2)}
    if rng.random() < 0.1:
        prop["default"] = {"string": "", "integer": 1, "number": 0.0, "boolean": False}.get(kind)
    return prop


def _tool(name: str, rng: random.Random) -> dict[str, Any]:
    loose = rng.random() < 0.1
    n_params = min(rng.choices(range(11), [4, 14, 20, 18, 14, 10, 7, 5, 4, 2, 2])[0], 10)
    names = rng.sample(SHARED_FIELDS, min(n_params, len(SHARED_FIELDS)))
    properties = {n: _property(n, rng, loose) for n in names}
    required = [n for n in names if rng.random() < 0.6]
    parameters: dict[str, Any] = {"type": "dict" if loose else "object", "properties": properties}
    if loose and required and rng.random() < 0.5:  # the per-property spelling of "required"
        for n in required:
            properties[n]["required"] = True
    elif required:
        parameters["required"] = required
    outputs = rng.sample(SHARED_FIELDS, rng.randint(1, 6))
    output_schema = {
        "type": "object",
        "properties": {n: {"type": _field_type(n, rng), "description": _sentence(rng, 3, 8)} for n in outputs},
    }
    for prop in output_schema["properties"].values():
        if prop["type"] == "array":
            prop["items"] = {"type": "string"}
    return {
        "name": name,
        "description": _sentence(rng, 8, 30),
        "parameters": parameters,
        "output_schema": output_schema,
    }


def _tool_counts(servers: int, tools: int, rng: random.Random) -> list[int]:
    """``servers`` positive counts summing to ``tools``, skewed like real servers (many small, few large)."""
    if tools < servers:
        raise ValueError("need at least one tool per server")
    weights = [min(rng.paretovariate(1.5), 25.0) for _ in range(servers)]
    scale = (tools - servers) / sum(weights)
    counts = [1 + int(w * scale) for w in weights]
    i = 0
    while sum(counts) < tools:  # distribute the rounding remainder
        counts[i % servers] += 1
        i += 1
    while sum(counts) > tools:
        j = max(range(servers), key=counts.__getitem__)
        counts[j] -= 1
    return counts


def generate(path: str | Path, servers: int = 1585, tools: int = 19036, seed: int = 0) -> Path:
    """Write ``servers`` ASTRA records with ``tools`` tools in all to ``path`` (JSON Lines); returns it."""
    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for s, count in enumerate(_tool_counts(servers, tools, rng)):
            domain = rng.choice(DOMAINS)
            server_name = f"{domain}-{rng.choice(NOUNS).replace('_', '-')}-{s:05d}"
            used: set[str] = set()
            tool_list = []
            while len(tool_list) < count:
                name = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"
                if name in used:
                    name = f"{name}_{len(tool_list)}"
                used.add(name)
                tool_list.append(_tool(name, rng))
            record = {
                "base_info": {
                    "group_info": {
                        "server_title": server_name.replace("-", " ").title(),
                        "server_name": server_name,
                        "server_description": _sentence(rng, 10, 40),
                        "domain": domain,
                    },
                    "tool_list": tool_list,
                },
                "call_info": {
                    "base_url": f"https://{server_name}.example.test/api",
                    "auth": rng.choice(["none", "api_key"]),
                },
            }
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def synthetic_graph(nodes: list[str], edges: int = 100_000, seed: int = 0, name: str = "synthetic") -> ToolGraph:
    """A ToolGraph over ``nodes`` (qualified tool names) with ``edges`` distinct random edges."""
    if len(nodes) < 2 or edges > len(nodes) * (len(nodes) - 1):
        raise ValueError("not enough nodes for that many distinct edges")
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    out: list[GraphEdge] = []
    n = len(nodes)
    while len(out) < edges:
        a, b = rng.randrange(n), rng.randrange(n)
        if a == b or (a, b) in seen:
            continue
        seen.add((a, b))
        field = rng.choice(SHARED_FIELDS)
        out.append(GraphEdge(
            src=nodes[a], dst=nodes[b], kind="data" if rng.random() < 0.85 else "order",
            bindings={field: field} if rng.random() < 0.85 else {}, score=round(rng.random(), 3),
            provenance=rng.choice(["schema", "schema", "llm", "trace"]),
        ))
    return ToolGraph(name=name, nodes=list(nodes), edges=out, meta={"seed": seed, "synthetic": True})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--servers", type=int, default=1585)
    parser.add_argument("--tools", type=int, default=19036)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generate(args.out, args.servers, args.tools, args.seed)
    print(f"wrote {args.servers} servers / {args.tools} tools to {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
