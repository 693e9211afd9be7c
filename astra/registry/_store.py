"""The registry store: one SQLite database (WAL) of servers, tools, graphs and environments.

The schema is versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` are applied in
order when a database is opened, each in its own transaction, so an old database upgrades
in place and a new one is built by the same steps. Every record is written in one
transaction: a crash leaves the previous record or the new one, never half of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import networkx as nx
import pydantic_core
from pydantic import BaseModel, TypeAdapter

from astra.config import default_db_path
from astra.errors import AstraError
from astra.records import (
    EnvironmentSpec,
    GraphEdge,
    Launch,
    ServerSpec,
    ToolGraph,
    ToolSpec,
    canonical_json,
)

__all__ = [
    "Registry",
    "RegistryError",
    "NotFoundError",
    "GraphInfo",
    "SCHEMA_VERSION",
    "MIGRATIONS",
    "server_content_hash",
]


class RegistryError(AstraError):
    """A registry operation that cannot be done (bad record, newer database, ...)."""


class NotFoundError(RegistryError, LookupError):
    """No such server / graph / version in the registry."""


class GraphInfo(BaseModel):
    name: str
    version: int = 0
    versions: list[int] = []
    nodes: int = 0
    edges: int = 0
    created_at: float = 0.0


# --------------------------------------------------------------------------- migrations


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # statement by statement: executescript() would COMMIT the migration's transaction early
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _m1_servers_tools(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE servers (
            name TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            title TEXT,
            description TEXT NOT NULL DEFAULT '',
            domain TEXT,
            launch TEXT NOT NULL,
            source TEXT,
            content_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX servers_domain ON servers(domain);
        CREATE TABLE tools (
            server TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE,
            name TEXT NOT NULL,
            position INTEGER NOT NULL,
            title TEXT,
            description TEXT NOT NULL DEFAULT '',
            input_schema TEXT NOT NULL,
            output_schema TEXT,
            annotations TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (server, name)
        );
        """
    )


def _m2_graphs(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE graphs (
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            nodes TEXT NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}',
            edge_count INTEGER NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (name, version)
        );
        CREATE TABLE graph_edges (
            graph TEXT NOT NULL,
            version INTEGER NOT NULL,
            position INTEGER NOT NULL,
            src TEXT NOT NULL,
            dst TEXT NOT NULL,
            kind TEXT NOT NULL,
            bindings TEXT NOT NULL DEFAULT '{}',
            score REAL NOT NULL,
            provenance TEXT NOT NULL,
            rationale TEXT,
            PRIMARY KEY (graph, version, position),
            FOREIGN KEY (graph, version) REFERENCES graphs(name, version) ON DELETE CASCADE
        ) WITHOUT ROWID;
        """
    )


def _m3_environments_and_raw(db: sqlite3.Connection) -> None:
    # raw: the source document a server came from (e.g. a whole server.json with every
    # package and remote), kept because ServerSpec holds only the launch we chose.
    _run_script(
        db,
        """
        ALTER TABLE servers ADD COLUMN raw TEXT;
        CREATE TABLE environments (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            spec TEXT NOT NULL,
            location TEXT,
            content_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX environments_name ON environments(name);
        """
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m1_servers_tools,
    _m2_graphs,
    _m3_environments_and_raw,
]
"""Migration i (1-based) brings a database from user_version i-1 to i. Append only."""

SCHEMA_VERSION = len(MIGRATIONS)

_LAUNCH = TypeAdapter(Launch)


def server_content_hash(spec: ServerSpec) -> str:
    """Hash of what a server *is* (not where or when it was read): the re-import no-op key.

    Serialised by pydantic (fast, deterministic for the same input; key order is kept, so
    the same content with its keys reordered hashes differently and is simply rewritten).
    """
    body = spec.model_dump_json(exclude={"content_hash", "source", "id"})
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _parse_cached(cache: dict[str, dict[str, str]], text: str) -> dict[str, str]:
    """A fresh dict from a JSON object text; edge bindings repeat a lot, so each text is parsed once."""
    parsed = cache.get(text)
    if parsed is None:
        parsed = cache[text] = json.loads(text)
    return dict(parsed)


def _dumps(value: Any) -> str:
    return pydantic_core.to_json(value).decode("utf-8")


class Registry:
    """The durable record of servers, tools, graphs and environments (one SQLite file).

    ``Registry(db_path)`` opens (creating and migrating) the database; ``Registry.open(home)``
    opens ``$ASTRA_HOME/astra.db``. Usable as a context manager. One connection, guarded by
    a lock: safe for threads of one process; other processes wait on SQLite's lock.
    """

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None) -> Registry:
        return cls(default_db_path(home))

    # -- lifecycle

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self._lock:
            current = self.schema_version
            if current > SCHEMA_VERSION:
                raise RegistryError(
                    f"{self.path}: database schema version {current} is newer than this ASTRA "
                    f"understands ({SCHEMA_VERSION}); upgrade ASTRA"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                with self._transaction() as db:
                    # re-read under the write lock: another process may have migrated meanwhile
                    if int(db.execute("PRAGMA user_version").fetchone()[0]) >= version:
                        continue
                    MIGRATIONS[version - 1](db)
                    db.execute(f"PRAGMA user_version = {version}")

    @contextmanager
    def _transaction(self) -> Generator[sqlite3.Connection, None, None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    # -- servers and tools

    def upsert_server(self, spec: ServerSpec, *, raw: Any = None) -> bool:
        """Store a server with its tools; False (and nothing written) when its content is unchanged.

        ``raw`` is the source document (kept for audit, e.g. a server.json with all packages).
        """
        return self.upsert_servers([(spec, raw)])[0]

    def upsert_servers(self, items: list[tuple[ServerSpec, Any]]) -> list[bool]:
        """Store several (spec, raw) in ONE transaction: all of them or, on any error, none."""
        for spec, _ in items:
            self._check_server(spec)
        with self._transaction() as db:
            return [self._upsert(db, spec, raw) for spec, raw in items]

    @staticmethod
    def _check_server(spec: ServerSpec) -> None:
        names = [t.name for t in spec.tools]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise RegistryError(f"server {spec.name!r}: duplicate tool names {dup}")
        for tool in spec.tools:
            if tool.server != spec.name:
                raise RegistryError(f"server {spec.name!r}: tool {tool.name!r} says it belongs to {tool.server!r}")

    def _upsert(self, db: sqlite3.Connection, spec: ServerSpec, raw: Any) -> bool:
        digest = server_content_hash(spec)
        now = time.time()
        row = db.execute("SELECT content_hash FROM servers WHERE name = ?", (spec.name,)).fetchone()
        if row is not None and row[0] == digest:
            return False
        db.execute("DELETE FROM tools WHERE server = ?", (spec.name,))
        db.execute(
            """INSERT INTO servers (name, id, title, description, domain, launch, source, content_hash,
                                    raw, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(name) DO UPDATE SET id=excluded.id, title=excluded.title,
                   description=excluded.description, domain=excluded.domain, launch=excluded.launch,
                   source=excluded.source, content_hash=excluded.content_hash, raw=excluded.raw,
                   updated_at=excluded.updated_at""",
            (
                spec.name,
                spec.id,
                spec.title,
                spec.description,
                spec.domain,
                spec.launch.model_dump_json(),
                spec.source,
                digest,
                None if raw is None else _dumps(raw),
                now,
                now,
            ),
        )
        db.executemany(
            """INSERT INTO tools (server, name, position, title, description, input_schema, output_schema,
                                  annotations) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                (
                    spec.name,
                    t.name,
                    i,
                    t.title,
                    t.description,
                    _dumps(t.input_schema),
                    None if t.output_schema is None else _dumps(t.output_schema),
                    _dumps(t.annotations),
                )
                for i, t in enumerate(spec.tools)
            ],
        )
        return True

    _SERVER_COLS = "name, id, title, description, domain, launch, source, content_hash"
    _TOOL_COLS = "server, name, title, description, input_schema, output_schema, annotations"

    @staticmethod
    def _tool(row: tuple[Any, ...]) -> ToolSpec:
        # rows were validated on the way in; construct without re-validating (19k tools load in ~0.1 s)
        return ToolSpec.model_construct(
            server=row[0],
            name=row[1],
            title=row[2],
            description=row[3],
            input_schema=json.loads(row[4]),
            output_schema=None if row[5] is None else json.loads(row[5]),
            annotations=json.loads(row[6]),
        )

    @staticmethod
    def _server(row: tuple[Any, ...], tools: list[ToolSpec]) -> ServerSpec:
        return ServerSpec(
            name=row[0],
            id=row[1],
            title=row[2],
            description=row[3],
            domain=row[4],
            launch=_LAUNCH.validate_json(row[5]),
            source=row[6],
            content_hash=row[7],
            tools=tools,
        )

    def get_server(self, name: str) -> ServerSpec | None:
        with self._lock:
            row = self._db.execute(f"SELECT {self._SERVER_COLS} FROM servers WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            return self._server(row, self.list_tools(name))

    def get_server_raw(self, name: str) -> Any:
        """The source document the server was imported from (None when there was none)."""
        with self._lock:
            row = self._db.execute("SELECT raw FROM servers WHERE name = ?", (name,)).fetchone()
        return None if row is None or row[0] is None else json.loads(row[0])

    def list_servers(self, domain: str | None = None) -> list[ServerSpec]:
        """All servers (with their tools), sorted by name; only one domain's when given."""
        with self._lock:
            where, args = ("WHERE domain = ?", (domain,)) if domain is not None else ("", ())
            rows = self._db.execute(f"SELECT {self._SERVER_COLS} FROM servers {where} ORDER BY name", args).fetchall()
            tools: dict[str, list[ToolSpec]] = {r[0]: [] for r in rows}
            tool_where = "WHERE server IN (SELECT name FROM servers WHERE domain = ?)" if domain is not None else ""
            for trow in self._db.execute(
                f"SELECT {self._TOOL_COLS} FROM tools {tool_where} ORDER BY server, position", args
            ):
                tools[trow[0]].append(self._tool(trow))
        return [self._server(r, tools[r[0]]) for r in rows]

    def list_tools(self, server: str | None = None) -> list[ToolSpec]:
        """Every tool (of one server when given), in server-name then listing order."""
        with self._lock:
            if server is None:
                cur = self._db.execute(f"SELECT {self._TOOL_COLS} FROM tools ORDER BY server, position")
            else:
                cur = self._db.execute(
                    f"SELECT {self._TOOL_COLS} FROM tools WHERE server = ? ORDER BY position", (server,)
                )
            return [self._tool(r) for r in cur]

    def server_names(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM servers ORDER BY name")]

    def counts(self) -> dict[str, int]:
        """How many servers, tools, graphs (names) and environments the registry holds."""
        with self._lock:
            one = lambda sql: int(self._db.execute(sql).fetchone()[0])  # noqa: E731
            return {
                "servers": one("SELECT count(*) FROM servers"),
                "tools": one("SELECT count(*) FROM tools"),
                "graphs": one("SELECT count(DISTINCT name) FROM graphs"),
                "environments": one("SELECT count(*) FROM environments"),
            }

    def delete_server(self, name: str) -> bool:
        """Remove a server and its tools; False when there was no such server."""
        with self._transaction() as db:
            return db.execute("DELETE FROM servers WHERE name = ?", (name,)).rowcount > 0

    # -- graphs

    def save_graph(self, graph: ToolGraph) -> int:
        """Store ``graph`` as a NEW version of ``graph.name`` and return that version number.

        Every edge endpoint must be one of ``graph.nodes`` and a (src, dst) pair may occur once
        (a graph loads as a ``networkx.DiGraph``); otherwise :class:`RegistryError`.
        """
        nodes = list(graph.nodes)
        if len(set(nodes)) != len(nodes):
            raise RegistryError(f"graph {graph.name!r}: duplicate nodes")
        node_set = set(nodes)
        pairs: set[tuple[str, str]] = set()
        for i, e in enumerate(graph.edges):
            for end in (e.src, e.dst):
                if end not in node_set:
                    raise RegistryError(f"graph {graph.name!r}: edges[{i}] {e.src} -> {e.dst}: {end!r} is not a node")
            if (e.src, e.dst) in pairs:
                raise RegistryError(f"graph {graph.name!r}: edges[{i}]: a second edge {e.src} -> {e.dst}")
            pairs.add((e.src, e.dst))
        with self._transaction() as db:
            row = db.execute("SELECT max(version) FROM graphs WHERE name = ?", (graph.name,)).fetchone()
            version = (row[0] or 0) + 1
            db.execute(
                "INSERT INTO graphs (name, version, nodes, meta, edge_count, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (graph.name, version, _dumps(nodes), _dumps(graph.meta), len(graph.edges), time.time()),
            )
            db.executemany(
                """INSERT INTO graph_edges (graph, version, position, src, dst, kind, bindings, score, provenance,
                                            rationale) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    (graph.name, version, i, e.src, e.dst, e.kind, _dumps(e.bindings), e.score, e.provenance,
                     e.rationale)
                    for i, e in enumerate(graph.edges)
                ],
            )
        return version

    def _graph_head(self, name: str, version: int | None) -> tuple[int, str, str]:
        """(version, nodes JSON, meta JSON) of a stored graph version; NotFoundError if absent."""
        if version is None:
            row = self._db.execute(
                "SELECT version, nodes, meta FROM graphs WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
            ).fetchone()
        else:
            row = self._db.execute(
                "SELECT version, nodes, meta FROM graphs WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        if row is None:
            known = self.graph_versions(name)
            what = f"graph {name!r}" + (f" version {version}" if version is not None else "")
            hint = f" (versions: {known})" if known else ""
            raise NotFoundError(f"no {what} in the registry{hint}")
        return row

    def load_graph(self, name: str, version: int | None = None) -> ToolGraph:
        """A stored graph (the latest version by default); :class:`NotFoundError` if absent."""
        with self._lock:
            row = self._graph_head(name, version)
            parsed: dict[str, dict[str, str]] = {}
            edges = [
                GraphEdge.model_construct(
                    src=r[0], dst=r[1], kind=r[2],
                    bindings=_parse_cached(parsed, r[3]), score=r[4], provenance=r[5], rationale=r[6],
                )
                for r in self._db.execute(
                    """SELECT src, dst, kind, bindings, score, provenance, rationale FROM graph_edges
                       WHERE graph = ? AND version = ? ORDER BY position""",
                    (name, row[0]),
                )
            ]
        return ToolGraph(name=name, version=row[0], nodes=json.loads(row[1]), edges=edges, meta=json.loads(row[2]))

    def load_networkx(self, name: str, version: int | None = None) -> nx.DiGraph[str]:
        """A stored graph straight into a ``networkx.DiGraph`` (same layout as :func:`to_networkx`).

        Skips building a GraphEdge per edge: for algorithm work on big graphs (100k edges
        load in about half the time of ``to_networkx(load_graph(...))``).
        """
        with self._lock:
            head = self._graph_head(name, version)
            g = nx.DiGraph(name=name, version=head[0], meta=json.loads(head[2]))
            g.add_nodes_from(json.loads(head[1]))
            parsed: dict[str, dict[str, str]] = {}
            g.add_edges_from(
                (r[0], r[1], {"kind": r[2],
                              "bindings": _parse_cached(parsed, r[3]),
                              "score": r[4], "provenance": r[5], "rationale": r[6], "position": r[7]})
                for r in self._db.execute(
                    """SELECT src, dst, kind, bindings, score, provenance, rationale, position FROM graph_edges
                       WHERE graph = ? AND version = ? ORDER BY position""",
                    (name, head[0]),
                )
            )
        return g

    def graph_versions(self, name: str) -> list[int]:
        with self._lock:
            return [
                r[0] for r in self._db.execute("SELECT version FROM graphs WHERE name = ? ORDER BY version", (name,))
            ]

    def list_graphs(self) -> list[GraphInfo]:
        """One entry per graph name: its latest version's size and all versions."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, version, json_array_length(nodes), edge_count, created_at FROM graphs ORDER BY name, "
                "version"
            ).fetchall()
        out: dict[str, GraphInfo] = {}
        for name, version, n_nodes, n_edges, created in rows:
            info = out.setdefault(name, GraphInfo(name=name))
            info.versions.append(version)
            info.version, info.nodes, info.edges, info.created_at = version, n_nodes, n_edges, created
        return list(out.values())

    def delete_graph(self, name: str, version: int | None = None) -> int:
        """Delete one version (or all versions) of a graph; returns how many versions went."""
        with self._transaction() as db:
            if version is None:
                db.execute("DELETE FROM graph_edges WHERE graph = ?", (name,))
                return db.execute("DELETE FROM graphs WHERE name = ?", (name,)).rowcount
            db.execute("DELETE FROM graph_edges WHERE graph = ? AND version = ?", (name, version))
            return db.execute("DELETE FROM graphs WHERE name = ? AND version = ?", (name, version)).rowcount

    # -- environments

    def save_environment(self, spec: EnvironmentSpec, location: str | os.PathLike[str] | None = None) -> bool:
        """Store (or replace) an environment spec and where it was emitted; False if unchanged."""
        body = spec.model_dump_json()
        loc = None if location is None else str(location)
        digest = hashlib.sha256(canonical_json([json.loads(body), loc]).encode("utf-8")).hexdigest()
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT content_hash FROM environments WHERE id = ?", (spec.id,)).fetchone()
            if row is not None and row[0] == digest:
                return False
            db.execute(
                """INSERT INTO environments (id, name, spec, location, content_hash, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET name=excluded.name, spec=excluded.spec,
                       location=excluded.location, content_hash=excluded.content_hash,
                       updated_at=excluded.updated_at""",
                (spec.id, spec.name, body, loc, digest, now, now),
            )
        return True

    def get_environment(self, id_or_name: str) -> tuple[EnvironmentSpec, str | None] | None:
        """An environment by id, else by name (the most recently updated one of that name)."""
        with self._lock:
            row = self._db.execute("SELECT spec, location FROM environments WHERE id = ?", (id_or_name,)).fetchone()
            if row is None:
                row = self._db.execute(
                    "SELECT spec, location FROM environments WHERE name = ? ORDER BY updated_at DESC LIMIT 1",
                    (id_or_name,),
                ).fetchone()
        if row is None:
            return None
        return EnvironmentSpec.model_validate_json(row[0]), row[1]

    def list_environments(self) -> list[tuple[EnvironmentSpec, str | None]]:
        """Every environment with its emitted location, sorted by name then id."""
        with self._lock:
            rows = self._db.execute("SELECT spec, location FROM environments ORDER BY name, id").fetchall()
        return [(EnvironmentSpec.model_validate_json(s), loc) for s, loc in rows]

    def delete_environment(self, id_or_name: str) -> bool:
        with self._transaction() as db:
            n = db.execute("DELETE FROM environments WHERE id = ?", (id_or_name,)).rowcount
            if n == 0:
                n = db.execute("DELETE FROM environments WHERE name = ?", (id_or_name,)).rowcount
            return n > 0
