"""The SQLite store: servers and tools, environments, migrations, atomicity."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from astra.records import EnvironmentSpec, ServerSpec, StdioLaunch, ToolImplementation, ToolSpec
from astra.registry import Registry, RegistryError
from astra.registry._store import MIGRATIONS, SCHEMA_VERSION


def server(name: str, n_tools: int = 2, domain: str | None = "d", **kw) -> ServerSpec:
    return ServerSpec(
        id=f"id-{name}", name=name, domain=domain, description=f"{name}!",
        tools=[ToolSpec(server=name, name=f"t{i}", description=f"tool {i}",
                        input_schema={"type": "object", "properties": {"x": {"type": "integer"}}},
                        output_schema={"type": "object", "properties": {"y": {"type": "string"}}},
                        annotations={"read_only_hint": True}) for i in range(n_tools)],
        **kw,
    )


def test_upsert_get_list_delete(registry: Registry) -> None:
    a = server("a", launch=StdioLaunch(command="srv", args=["--x"], env={"K": "V"}))
    assert registry.upsert_server(a) is True
    assert registry.upsert_server(a) is False  # unchanged content: nothing written
    registry.upsert_server(server("b", 3, domain="other"))
    got = registry.get_server("a")
    assert got.model_dump(exclude={"content_hash"}) == a.model_dump(exclude={"content_hash"})
    assert got.content_hash and len(got.content_hash) == 64
    assert [s.name for s in registry.list_servers()] == ["a", "b"]
    assert [s.name for s in registry.list_servers(domain="other")] == ["b"]
    assert len(registry.list_servers(domain="other")[0].tools) == 3
    assert [t.qualified_name for t in registry.list_tools()] == ["a/t0", "a/t1", "b/t0", "b/t1", "b/t2"]
    assert [t.name for t in registry.list_tools("b")] == ["t0", "t1", "t2"]
    assert registry.get_server("zzz") is None
    assert registry.delete_server("a") is True and registry.delete_server("a") is False
    assert registry.counts() == {"servers": 1, "tools": 3, "graphs": 0, "environments": 0}


def test_update_replaces_tools(registry: Registry) -> None:
    registry.upsert_server(server("a", 3))
    assert registry.upsert_server(server("a", 1)) is True
    assert [t.name for t in registry.list_tools("a")] == ["t0"]


def test_bad_record_writes_nothing(registry: Registry) -> None:
    registry.upsert_server(server("a", 2))
    bad = server("a", 2)
    bad.tools.append(bad.tools[0])
    with pytest.raises(RegistryError, match="duplicate tool names"):
        registry.upsert_server(bad)
    wrong_owner = server("c", 0)
    wrong_owner.tools.append(ToolSpec(server="other", name="t"))
    with pytest.raises(RegistryError, match="belongs to"):
        registry.upsert_server(wrong_owner)
    assert [t.name for t in registry.list_tools("a")] == ["t0", "t1"]
    assert registry.get_server("c") is None


def test_failure_inside_the_transaction_rolls_back(registry: Registry) -> None:
    registry.upsert_server(server("a", 2))
    # make the database refuse one tool row: the failure comes after the old tools were deleted
    conn = sqlite3.connect(registry.path)
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON tools WHEN NEW.name = 't2' "
                 "BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    conn.commit()
    conn.close()
    with pytest.raises(sqlite3.IntegrityError, match="disk says no"):
        registry.upsert_server(server("a", 3))
    assert [t.name for t in registry.list_tools("a")] == ["t0", "t1"]
    assert registry.upsert_server(server("a", 2)) is False  # still the old content


def test_wal_and_reopen(tmp_path: Path) -> None:
    db = tmp_path / "astra.db"
    with Registry(db) as reg:
        reg.upsert_server(server("a"))
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Registry(db) as reg:
        assert reg.get_server("a") is not None
        assert reg.schema_version == SCHEMA_VERSION


def test_open_uses_astra_home(tmp_path: Path) -> None:
    with Registry.open(tmp_path / "home") as reg:
        reg.upsert_server(server("a"))
    assert (tmp_path / "home" / "astra.db").exists()


def test_migrates_an_old_database(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    MIGRATIONS[0](conn)  # a version-1 database: servers and tools only
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO servers (name, id, title, description, domain, launch, source, content_hash, created_at, "
        "updated_at)"
        " VALUES ('old', 'id-old', 'Old', 'from v1', 'legacy', '{\"kind\": \"simulated\"}', NULL, 'h', 0, 0)"
    )
    conn.execute(
        "INSERT INTO tools VALUES ('old', 'ping', 0, NULL, 'ping it', '{\"type\": \"object\", \"properties\": {}}', "
        "NULL, '{}')"
    )
    conn.close()
    with Registry(db) as reg:
        assert reg.schema_version == SCHEMA_VERSION
        old = reg.get_server("old")
        assert old.description == "from v1" and [t.name for t in old.tools] == ["ping"]
        assert reg.get_server_raw("old") is None
        # the tables of later versions work
        from astra.records import ToolGraph

        assert reg.save_graph(ToolGraph(name="g", nodes=["old/ping"])) == 1
        reg.save_environment(EnvironmentSpec(id="e1", name="env"))
        assert reg.counts() == {"servers": 1, "tools": 1, "graphs": 1, "environments": 1}


def test_newer_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RegistryError, match="newer"):
        Registry(db)


def test_environments(registry: Registry) -> None:
    tool = ToolImplementation(spec=ToolSpec(server="env-shop", name="buy"), source="def buy():\n    return 1\n")
    spec = EnvironmentSpec(id="env-1", name="shop", description="a shop", tools=[tool], initial_state={"stock": 3})
    assert registry.save_environment(spec, "/tmp/envs/shop") is True
    assert registry.save_environment(spec, "/tmp/envs/shop") is False
    assert registry.get_environment("env-1") == (spec, "/tmp/envs/shop")
    assert registry.get_environment("shop") == (spec, "/tmp/envs/shop")
    assert registry.get_environment("nope") is None
    moved = spec.model_copy(update={"description": "moved"})
    assert registry.save_environment(moved) is True
    assert registry.list_environments() == [(moved, None)]
    assert registry.delete_environment("shop") is True
    assert registry.list_environments() == []


def test_threads_share_one_registry(registry: Registry) -> None:
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(20):
                registry.upsert_server(server(f"s{k}-{i}", 3))
                registry.list_tools(f"s{k}-{i}")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert registry.counts()["servers"] == 80 and registry.counts()["tools"] == 240
