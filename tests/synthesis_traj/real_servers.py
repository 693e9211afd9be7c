"""The real MCP servers the tool-graph tests measure on: how to launch them in a scratch
directory (with a little state to read), and their captured ``tools/list`` docs.

Refresh the captured docs (after upgrading a server) with
``python -m tests.synthesis_traj.real_servers`` from the repository root.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from astra.records import ServerSpec, StdioLaunch, ToolSpec, stable_id

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "real_servers"
LABELS = FIXTURES / "dependencies.json"
NODE_BIN = REPO / ".ci" / "node" / "node_modules" / ".bin"
PY_BIN = Path(sys.executable).parent
SERVERS = ("time", "git", "everything", "memory", "filesystem")
NODE_SERVERS = frozenset({"everything", "memory", "filesystem"})
_GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin"}


def binary(name: str) -> Path:
    """The executable that serves ``name`` (it may be missing: callers skip)."""
    if name in NODE_SERVERS:
        return NODE_BIN / f"mcp-server-{name}"
    return PY_BIN / f"mcp-server-{name}"


def available(name: str) -> bool:
    return binary(name).exists() and (name not in NODE_SERVERS or shutil.which("node") is not None)


def make_scratch(root: Path) -> dict[str, Path]:
    """A scratch world to read: a git repository with two commits and a branch, a directory
    tree for the filesystem server, and a knowledge graph for the memory server."""
    root.mkdir(parents=True, exist_ok=True)
    repo, files, memory = root / "repo", root / "files", root / "memory.jsonl"
    env = {**_GIT_ENV, "HOME": str(root)}
    if not repo.exists():
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=env)
        (repo / "README.md").write_text("hello\n")
        subprocess.run(["git", "-C", str(repo), "add", "README.md"], check=True, env=env)
        subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "first"], check=True, env=env)
        (repo / "notes.txt").write_text("a note\n")
        subprocess.run(["git", "-C", str(repo), "add", "notes.txt"], check=True, env=env)
        subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "second"], check=True, env=env)
        subprocess.run(["git", "-C", str(repo), "branch", "feature"], check=True, env=env)
    (files / "docs").mkdir(parents=True, exist_ok=True)
    (files / "todo.txt").write_text("buy milk\n")
    (files / "docs" / "guide.md").write_text("# Guide\n")
    memory.write_text("\n".join(json.dumps(r) for r in (
        {"type": "entity", "name": "Ada", "entityType": "person", "observations": ["writes programs"]},
        {"type": "entity", "name": "Analytical Engine", "entityType": "machine", "observations": ["never built"]},
        {"type": "relation", "from": "Ada", "to": "Analytical Engine", "relationType": "programs"},
    )) + "\n")
    return {"root": root, "repo": repo, "files": files, "memory": memory}


def seeds(scratch: dict[str, Path]) -> dict[str, str]:
    """Argument values a user would give to start tracing the scratch world (by parameter name)."""
    return {"repo_path": str(scratch["repo"]), "path": str(scratch["files"]), "timezone": "UTC",
            "branch_type": "local", "pattern": "**/*.md", "query": "Ada"}


def launch(name: str, scratch: dict[str, Path]) -> StdioLaunch:
    """How to start server ``name`` on the scratch world (working directory: the scratch root)."""
    cwd = str(scratch["root"])
    path = {"PATH": "/usr/bin:/bin"}
    if name == "time":
        return StdioLaunch(command=str(binary(name)), args=["--local-timezone", "UTC"], cwd=cwd)
    if name == "git":
        return StdioLaunch(command=str(binary(name)), args=["--repository", str(scratch["repo"])], cwd=cwd)
    if name == "memory":
        return StdioLaunch(command=str(binary(name)), env={**path, "MEMORY_FILE_PATH": str(scratch["memory"])}, cwd=cwd)
    if name == "filesystem":
        return StdioLaunch(command=str(binary(name)), args=[str(scratch["files"])], env=path, cwd=cwd)
    if name == "everything":
        return StdioLaunch(command=str(binary(name)), args=["stdio"], env=path, cwd=cwd)
    raise ValueError(f"unknown server {name!r}")


def load_fixture(name: str) -> ServerSpec:
    """The captured docs of server ``name`` as a ServerSpec (no live server needed)."""
    doc = json.loads((FIXTURES / f"{name}.json").read_text("utf-8"))
    tools = [ToolSpec.model_validate({**t, "server": name}) for t in doc["tools"]]
    return ServerSpec(id=stable_id("real-server", name), name=name, description=doc.get("description", ""),
                      tools=tools, source=doc.get("package"))


def load_fixtures(names: tuple[str, ...] = SERVERS) -> list[ServerSpec]:
    return [load_fixture(n) for n in names]


HELDOUT = FIXTURES / "heldout"
HELDOUT_LABELS = HELDOUT / "dependencies.json"
HELDOUT_SERVERS = ("github", "google-maps")


BLIND = FIXTURES / "blind"
BLIND_LABELS = BLIND / "dependencies.json"


def _docs_only(folder: Path, names: tuple[str, ...]) -> list[ServerSpec]:
    out = []
    for name in names:
        doc = json.loads((folder / f"{name}.json").read_text("utf-8"))
        tools = [ToolSpec.model_validate({**t, "server": name}) for t in doc["tools"]]
        out.append(ServerSpec(id=stable_id("real-server", name), name=name, tools=tools, source=doc.get("package")))
    return out


def load_heldout() -> list[ServerSpec]:
    """Docs of two servers (npm server-github 2025.4.8, server-google-maps 0.6.2; no annotations, no output
    schemas) kept apart from the servers the typing rules were written on: docs only, never launched.
    Labelled blind, then the rules were improved on its errors."""
    return _docs_only(HELDOUT, HELDOUT_SERVERS)


def load_blind() -> list[ServerSpec]:
    """Docs of npm server-slack 2025.4.25: labelled blind and measured once; the rules were not changed after."""
    return _docs_only(BLIND, ("slack",))


def docs_of(tools: list[ToolSpec]) -> list[dict]:
    """The part of tools/list the fixtures keep (what the graph reads)."""
    return [t.model_dump(mode="json", exclude={"server"}) for t in tools]


def capture(root: Path) -> None:
    from astra.registry import discover_tools_sync

    scratch = make_scratch(root)
    for name in SERVERS:
        result = discover_tools_sync(launch(name, scratch), name=name, timeout_s=60)
        path = FIXTURES / f"{name}.json"
        old = json.loads(path.read_text("utf-8")) if path.exists() else {}
        doc = {"server": name, "package": old.get("package", result.server_name),
               "version": result.server_version, "description": old.get("description", ""),
               "tools": docs_of(result.tools)}
        path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{path}: {len(result.tools)} tools")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        capture(Path(tmp))
