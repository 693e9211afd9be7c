"""Import of ASTRA mcp_servers.jsonl and MCP registry server.json: good, bad and mixed files."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astra.records import HttpLaunch, SimulatedLaunch, StdioLaunch, ToolSpec
from astra.registry import SAMPLE_SERVERS, Registry, import_file


def astra_record(name: str, tools: list[dict] | None = None, domain: str = "travel", **extra) -> dict:
    if tools is None:
        tools = [{"name": "search", "description": f"search {name}",
                  "parameters": {"type": "object", "properties": {"q": {"type": "str"}}, "required": ["q"]}}]
    group = {
        "server_title": name.title(),
        "server_name": name,
        "server_description": f"{name} server",
        "domain": domain,
    }
    return {"base_info": {"group_info": group, "tool_list": tools}, **extra}


def write_lines(path: Path, lines: list[bytes | str | dict]) -> Path:
    out = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        out += (line.encode() if isinstance(line, str) else line) + b"\n"
    path.write_bytes(out)
    return path


def test_bundled_sample_imports_cleanly(registry: Registry) -> None:
    report = import_file(registry, SAMPLE_SERVERS)
    assert report.rejected == 0 and report.errors == []
    assert report.imported == report.records >= 4
    servers = registry.list_servers()
    assert len({s.domain for s in servers}) >= 2
    for s in servers:
        assert isinstance(s.launch, SimulatedLaunch)
        assert s.source.startswith(str(SAMPLE_SERVERS))
        for t in s.tools:
            assert t.input_schema["type"] == "object"
            assert t.output_schema and t.output_schema["properties"], f"{t.qualified_name} has no output fields"


def test_good_file_and_reimport_is_a_no_op(registry: Registry, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "good.jsonl", [
        astra_record("alpha", call_info={"endpoint": "https://a.test"}),
        "",
        astra_record("beta", domain="finance"),
    ])
    first = import_file(registry, path)
    assert (first.records, first.imported, first.unchanged, first.rejected, first.blank) == (2, 2, 0, 0, 1)
    alpha = registry.get_server("alpha")
    assert alpha.launch == SimulatedLaunch(call_info={"endpoint": "https://a.test"})
    assert alpha.source == f"{path}:1"
    assert alpha.tools == [ToolSpec(server="alpha", name="search", description="search alpha",
                                    input_schema={"type": "object", "properties": {"q": {"type": "string"}},
                                                  "required": ["q"]})]
    hashes = {s.name: s.content_hash for s in registry.list_servers()}

    again = import_file(registry, path)
    assert (again.imported, again.unchanged, again.rejected) == (0, 2, 0)
    assert {s.name: s.content_hash for s in registry.list_servers()} == hashes

    # the same records from another file are still unchanged (the hash ignores where they came from)
    copy = write_lines(tmp_path / "copy.jsonl", [astra_record("beta", domain="finance")])
    assert import_file(registry, copy).unchanged == 1

    # a changed record replaces the stored one, tools included
    changed = write_lines(tmp_path / "changed.jsonl", [astra_record("beta", domain="finance", tools=[
        {"name": "quote", "parameters": {"properties": {"symbol": {"type": "str"}}}}])])
    assert import_file(registry, changed).imported == 1
    assert [t.name for t in registry.get_server("beta").tools] == ["quote"]


def test_bad_and_mixed_file_reports_file_line_field_reason(registry: Registry, tmp_path: Path) -> None:
    dup_tools = [{"name": "a", "parameters": {}}, {"name": "b"}, {"name": "a"}]
    bad_schema = [{"name": "t", "parameters": {"type": "object", "properties": {"city": {"type": "strng"}}}}]
    path = write_lines(tmp_path / "mixed.jsonl", [
        astra_record("ok-one"),                                                  # 1 ok
        '{"base_info": {"group_info": {"server_name": "x"}, "tool_list": [}',    # 2 bad JSON
        {"base_info": {"group_info": {"server_title": "No name"}, "tool_list": []}},  # 3 missing field
        astra_record("bad-schema", tools=bad_schema),                            # 4 invalid schema
        astra_record("dups", tools=dup_tools),                                   # 5 duplicate tool name
        b'{"base_info": "caf\xe9"}',                                             # 6 non-UTF-8
        astra_record("ok-two"),                                                  # 7 ok
        "[1, 2]",                                                                # 8 not an object
        {"hello": "world"},                                                      # 9 unknown format
        astra_record("bad-tool-name", tools=[{"name": ""}]),                     # 10 empty tool name
        astra_record("bad-output", tools=[{"name": "t", "output_schema": {"type": "list"}}]),  # 11 output not object
    ])
    report = import_file(registry, path)
    p = str(path)
    kept = "(tool left out; the rest of {!r} is kept)"
    assert report.errors == [
        f"{p}:2: json: Expecting value at column 66",
        f"{p}:4: base_info.tool_list[0].parameters.properties.city.type: "
        f"'strng' is not valid under any of the given schemas {kept.format('bad-schema')}",
        f"{p}:5: base_info.tool_list[2].name: duplicate tool name 'a' (also tool_list[0]) {kept.format('dups')}",
        f"{p}:6: encoding: invalid UTF-8 byte 0xe9 at column 19",
        f"{p}:8: record: expected a JSON object, got list",
        f"{p}:9: base_info: missing (neither an ASTRA mcp_servers record nor an MCP registry server.json)",
        f"{p}:10: base_info.tool_list[0].name: empty {kept.format('bad-tool-name')}",
        f"{p}:11: base_info.tool_list[0].output_schema.type: a tool schema must be of type 'object', got 'array' "
        f"{kept.format('bad-output')}",
    ]
    assert (report.records, report.imported, report.rejected, report.tools_rejected) == (11, 7, 4, 4)
    assert not report.ok
    # a record without server_name is named by its title, as the original ASTRA names it
    assert registry.server_names() == [
        "No name",
        "bad-output",
        "bad-schema",
        "bad-tool-name",
        "dups",
        "ok-one",
        "ok-two",
    ]
    assert [t.name for t in registry.get_server("dups").tools] == ["a", "b"]
    assert registry.get_server("bad-schema").tools == []
    raw = registry.get_server_raw("dups")  # the stored copy holds only what was kept
    assert [t["name"] for t in raw["base_info"]["tool_list"]] == ["a", "b"]


def test_strict_import_is_all_or_nothing(registry: Registry, tmp_path: Path) -> None:
    dup_tools = [{"name": "a", "parameters": {}}, {"name": "a"}]
    good = write_lines(tmp_path / "good.jsonl", [astra_record("one"), astra_record("two")])
    report = import_file(registry, good, strict=True)
    assert (report.imported, report.rejected, report.errors) == (2, 0, [])
    mixed = write_lines(tmp_path / "mixed.jsonl", [astra_record("three"), astra_record("dups", tools=dup_tools)])
    report = import_file(registry, mixed, strict=True)
    assert report.errors == [
        f"{mixed}:2: base_info.tool_list[1].name: duplicate tool name 'a' (also tool_list[0])",
        f"{mixed}:0: file: nothing imported (--strict: 1 record(s) rejected)",
    ]
    assert (report.imported, report.rejected) == (0, 2)
    assert registry.server_names() == ["one", "two"]  # "three" was good but the file is all or nothing


def test_missing_file(registry: Registry, tmp_path: Path) -> None:
    report = import_file(registry, tmp_path / "nope.jsonl")
    assert report.rejected == 1
    assert report.errors == [f"{tmp_path / 'nope.jsonl'}:0: file: No such file or directory"]


SERVER_JSON = {
    "$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json",
    "name": "io.github.example/weather",
    "title": "Weather",
    "description": "Forecasts from the national weather service",
    "version": "1.2.0",
    "packages": [{
        "registryType": "npm",
        "identifier": "@example/weather-mcp",
        "version": "1.2.0",
        "transport": {"type": "stdio"},
        "packageArguments": [{"type": "named", "name": "--units", "value": "metric"}],
        "environmentVariables": [{"name": "WEATHER_API_KEY", "isRequired": True, "isSecret": True},
                                 {"name": "LOG_LEVEL", "default": "info"}],
    }],
    "remotes": [{"type": "streamable-http", "url": "https://weather.example.com/mcp"}],
}


def test_server_json_package_and_remote(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "server.json"
    path.write_text(json.dumps(SERVER_JSON))
    report = import_file(registry, path)
    assert (report.imported, report.rejected) == (1, 0), report.errors
    spec = registry.get_server("io.github.example/weather")
    assert spec.launch == StdioLaunch(command="npx", args=["-y", "@example/weather-mcp@1.2.0", "--units", "metric"],
                                      env={"LOG_LEVEL": "info"})
    assert spec.tools == [] and spec.title == "Weather"
    assert registry.get_server_raw(spec.name) == SERVER_JSON  # every package and remote is kept

    remote_only = {k: v for k, v in SERVER_JSON.items() if k != "packages"} | {"name": "io.github.example/remote"}
    remote_only["remotes"] = [{"type": "sse", "url": "https://x.test/sse"},
                              {"type": "streamable-http", "url": "https://x.test/mcp",
                               "headers": [{"name": "Authorization", "value": "Bearer t"}]}]
    pypi = {"name": "io.github.example/py", "description": "py", "version": "0.1.0",
            "packages": [{"registryType": "pypi", "identifier": "weather-mcp", "version": "0.1.0",
                          "transport": {"type": "stdio"}}]}
    sse_only = {"name": "io.github.example/legacy", "description": "old", "version": "0.9.0",
                "remotes": [{"type": "sse", "url": "https://x.test/sse",
                             "headers": [{"name": "X-Key", "value": "k"}]}]}
    nothing = {"name": "io.github.example/docs-only", "description": "x", "version": "1.0.0", "remotes": []}
    listing = tmp_path / "servers.json"  # the registry API's list shape
    listing.write_text(json.dumps({"servers": [{"server": remote_only, "_meta": {}}, {"server": pypi}, nothing,
                                               {"server": sse_only}]}))
    report = import_file(registry, listing)
    assert report.imported == 3
    assert report.errors == [f"{listing}:1: [2].packages: no launchable transport: need a stdio package, or a "
                             "streamable-http or sse remote"]
    # streamable HTTP is preferred even when an SSE remote comes first
    assert registry.get_server("io.github.example/remote").launch == HttpLaunch(
        url="https://x.test/mcp", headers={"Authorization": "Bearer t"})
    assert registry.get_server("io.github.example/legacy").launch == HttpLaunch(
        url="https://x.test/sse", headers={"X-Key": "k"}, transport="sse")
    assert registry.get_server("io.github.example/py").launch == StdioLaunch(command="uvx", args=["weather-mcp==0.1.0"])


def test_server_json_reimport_keeps_discovered_tools(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "server.json"
    path.write_text(json.dumps(SERVER_JSON))
    import_file(registry, path)
    spec = registry.get_server("io.github.example/weather")
    tool = ToolSpec(server=spec.name, name="forecast")
    registry.upsert_server(spec.model_copy(update={"tools": [tool]}))  # as a discovery would
    assert import_file(registry, path).unchanged == 1
    assert registry.get_server(spec.name).tools == [tool]


def test_json_syntax_error_reports_its_line(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "name": "x",\n  "packages": [,]\n}\n')
    report = import_file(registry, path)
    assert report.errors == [f"{path}:3: json: Expecting value at column 16"]


# --------------------------------------------------------------------------- fuzzing

_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=6,
)
_tool = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "c", ""]) | st.integers()},
    optional={"description": st.text(max_size=5) | st.integers(),
              "parameters": _value | st.fixed_dictionaries({"type": st.sampled_from(["dict", "str", "object", "x"]),
                                                            "properties": st.dictionaries(
                                                                st.text(max_size=3),
                                                                st.fixed_dictionaries({"type": st.sampled_from(
                                                                    ["int", "float", "bogus", "list"])}),
                                                                max_size=3)}),
              "output_schema": _value},
)
_record = st.fixed_dictionaries({
    "base_info": st.fixed_dictionaries(
        {}, optional={"group_info": st.fixed_dictionaries(
            {}, optional={"server_name": st.sampled_from(["s1", "s2", "s3", ""]) | st.integers(),
                          "server_title": st.text(max_size=4) | st.none(), "domain": st.text(max_size=3)}),
            "tool_list": st.lists(_tool, max_size=4) | _value}),
}, optional={"call_info": _value})
_package = st.fixed_dictionaries(
    {}, optional={"registryType": st.sampled_from(["npm", "pypi", "oci", "nuget", "mcpb"]) | _value,
                  "identifier": st.text(max_size=6) | _value, "version": st.text(max_size=4),
                  "transport": st.fixed_dictionaries({"type": st.sampled_from(["stdio", "streamable-http", "sse"])},
                                                     optional={"url": st.text(max_size=8)}) | _value,
                  "packageArguments": st.lists(st.fixed_dictionaries(
                      {"type": st.sampled_from(["named", "positional"])},
                      optional={"name": _value, "value": _value, "isRequired": st.booleans()}), max_size=2) | _value,
                  "environmentVariables": st.lists(st.fixed_dictionaries(
                      {}, optional={"name": _value, "default": _value}), max_size=2) | _value},
)
_server_json = st.fixed_dictionaries(
    {"name": st.sampled_from(["io.x/a", "io.x/b", ""]) | _value},
    optional={"description": _value, "version": _value, "packages": st.lists(_package, max_size=2) | _value,
              "remotes": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["streamable-http", "sse"])},
                                                        optional={"url": _value, "headers": _value}), max_size=2)},
)
_line = st.one_of(
    _record.map(lambda r: json.dumps(r).encode()),
    _server_json.map(lambda r: json.dumps(r).encode()),
    _value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=30).filter(lambda b: b"\n" not in b),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, max_size=8))
def test_fuzz_importer_never_crashes_and_accounts_for_every_line(tmp_path: Path, lines: list[bytes]) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    with Registry(tmp_path / "fuzz.db") as registry:
        reports = []
        for _ in range(2):
            report = import_file(registry, path)
            reports.append(report)
            assert report.records + report.blank == len(lines)
            assert report.imported + report.unchanged + report.rejected == report.records
            assert len(report.errors) == report.rejected + report.tools_rejected
            for error in report.errors:
                location, field, reason = error.split(": ", 2)
                assert location.startswith(f"{path}:") and int(location.rsplit(":", 1)[1]) >= 1
                assert field and reason
        first, second = reports
        assert second.imported + second.unchanged == first.imported + first.unchanged
        if len(set(first.servers)) == len(first.servers):  # (a name given twice in one file flip-flops)
            assert second.imported == 0
        stored = registry.list_servers()
        for server in stored:
            assert len({t.name for t in server.tools}) == len(server.tools)
    (tmp_path / "fuzz.db").unlink()
    for extra in ("fuzz.db-wal", "fuzz.db-shm"):
        (tmp_path / extra).unlink(missing_ok=True)
