"""Import servers from documents: ASTRA ``mcp_servers.jsonl`` and MCP registry ``server.json``.

Each record is parsed, normalised and validated on its own; a bad one is reported as
``FILE:LINE: field: reason`` and the rest go on. Each good record is stored in one
transaction; a record whose content hash is already stored is counted as unchanged.

Formats (auto-detected per record):

- ASTRA: ``{"base_info": {"group_info": {"server_title", "server_name", "server_description",
  "domain"}, "tool_list": [{"name", "description", "parameters", "output_schema"?}]},
  "call_info": ...?}``. Such servers exist only as documentation, so they get
  :class:`~astra.records.SimulatedLaunch` carrying ``call_info``.
- MCP registry ``server.json``: ``{"name", "description", "version", "title"?,
  "packages": [{"registryType", "identifier", "version", "transport": {"type"}, ...}],
  "remotes": [{"type", "url", "headers"?}]}`` (also wrapped as ``{"server": {...}}`` the way
  the registry API returns it). The launch is derived from a stdio package or a
  streamable-HTTP remote (else an SSE one); the whole document is kept. Tools are unknown until discovery.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from astra.records import HttpLaunch, ServerSpec, SimulatedLaunch, StdioLaunch, ToolSpec, stable_id
from astra.registry._schema import SchemaError, normalize_schema
from astra.registry._store import Registry, RegistryError

__all__ = ["ImportReport", "RecordError", "import_file", "parse_astra_record", "parse_server_json", "iter_records"]

_OUTPUT_KEYS = ("output_schema", "outputSchema", "returns", "output_parameters")


class RecordError(ValueError):
    """One record that cannot be imported; ``field`` names the culprit."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ImportReport(BaseModel):
    """What an import did: every record is counted exactly once."""

    files: list[str] = Field(default_factory=list)
    records: int = 0
    imported: int = 0
    unchanged: int = 0
    rejected: int = 0
    blank: int = 0
    servers: list[str] = Field(default_factory=list, description="names of servers imported or updated")
    errors: list[str] = Field(default_factory=list, description="FILE:LINE: field: reason")

    @property
    def ok(self) -> bool:
        return self.rejected == 0

    def merge(self, other: ImportReport) -> ImportReport:
        return ImportReport(
            files=self.files + other.files,
            records=self.records + other.records,
            imported=self.imported + other.imported,
            unchanged=self.unchanged + other.unchanged,
            rejected=self.rejected + other.rejected,
            blank=self.blank + other.blank,
            servers=self.servers + other.servers,
            errors=self.errors + other.errors,
        )


# --------------------------------------------------------------------------- helpers


def _require(obj: dict[str, Any], key: str, field: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in obj or obj[key] is None:
        raise RecordError(f"{field}.{key}" if field else key, "missing")
    value = obj[key]
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        what = "empty" if isinstance(value, str) else f"expected {want}, got {type(value).__name__}"
        raise RecordError(f"{field}.{key}" if field else key, what)
    return value


def _optional_str(obj: dict[str, Any], key: str, field: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(f"{field}.{key}", f"expected str, got {type(value).__name__}")
    return value


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecordError(field, f"expected an object, got {type(value).__name__}")
    return value


def _schema(value: Any, field: str) -> dict[str, Any]:
    try:
        return normalize_schema(value, field=field)
    except SchemaError as exc:
        raise RecordError(exc.field, exc.reason) from None


# --------------------------------------------------------------------------- ASTRA records


def parse_astra_record(doc: dict[str, Any], *, source: str | None = None) -> ServerSpec:
    """An ASTRA ``mcp_servers.jsonl`` record as a ServerSpec (raises :class:`RecordError`)."""
    base = _object(doc.get("base_info"), "base_info") if "base_info" in doc else None
    if base is None:
        raise RecordError("base_info", "missing")
    group = _require(base, "group_info", "base_info", dict)
    name = _require(group, "server_name", "base_info.group_info").strip()
    title = _optional_str(group, "server_title", "base_info.group_info")
    description = _optional_str(group, "server_description", "base_info.group_info") or ""
    domain = _optional_str(group, "domain", "base_info.group_info")
    tool_list = _require(base, "tool_list", "base_info", list)

    tools: list[ToolSpec] = []
    first_seen: dict[str, int] = {}
    for i, raw in enumerate(tool_list):
        field = f"base_info.tool_list[{i}]"
        tool = _object(raw, field)
        tool_name = _require(tool, "name", field).strip()
        if tool_name in first_seen:
            raise RecordError(f"{field}.name", f"duplicate tool name {tool_name!r} (also tool_list[{first_seen[tool_name]}])")
        first_seen[tool_name] = i
        tool_description = _optional_str(tool, "description", field) or ""
        input_schema = _schema(tool.get("parameters", tool.get("input_schema", tool.get("inputSchema"))),
                               f"{field}.parameters")
        output_schema = None
        for key in _OUTPUT_KEYS:
            if tool.get(key) is not None:
                output_schema = _schema(tool[key], f"{field}.{key}")
                break
        annotations = tool.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise RecordError(f"{field}.annotations", f"expected an object, got {type(annotations).__name__}")
        tools.append(
            ToolSpec(
                server=name,
                name=tool_name,
                title=_optional_str(tool, "title", field),
                description=tool_description,
                input_schema=input_schema,
                output_schema=output_schema,
                annotations=annotations,
            )
        )
    call_info = doc.get("call_info", base.get("call_info"))
    if call_info is not None and not isinstance(call_info, dict):
        raise RecordError("call_info", f"expected an object, got {type(call_info).__name__}")
    return ServerSpec(
        id=stable_id("astra", name, prefix="srv-"),
        name=name,
        title=title,
        description=description,
        domain=domain,
        launch=SimulatedLaunch(call_info=call_info),
        tools=tools,
        source=source,
    )


# --------------------------------------------------------------------------- server.json

_RUNNERS: dict[str, tuple[str, Callable[[str, str | None], list[str]]]] = {
    # registryType -> (default runtime, how to name the package for it)
    "npm": ("npx", lambda ident, ver: ["-y", f"{ident}@{ver}" if ver else ident]),
    "pypi": ("uvx", lambda ident, ver: [f"{ident}=={ver}" if ver else ident]),
    "oci": ("docker", lambda ident, ver: ["run", "-i", "--rm", f"{ident}:{ver}" if ver and ":" not in ident else ident]),
    "nuget": ("dnx", lambda ident, ver: [f"{ident}@{ver}" if ver else ident, "--yes"]),
}


def _arguments(args: Any, field: str) -> list[str]:
    """server.json ``runtimeArguments``/``packageArguments``: fixed values only."""
    if args is None:
        return []
    if not isinstance(args, list):
        raise RecordError(field, f"expected a list, got {type(args).__name__}")
    out: list[str] = []
    for i, arg in enumerate(args):
        arg = _object(arg, f"{field}[{i}]")
        value = arg.get("value", arg.get("default"))
        if arg.get("type") == "named":
            flag = _require(arg, "name", f"{field}[{i}]")
            out.extend([flag] if value is None else [flag, str(value)])
        elif value is not None:
            out.append(str(value))
        elif arg.get("isRequired"):
            raise RecordError(f"{field}[{i}]", "a required argument without a value (give it one after import)")
    return out


def _stdio_launch(pkg: dict[str, Any], field: str) -> StdioLaunch:
    registry_type = _require(pkg, "registryType", field)
    identifier = _require(pkg, "identifier", field)
    if registry_type not in _RUNNERS:
        raise RecordError(f"{field}.registryType", f"cannot launch {registry_type!r} packages ({', '.join(_RUNNERS)})")
    default_runtime, name_it = _RUNNERS[registry_type]
    runtime = pkg.get("runtimeHint") or default_runtime
    args = _arguments(pkg.get("runtimeArguments"), f"{field}.runtimeArguments")
    args += name_it(identifier, pkg.get("version"))
    args += _arguments(pkg.get("packageArguments"), f"{field}.packageArguments")
    env = _headers(pkg.get("environmentVariables"), f"{field}.environmentVariables")
    return StdioLaunch(command=runtime, args=args, env=env)


def _headers(headers: Any, field: str) -> dict[str, str]:
    """server.json ``headers`` / ``environmentVariables``: [{name, value|default}] -> {name: value}.

    Entries without a value (secrets the user must supply) are left out.
    """
    if headers is not None and not isinstance(headers, list):
        raise RecordError(field, f"expected a list, got {type(headers).__name__}")
    out: dict[str, str] = {}
    for i, h in enumerate(headers or []):
        h = _object(h, f"{field}[{i}]")
        value = h.get("value", h.get("default"))
        if value is not None:
            out[_require(h, "name", f"{field}[{i}]")] = str(value)
    return out


def parse_server_json(doc: dict[str, Any], *, source: str | None = None) -> ServerSpec:
    """An MCP registry ``server.json`` as a ServerSpec with no tools (raises :class:`RecordError`)."""
    if isinstance(doc.get("server"), dict) and "name" not in doc:
        doc = doc["server"]
    name = _require(doc, "name", "").strip()
    description = _optional_str(doc, "description", "") or ""
    title = _optional_str(doc, "title", "")
    _optional_str(doc, "version", "")
    packages = doc.get("packages") or []
    remotes = doc.get("remotes") or []
    if not isinstance(packages, list):
        raise RecordError("packages", f"expected a list, got {type(packages).__name__}")
    if not isinstance(remotes, list):
        raise RecordError("remotes", f"expected a list, got {type(remotes).__name__}")

    launch: StdioLaunch | HttpLaunch | None = None
    first_error: RecordError | None = None
    for i, pkg in enumerate(packages):
        pkg = _object(pkg, f"packages[{i}]")
        transport = _object(pkg.get("transport") or {"type": "stdio"}, f"packages[{i}].transport")
        try:
            if transport.get("type", "stdio") == "stdio":
                launch = _stdio_launch(pkg, f"packages[{i}]")
            elif transport.get("type") in ("streamable-http", "sse") and transport.get("url"):
                launch = HttpLaunch(url=transport["url"], transport=transport["type"],
                                    headers=_headers(transport.get("headers"), f"packages[{i}].transport.headers"))
        except RecordError as exc:
            first_error = first_error or exc
            continue
        if launch is not None:
            break
    if launch is None:
        # streamable HTTP preferred; a legacy SSE remote when it is all there is
        for wanted in ("streamable-http", "sse"):
            for i, remote in enumerate(remotes):
                remote = _object(remote, f"remotes[{i}]")
                if remote.get("type") == wanted:
                    url = _require(remote, "url", f"remotes[{i}]")
                    launch = HttpLaunch(url=url, transport=wanted,
                                        headers=_headers(remote.get("headers"), f"remotes[{i}].headers"))
                    break
            if launch is not None:
                break
    if launch is None:
        if first_error is not None:
            raise first_error
        raise RecordError("packages", "no launchable transport: need a stdio package, or a streamable-http or sse remote")
    return ServerSpec(
        id=stable_id("server.json", name, prefix="srv-"),
        name=name,
        title=title,
        description=description,
        launch=launch,
        source=source,
    )


# --------------------------------------------------------------------------- files


def _parse_record(doc: Any, source: str) -> ServerSpec:
    if not isinstance(doc, dict):
        raise RecordError("record", f"expected a JSON object, got {type(doc).__name__}")
    if "base_info" in doc:
        return parse_astra_record(doc, source=source)
    if "name" in doc and ("packages" in doc or "remotes" in doc or "$schema" in doc) or isinstance(doc.get("server"), dict):
        return parse_server_json(doc, source=source)
    raise RecordError("base_info", "missing (neither an ASTRA mcp_servers record nor an MCP registry server.json)")


def iter_records(path: Path, data: bytes | None = None) -> Iterator[tuple[int, ServerSpec | RecordError | None, Any]]:
    """(line, spec | error | None for a blank line, raw document) for each record of a file.

    ``.json`` files hold one document (a record, a list of records, or a registry API
    response ``{"servers": [...]}``); anything else is read as JSON Lines.
    """
    if data is None:
        data = path.read_bytes()
    if path.suffix.lower() == ".json":
        yield from _iter_json_document(path, data)
        return
    for lineno, raw_line in enumerate(data.split(b"\n"), start=1):
        if not raw_line.strip():
            if lineno < data.count(b"\n") + 1 or raw_line:  # the empty tail after a final newline is no line
                yield lineno, None, None
            continue
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield lineno, RecordError("encoding", f"invalid UTF-8 byte 0x{raw_line[exc.start]:02x} at column {exc.start + 1}"), None
            continue
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            yield lineno, RecordError("json", f"{exc.msg} at column {exc.colno}"), None
            continue
        except RecursionError:
            yield lineno, RecordError("json", "nested too deeply"), None
            continue
        yield lineno, _safe_parse(doc, f"{path}:{lineno}"), doc


def _safe_parse(doc: Any, source: str) -> ServerSpec | RecordError:
    try:
        return _parse_record(doc, source)
    except RecordError as exc:
        return exc
    except RecursionError:
        return RecordError("record", "nested too deeply")
    except ValueError as exc:  # pydantic validation of the built record
        return RecordError("record", str(exc).splitlines()[0])


def _iter_json_document(path: Path, data: bytes) -> Iterator[tuple[int, ServerSpec | RecordError | None, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        yield line, RecordError("encoding", f"invalid UTF-8 byte 0x{data[exc.start]:02x}"), None
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        yield exc.lineno, RecordError("json", f"{exc.msg} at column {exc.colno}"), None
        return
    except RecursionError:
        yield 1, RecordError("json", "nested too deeply"), None
        return
    if isinstance(doc, dict) and isinstance(doc.get("servers"), list):
        doc = doc["servers"]
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            spec = _safe_parse(item, f"{path}:1")
            if isinstance(spec, RecordError):
                spec = RecordError(f"[{i}].{spec.field}", spec.reason)
            yield 1, spec, item
        return
    yield 1, _safe_parse(doc, f"{path}:1"), doc


def import_file(
    registry: Registry,
    path: str | os.PathLike[str],
    *,
    on_record: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import every record of ``path`` into ``registry``; never raises for bad records.

    ``on_record(line)`` is called after each record (for progress bars). A missing or
    unreadable file is one rejected record at line 0.
    """
    path = Path(path)
    report = ImportReport(files=[str(path)])
    try:
        data = path.read_bytes()
    except OSError as exc:
        report.records = report.rejected = 1
        report.errors.append(f"{path}:0: file: {exc.strerror or exc}")
        return report
    for lineno, spec, raw in iter_records(path, data):
        if spec is None:
            report.blank += 1
            continue
        report.records += 1
        if isinstance(spec, RecordError):
            report.rejected += 1
            report.errors.append(f"{path}:{lineno}: {spec.field}: {spec.reason}")
        else:
            try:
                if not spec.tools and isinstance(spec.launch, (StdioLaunch, HttpLaunch)):
                    # server.json carries no tools: keep what an earlier discovery found
                    known = registry.get_server(spec.name)
                    if known is not None and known.launch == spec.launch:
                        spec = spec.model_copy(update={"tools": known.tools})
                changed = registry.upsert_server(spec, raw=raw)
            except RegistryError as exc:
                report.rejected += 1
                report.errors.append(f"{path}:{lineno}: record: {exc}")
            else:
                if changed:
                    report.imported += 1
                    report.servers.append(spec.name)
                else:
                    report.unchanged += 1
        if on_record is not None:
            on_record(lineno)
    return report
