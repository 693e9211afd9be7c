"""Import servers from documents: ASTRA ``mcp_servers.jsonl`` and MCP registry ``server.json``.

Each record is parsed, normalised and validated on its own; a bad one is reported as
``FILE:LINE: field: reason`` and the rest go on. Each good record is stored in one
transaction; a record whose content hash is already stored is counted as unchanged.

Formats (auto-detected per record):

- ASTRA: ``{"base_info": {"group_info": {"server_title", "server_name", "server_description",
  "domain"}, "tool_list": [{"name", "description", "parameters", "output_schema"?}]},
  "call_info": ...?}``, also wrapped as ``{"mcp_info": {...}, "graph": ..., ...}`` (the original
  ASTRA's intermediate files). A record without ``server_name`` is named as the original names
  it: ``server_title``, else ``group_id``. A tool that is broken (bad schema, duplicate or empty
  name) is left out and reported, the rest of the server is kept (``strict``: the record is
  rejected). Such servers exist only as documentation, so they get
  :class:`~astra.records.SimulatedLaunch` carrying ``call_info``; a ``call_info`` that names a
  remote MCP endpoint (``url`` + ``headers``, or Smithery's ``python_sdk_url`` template) also
  gets a ``remote`` :class:`~astra.records.HttpLaunch`, called live on request (``--live-remote``).
  Secrets in it (header values, key-like URL parameters, Smithery's api key / profile / config
  secrets) are never stored: they become ``${VAR}`` references resolved from the environment at
  launch, and the report's ``notices`` say which variable to set.
- MCP registry ``server.json``: ``{"name", "description", "version", "title"?,
  "packages": [{"registryType", "identifier", "version", "transport": {"type"}, ...}],
  "remotes": [{"type", "url", "headers"?}]}`` (also wrapped as ``{"server": {...}}`` the way
  the registry API returns it). The launch is derived from a stdio package or a
  streamable-HTTP remote (else an SSE one); the whole document is kept. Tools are unknown until discovery.

Input files are read only when they are regular files (a FIFO, a device such as ``/dev/zero``
or a directory is refused before any byte is read) of at most :data:`MAX_INPUT_BYTES`; a
document nested deeper than :data:`MAX_JSON_DEPTH` levels (a tool schema: :data:`MAX_SCHEMA_DEPTH`)
is refused with its field. With ``strict``, a file is imported whole or not at all (one transaction).
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import BaseModel, Field

from astra.errors import UserError
from astra.jsonutil import is_array, is_object
from astra.records import (
    HttpLaunch,
    ServerSpec,
    SimulatedLaunch,
    StdioLaunch,
    ToolSpec,
    stable_id,
)
from astra.registry._schema import SchemaError, normalize_schema
from astra.registry._store import Registry, RegistryError

__all__ = [
    "MAX_INPUT_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_SCHEMA_DEPTH",
    "ImportReport",
    "RecordError",
    "import_file",
    "iter_json_lines",
    "iter_records",
    "json_too_deep",
    "parse_astra_record",
    "parse_server_json",
    "read_input_file",
    "secret_env_name",
    "unwrap_mcp_info",
]

MAX_INPUT_BYTES = 1 << 30
"""Largest input file read (1 GiB): a bigger one is refused, never half-read."""
MAX_JSON_DEPTH = 512
"""Deepest nesting of one JSON document (Python's parsers and encoders recurse; past ~900 they fail)."""
MAX_SCHEMA_DEPTH = 64
"""Deepest nesting of one tool schema (real ones stay under ~20 levels)."""

_OUTPUT_KEYS = ("output_schema", "outputSchema", "returns", "output_parameters")


class RecordError(UserError, ValueError):
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
    tools_rejected: int = Field(default=0, description="tools left out of servers that were kept (not strict)")
    servers: list[str] = Field(default_factory=list, description="names of servers imported or updated")
    errors: list[str] = Field(default_factory=list, description="FILE:LINE: field: reason (records and tools)")
    notices: list[str] = Field(default_factory=list, description="FILE:LINE: field: what to know (secrets to set)")

    @property
    def ok(self) -> bool:
        return self.rejected == 0 and self.tools_rejected == 0

    def merge(self, other: ImportReport) -> ImportReport:
        return ImportReport(
            files=self.files + other.files,
            records=self.records + other.records,
            imported=self.imported + other.imported,
            unchanged=self.unchanged + other.unchanged,
            rejected=self.rejected + other.rejected,
            blank=self.blank + other.blank,
            tools_rejected=self.tools_rejected + other.tools_rejected,
            servers=self.servers + other.servers,
            errors=self.errors + other.errors,
            notices=self.notices + other.notices,
        )


# --------------------------------------------------------------------------- helpers


def _require(obj: dict[str, Any], key: str, field: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in obj or obj[key] is None:
        raise RecordError(f"{field}.{key}" if field else key, "missing")
    value = obj[key]
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        what = "empty" if isinstance(value, str) and kind is str else f"expected {want}, got {type(value).__name__}"
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
    if not is_object(value):
        raise RecordError(field, f"expected an object, got {type(value).__name__}")
    return value


def _schema(value: Any, field: str) -> dict[str, Any]:
    try:
        return normalize_schema(value, field=field)
    except SchemaError as exc:
        raise RecordError(exc.field, exc.reason) from None


# --------------------------------------------------------------------------- input files


def read_input_file(path: str | os.PathLike[str], *, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of a regular file; :class:`RecordError` (field ``file``) for anything else.

    Opened non-blocking and checked on the open descriptor, so a FIFO without a writer, a
    device (``/dev/zero`` never ends) or a path swapped after a check is refused at once.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise RecordError("file", exc.strerror or str(exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a character device" if stat.S_ISCHR(info.st_mode)
                    else "a block device" if stat.S_ISBLK(info.st_mode) else "a directory" if stat.S_ISDIR(info.st_mode)
                    else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a file")
            raise RecordError("file", f"not a regular file ({kind}); give a JSON or JSONL file")
        if info.st_size > limit:
            raise RecordError("file", f"{info.st_size} bytes is over the {limit}-byte limit")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:  # grew while being read
                raise RecordError("file", f"over the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise RecordError("file", exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


def json_too_deep(value: Any, limit: int) -> bool:
    """True when ``value`` nests containers more than ``limit`` levels deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if is_object(node):
            children: Any = node.values()
        elif is_array(node):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


_PARSE_DEPTH = 3000  # the C parser recurses once per level: parse deeper than Python's default 1000, then judge
_parse_lock = threading.Lock()


def _loads(text: str, max_depth: int | None = MAX_JSON_DEPTH) -> Any:
    """json.loads; a too-deep document is a RecordError, never a RecursionError.

    Documents up to :data:`_PARSE_DEPTH` levels are parsed (so that a too-deep part, such as
    one tool's schema, can be named and left out); ``max_depth`` then bounds the whole.
    """
    try:
        if text.count("[") + text.count("{") < 900:
            doc = json.loads(text)
        else:
            with _parse_lock:
                old = sys.getrecursionlimit()
                sys.setrecursionlimit(max(old, _PARSE_DEPTH + 100))
                try:
                    doc = json.loads(text)
                finally:
                    sys.setrecursionlimit(old)
    except json.JSONDecodeError as exc:
        raise RecordError("json", f"{exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise RecordError("json", f"nested deeper than {_PARSE_DEPTH} levels") from None
    if max_depth is not None and json_too_deep(doc, max_depth):
        raise RecordError("json", f"nested deeper than {max_depth} levels")
    return doc


def deep_field(doc: Any, limit: int, prefix: str = "", levels: int = 4) -> str | None:
    """The path of the first part of ``doc`` nested deeper than ``limit`` (None: none is), named
    down to the first level that holds the whole excess (``base_info.tool_list[3].parameters``)."""
    if not json_too_deep(doc, limit):
        return None
    path = prefix
    for _ in range(levels):
        children = doc.items() if is_object(doc) else enumerate(doc) if is_array(doc) else ()
        for key, child in children:
            if json_too_deep(child, limit - 1):
                path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else str(key))
                doc, limit = child, limit - 1
                break
        else:
            break
    return path or "record"


def iter_json_lines(path: str | os.PathLike[str], data: bytes, *,
                    max_depth: int | None = MAX_JSON_DEPTH) -> Iterator[tuple[int, Any]]:
    """(line, document | :class:`RecordError` | None for a blank line) for each line of JSON Lines ``data``.

    A line nested deeper than ``max_depth`` is an error (None: the caller checks depth itself)."""
    count = data.count(b"\n") + 1
    for lineno, raw_line in enumerate(data.split(b"\n"), start=1):
        if not raw_line.strip():
            if lineno < count or raw_line:  # the empty tail after a final newline is no line
                yield lineno, None
            continue
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield lineno, RecordError("encoding",
                                      f"invalid UTF-8 byte 0x{raw_line[exc.start]:02x} at column {exc.start + 1}")
            continue
        try:
            yield lineno, _loads(text, max_depth)
        except RecordError as exc:
            yield lineno, exc


# --------------------------------------------------------------------------- ASTRA records

_NON_SECRET_HEADERS = frozenset({"accept", "accept-language", "content-type", "user-agent", "mcp-protocol-version"})
_SECRET_WORDS = re.compile(r"key|token|secret|passw|auth|sig|cred|session|cookie", re.IGNORECASE)
_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
_SMITHERY = {"{smithery_api_key}": "${SMITHERY_API_KEY}", "{smithery_profile}": "${SMITHERY_PROFILE}"}


def secret_env_name(server: str, what: str) -> str:
    """The environment variable a moved secret is read from: ``ASTRA_SECRET_<SERVER>_<WHAT>``."""
    clean = re.sub(r"[^A-Z0-9]+", "_", f"{server}_{what}".upper()).strip("_")
    return f"ASTRA_SECRET_{clean}"


def unwrap_mcp_info(doc: dict[str, Any]) -> dict[str, Any]:
    """An original-ASTRA intermediate record (``{"mcp_info": {"base_info", "call_info"?, "features"?},
    "graph", "chain_info", "query_info", ...}``) as the plain server record it wraps."""
    info = doc.get("mcp_info")
    if not is_object(info):
        raise RecordError("mcp_info", f"expected an object, got {type(info).__name__}")
    return info


def _server_name(group: dict[str, Any]) -> str:
    """server_name, else server_title, else group_id: the original's own fallback order."""
    for key in ("server_name", "server_title", "group_id"):
        value = group.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, bool) or not isinstance(value, str if key != "group_id" else (str, int)):
            raise RecordError(f"base_info.group_info.{key}", f"expected str, got {type(value).__name__}")
        return str(value).strip()
    raise RecordError("base_info.group_info.server_name",
                      "missing (and no server_title or group_id to name the server by)")


def _parse_tool(raw: Any, field: str, server: str) -> ToolSpec:
    tool = _object(raw, field)
    too_deep = deep_field(tool, MAX_SCHEMA_DEPTH, field, levels=1)
    if too_deep is not None:
        raise RecordError(too_deep, f"nested deeper than {MAX_SCHEMA_DEPTH} levels")
    tool_name = _require(tool, "name", field).strip()
    tool_description = _optional_str(tool, "description", field) or ""
    input_schema = _schema(tool.get("parameters", tool.get("input_schema", tool.get("inputSchema"))),
                           f"{field}.parameters")
    output_schema = None
    for key in _OUTPUT_KEYS:
        if tool.get(key) is not None:
            output_schema = _schema(tool[key], f"{field}.{key}")
            break
    annotations = tool.get("annotations") or {}
    if not is_object(annotations):
        raise RecordError(f"{field}.annotations", f"expected an object, got {type(annotations).__name__}")
    return ToolSpec(server=server, name=tool_name, title=_optional_str(tool, "title", field),
                    description=tool_description,
                    input_schema=input_schema, output_schema=output_schema, annotations=annotations)


def _secret_ref(value: Any, server: str, what: str, field: str, notices: list[str]) -> str:
    """A stored stand-in for a secret: the value when it already is a ``${VAR}`` reference, else a new one."""
    if isinstance(value, str) and _REFERENCE.match(value.strip()):
        return value.strip()
    var = secret_env_name(server, what)
    notices.append(f"{field}: secret not stored; set ${var} when the server is called live")
    return "${" + var + "}"


def _scrub_url(url: str, server: str, field: str, notices: list[str]) -> str:
    """Key-like query parameter values of ``url`` replaced by ``${VAR}`` references."""
    for template, ref in _SMITHERY.items():
        url = url.replace(template, ref)
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    out = []
    for key, value in pairs:
        if _SECRET_WORDS.search(key) and value and not _REFERENCE.match(value) and "{" not in value:
            value = _secret_ref(value, server, key, f"{field}?{key}", notices)
        out.append((key, value))
    if out == pairs:
        return url
    return parts._replace(query=urlencode(out, safe="${}")).geturl()


def _scrub_config(config: Any, server: str, field: str, notices: list[str], path: str = "") -> Any:
    if is_object(config):
        out: dict[str, Any] = {}
        for key, value in config.items():
            here = f"{path}.{key}" if path else str(key)
            if isinstance(value, (dict, list)):
                out[key] = _scrub_config(value, server, field, notices, here)
            elif _SECRET_WORDS.search(str(key)) and isinstance(value, str) and value:
                out[key] = _secret_ref(value, server, f"config_{here}", f"{field}.{here}", notices)
            else:
                out[key] = value
        return out
    if is_array(config):
        return [_scrub_config(v, server, field, notices, f"{path}[{i}]") for i, v in enumerate(config)]
    return config


def remote_of_call_info(
    call_info: dict[str, Any], server: str, notices: list[str],
) -> tuple[dict[str, Any], HttpLaunch | None]:
    """(call_info with its secrets replaced by ``${VAR}`` references, the remote endpoint or None).

    The original ASTRA calls ``{"url", "headers"}`` (ModelScope / AIStudio style) and
    ``{"python_sdk_url", "python_sdk_config"}`` (Smithery: ``{config_b64}``,
    ``{smithery_api_key}``, ``{smithery_profile}`` placeholders) over streamable HTTP, and
    simulates ``{"mock_tool": ...}``.
    """
    scrubbed = dict(call_info)
    remote: HttpLaunch | None = None
    if "mock_tool" in call_info:
        return scrubbed, None
    if call_info.get("url") is not None or call_info.get("headers") is not None:
        url = call_info.get("url")
        if not isinstance(url, str) or not url.strip():
            raise RecordError("call_info.url",
                              "missing" if url is None else f"expected a URL, got {type(url).__name__}")
        headers = call_info.get("headers") or {}
        if not is_object(headers):
            raise RecordError("call_info.headers", f"expected an object, got {type(headers).__name__}")
        clean_headers: dict[str, str] = {}
        for key, value in headers.items():
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise RecordError(f"call_info.headers.{key}", f"expected a string, got {type(value).__name__}")
            if str(key).lower() in _NON_SECRET_HEADERS:
                clean_headers[str(key)] = str(value)
            else:
                clean_headers[str(key)] = _secret_ref(str(value), server, str(key), f"call_info.headers.{key}", notices)
        url = _scrub_url(url.strip(), server, "call_info.url", notices)
        scrubbed.update(url=url, headers=clean_headers)
        remote = HttpLaunch(url=url, headers=clean_headers)
    elif call_info.get("python_sdk_url") is not None:
        url = call_info["python_sdk_url"]
        if not isinstance(url, str) or not url.strip():
            raise RecordError("call_info.python_sdk_url", f"expected a URL, got {type(url).__name__}")
        config = call_info.get("python_sdk_config") or {}
        if isinstance(config, str):
            try:
                config = json.loads(config) if config.strip() else {}
            except json.JSONDecodeError as exc:
                raise RecordError("call_info.python_sdk_config", f"not JSON: {exc.msg}") from None
        if not is_object(config):
            raise RecordError("call_info.python_sdk_config", f"expected an object, got {type(config).__name__}")
        config = _scrub_config(config, server, "call_info.python_sdk_config", notices)
        url = _scrub_url(url.strip(), server, "call_info.python_sdk_url", notices)
        scrubbed.update(python_sdk_url=url, python_sdk_config=config)
        remote = HttpLaunch(url=url, url_config=config if "{config_b64}" in url else None)
    return scrubbed, remote


def parse_astra_record(
    doc: dict[str, Any], *, source: str | None = None, rejected_tools: list[RecordError] | None = None,
    notices: list[str] | None = None,
) -> ServerSpec:
    """An ASTRA ``mcp_servers.jsonl`` record (or an ``mcp_info``-wrapped one) as a ServerSpec.

    Raises :class:`RecordError`. A broken tool raises too, unless ``rejected_tools`` is given:
    then it is left out and its error appended there. ``notices`` collects secrets moved out.
    """
    if "base_info" not in doc and "mcp_info" in doc:
        doc = unwrap_mcp_info(doc)
    base = _object(doc.get("base_info"), "base_info") if "base_info" in doc else None
    if base is None:
        raise RecordError("base_info", "missing")
    group = _require(base, "group_info", "base_info", dict)
    name = _server_name(group)
    title = _optional_str(group, "server_title", "base_info.group_info")
    description = _optional_str(group, "server_description", "base_info.group_info") or ""
    domain = _optional_str(group, "domain", "base_info.group_info")
    tool_list = _require(base, "tool_list", "base_info", list)

    tools: list[ToolSpec] = []
    first_seen: dict[str, int] = {}
    for i, raw in enumerate(tool_list):
        field = f"base_info.tool_list[{i}]"
        try:
            tool = _parse_tool(raw, field, name)
            if tool.name in first_seen:
                raise RecordError(f"{field}.name",
                                  f"duplicate tool name {tool.name!r} (also tool_list[{first_seen[tool.name]}])")
        except RecordError as exc:
            if rejected_tools is None:
                raise
            rejected_tools.append(exc)
            continue
        first_seen[tool.name] = i
        tools.append(tool)
    call_info = doc.get("call_info", base.get("call_info"))
    if call_info is not None and not is_object(call_info):
        raise RecordError("call_info", f"expected an object, got {type(call_info).__name__}")
    remote = None
    if call_info is not None:
        call_info, remote = remote_of_call_info(call_info, name, notices if notices is not None else [])
    return ServerSpec(
        id=stable_id("astra", name, prefix="srv-"),
        name=name,
        title=title,
        description=description,
        domain=domain,
        launch=SimulatedLaunch(call_info=call_info, remote=remote),
        tools=tools,
        source=source,
    )


# --------------------------------------------------------------------------- server.json

_RUNNERS: dict[str, tuple[str, Callable[[str, str | None], list[str]]]] = {
    # registryType -> (default runtime, how to name the package for it)
    "npm": ("npx", lambda ident, ver: ["-y", f"{ident}@{ver}" if ver else ident]),
    "pypi": ("uvx", lambda ident, ver: [f"{ident}=={ver}" if ver else ident]),
    "oci": (
        "docker",
        lambda ident, ver: ["run", "-i", "--rm", f"{ident}:{ver}" if ver and ":" not in ident else ident],
    ),
    "nuget": ("dnx", lambda ident, ver: [f"{ident}@{ver}" if ver else ident, "--yes"]),
}


def _arguments(args: Any, field: str) -> list[str]:
    """server.json ``runtimeArguments``/``packageArguments``: fixed values only."""
    if args is None:
        return []
    if not is_array(args):
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
    if headers is not None and not is_array(headers):
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
    if is_object(doc.get("server")) and "name" not in doc:
        doc = doc["server"]
    name = _require(doc, "name", "").strip()
    description = _optional_str(doc, "description", "") or ""
    title = _optional_str(doc, "title", "")
    _optional_str(doc, "version", "")
    packages = doc.get("packages") or []
    remotes = doc.get("remotes") or []
    if not is_array(packages):
        raise RecordError("packages", f"expected a list, got {type(packages).__name__}")
    if not is_array(remotes):
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
        raise RecordError(
            "packages", "no launchable transport: need a stdio package, or a streamable-http or sse remote"
        )
    return ServerSpec(
        id=stable_id("server.json", name, prefix="srv-"),
        name=name,
        title=title,
        description=description,
        launch=launch,
        source=source,
    )


# --------------------------------------------------------------------------- files


_TOOL_INDEX = re.compile(r"base_info\.tool_list\[(\d+)\]")


@dataclass
class _Parsed:
    """One record: its server, the document to keep (secrets replaced), tools left out, notices."""

    spec: ServerSpec
    raw: Any = None
    rejected_tools: list[RecordError] = dc_field(default_factory=list)
    notices: list[str] = dc_field(default_factory=list)


def _parse_record(doc: Any, source: str, strict: bool = False) -> _Parsed:
    if not is_object(doc):
        raise RecordError("record", f"expected a JSON object, got {type(doc).__name__}")
    if "base_info" in doc or "mcp_info" in doc:
        record = doc if "base_info" in doc else unwrap_mcp_info(doc)
        rejected: list[RecordError] = []
        notices: list[str] = []
        spec = parse_astra_record(record, source=source, rejected_tools=None if strict else rejected, notices=notices)
        raw = dict(record)
        if rejected and is_object(raw.get("base_info")):  # the stored copy: without what was left out
            left_out = {int(m.group(1)) for e in rejected if (m := _TOOL_INDEX.match(e.field))}
            tools = raw["base_info"].get("tool_list")
            raw["base_info"] = {**raw["base_info"], "tool_list": [t for i, t in enumerate(tools) if i not in left_out]}
        too_deep = deep_field(raw, MAX_JSON_DEPTH)
        if too_deep is not None:
            raise RecordError(too_deep, f"nested deeper than {MAX_JSON_DEPTH} levels")
        assert isinstance(spec.launch, SimulatedLaunch)
        if "call_info" in raw:
            raw["call_info"] = spec.launch.call_info  # the stored copy never holds a secret
        elif is_object(raw.get("base_info")) and "call_info" in raw["base_info"]:
            raw["base_info"] = {**raw["base_info"], "call_info": spec.launch.call_info}
        return _Parsed(spec=spec, raw=raw, rejected_tools=rejected, notices=notices)
    server_json = "name" in doc and ("packages" in doc or "remotes" in doc or "$schema" in doc)
    if server_json or is_object(doc.get("server")):
        too_deep = deep_field(doc, MAX_JSON_DEPTH)
        if too_deep is not None:
            raise RecordError(too_deep, f"nested deeper than {MAX_JSON_DEPTH} levels")
        return _Parsed(spec=parse_server_json(doc, source=source), raw=doc)
    raise RecordError("base_info", "missing (neither an ASTRA mcp_servers record nor an MCP registry server.json)")


def _safe_parse(doc: Any, source: str, strict: bool = False) -> _Parsed | RecordError:
    try:
        return _parse_record(doc, source, strict)
    except RecordError as exc:
        return exc
    except RecursionError:
        return RecordError("record", "nested too deeply")
    except ValueError as exc:  # pydantic validation of the built record
        return RecordError("record", str(exc).splitlines()[0])


def iter_records(
    path: Path, data: bytes | None = None, *, strict: bool = False,
) -> Iterator[tuple[int, _Parsed | RecordError | None, Any]]:
    """(line, parsed record | error | None for a blank line, raw document) for each record of a file.

    ``.json`` files hold one document (a record, a list of records, or a registry API
    response ``{"servers": [...]}``); anything else is read as JSON Lines.
    """
    if data is None:
        data = read_input_file(path)
    if path.suffix.lower() == ".json":
        yield from _iter_json_document(path, data, strict)
        return
    for lineno, doc in iter_json_lines(path, data, max_depth=None):  # depth is judged per record and per tool
        if doc is None or isinstance(doc, RecordError):
            yield lineno, doc, None
        else:
            yield lineno, _safe_parse(doc, f"{path}:{lineno}", strict), doc


def _iter_json_document(
    path: Path, data: bytes, strict: bool,
) -> Iterator[tuple[int, _Parsed | RecordError | None, Any]]:
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
        yield 1, RecordError("json", f"nested deeper than {MAX_JSON_DEPTH} levels"), None
        return
    if json_too_deep(doc, MAX_JSON_DEPTH + 2):  # (+2: a list of records in a {"servers": [...]} response)
        yield 1, RecordError("json", f"nested deeper than {MAX_JSON_DEPTH} levels"), None
        return
    if is_object(doc) and is_array(doc.get("servers")):
        doc = doc["servers"]
    if is_array(doc):
        for i, item in enumerate(doc):
            parsed = _safe_parse(item, f"{path}:1", strict)
            if isinstance(parsed, RecordError):
                parsed = RecordError(f"[{i}].{parsed.field}", parsed.reason)
            yield 1, parsed, item
        return
    yield 1, _safe_parse(doc, f"{path}:1", strict), doc


def import_file(
    registry: Registry,
    path: str | os.PathLike[str],
    *,
    on_record: Callable[[int], None] | None = None,
    strict: bool = False,
) -> ImportReport:
    """Import every record of ``path`` into ``registry``; never raises for bad input.

    Each record is stored in its own transaction (a bad one writes nothing of itself); a
    broken tool is left out of its server and reported. ``strict``: a broken tool rejects its
    record, and any error leaves the whole file unimported (one transaction, all or nothing).
    ``on_record(line)`` is called after each record (for progress bars). A missing, unreadable
    or non-regular file (FIFO, device, directory) is one rejected record at line 0.
    """
    path = Path(path)
    report = ImportReport(files=[str(path)])
    try:
        data = read_input_file(path)
    except RecordError as exc:
        report.records = report.rejected = 1
        report.errors.append(f"{path}:0: {exc.field}: {exc.reason}")
        return report
    staged: list[tuple[int, _Parsed]] = []
    for lineno, parsed, _raw in iter_records(path, data, strict=strict):
        if parsed is None:
            report.blank += 1
            continue
        report.records += 1
        if isinstance(parsed, RecordError):
            report.rejected += 1
            report.errors.append(f"{path}:{lineno}: {parsed.field}: {parsed.reason}")
        else:
            for bad in parsed.rejected_tools:
                report.tools_rejected += 1
                report.errors.append(f"{path}:{lineno}: {bad.field}: {bad.reason} (tool left out; the rest of "
                                     f"{parsed.spec.name!r} is kept)")
            report.notices += [f"{path}:{lineno}: {n}" for n in parsed.notices]
            if strict:
                staged.append((lineno, parsed))
            else:
                _store(registry, path, lineno, parsed, report)
        if on_record is not None:
            on_record(lineno)
    if strict and staged:
        if report.rejected:
            report.errors.append(f"{path}:0: file: nothing imported (--strict: {report.rejected} record(s) rejected)")
            report.rejected += len(staged)
        else:
            try:
                changed = registry.upsert_servers([(_with_known_tools(registry, p.spec), p.raw) for _, p in staged])
            except (RegistryError, RecursionError, ValueError) as exc:
                report.rejected += len(staged)
                report.errors.append(f"{path}:0: file: nothing imported: {exc}")
            else:
                for (_, p), did in zip(staged, changed, strict=False):
                    if did:
                        report.imported += 1
                        report.servers.append(p.spec.name)
                    else:
                        report.unchanged += 1
    return report


def _store(registry: Registry, path: Path, lineno: int, parsed: _Parsed, report: ImportReport) -> None:
    spec = parsed.spec
    try:
        spec = _with_known_tools(registry, spec)
        changed = registry.upsert_server(spec, raw=parsed.raw)
    except (RegistryError, RecursionError, ValueError) as exc:
        report.rejected += 1
        report.errors.append(f"{path}:{lineno}: record: {exc}")
    else:
        if changed:
            report.imported += 1
            report.servers.append(spec.name)
        else:
            report.unchanged += 1


def _with_known_tools(registry: Registry, spec: ServerSpec) -> ServerSpec:
    """server.json carries no tools: keep what an earlier discovery of the same launch found."""
    if not spec.tools and isinstance(spec.launch, (StdioLaunch, HttpLaunch)):
        known = registry.get_server(spec.name)
        if known is not None and known.launch == spec.launch:
            return spec.model_copy(update={"tools": known.tools})
    return spec
