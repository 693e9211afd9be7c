"""Registry at ASTRA scale: import 1,585 servers / 19,036 tools, then load every tool and a 100k-edge graph.

Targets (issue 3, this 2-core machine): import <= 20 s; loading the whole tool set plus a
100k-edge graph <= 5 s; peak RSS <= 1 GiB. Baselines measured in the same process: parsing
the corpus with ``json.loads`` alone (the floor of any import), and fetching the raw rows
with sqlite3 (the floor of any load). The corpus is generated in a child process so that
its memory does not count in this one's peak RSS.

    python benchmarks/registry_bench.py [--servers N] [--tools N] [--edges N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import networkx as nx

from astra.registry import Registry, import_file, to_networkx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from synthetic_corpus import synthetic_graph  # noqa: E402


class Clock:
    """Wall and CPU seconds of a block (CPU time is what to compare on a busy shared machine)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:.2f} s wall, {self.cpu:.2f} s CPU"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1585)
    parser.add_argument("--tools", type=int, default=19036)
    parser.add_argument("--edges", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work here and keep the files (default: a temp dir)")
    args = parser.parse_args()

    load_avg = os.getloadavg()[0]
    work = args.keep or Path(tempfile.mkdtemp(prefix="astra-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus, db = work / "mcp_servers.jsonl", work / "astra.db"
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        p.unlink(missing_ok=True)

    t = time.perf_counter()
    subprocess.run([sys.executable, str(HERE / "synthetic_corpus.py"), str(corpus), "--servers", str(args.servers),
                    "--tools", str(args.tools), "--seed", str(args.seed)], check=True)
    gen_s = time.perf_counter() - t

    # baseline: the JSON parsing every import has to do anyway
    with Clock() as parse_s, corpus.open("rb") as fh:
        n_lines = sum(1 for line in fh if json.loads(line))

    with Registry(db) as reg:
        with Clock() as import_s:
            report = import_file(reg, corpus)
        assert report.rejected == 0, report.errors[:5]
        assert report.imported == n_lines == args.servers
        with Clock() as reimport_s:
            again = import_file(reg, corpus)
        assert again.unchanged == args.servers

        names = [tl.qualified_name for tl in reg.list_tools()]
        graph = synthetic_graph(names, edges=args.edges, seed=args.seed, name="bench")
        with Clock() as save_graph_s:
            version = reg.save_graph(graph)
        del graph

    # loading, from a freshly opened registry
    with Registry(db) as reg:
        with Clock() as tools_s:
            tools = reg.list_tools()
        with Clock() as graph_s:
            loaded = reg.load_graph("bench", version)
        with Clock() as nx_s:
            g = to_networkx(loaded)
        del loaded, g
        with Clock() as direct_s:
            g = reg.load_networkx("bench", version)
    assert len(tools) == args.tools and g.number_of_edges() == args.edges
    assert nx.number_of_nodes(g) == args.tools

    # baseline: raw rows, no records built
    conn = sqlite3.connect(db)
    with Clock() as raw_s:
        conn.execute("SELECT * FROM tools").fetchall()
        conn.execute("SELECT * FROM graph_edges WHERE graph = 'bench'").fetchall()
    conn.close()

    load_wall = tools_s.wall + graph_s.wall + nx_s.wall
    load_cpu = tools_s.cpu + graph_s.cpu + nx_s.cpu
    fast_wall, fast_cpu = tools_s.wall + direct_s.wall, tools_s.cpu + direct_s.cpu
    rss = peak_rss_mib()
    size_mb = corpus.stat().st_size / 1e6
    rows = [
        ("corpus", f"{args.servers} servers, {args.tools} tools, {size_mb:.1f} MB (generated in {gen_s:.1f} s)"),
        ("load average (1 min) at start", f"{load_avg:.1f} on {os.cpu_count()} CPUs"),
        ("baseline: json.loads of every line", str(parse_s)),
        ("import (normalise + validate + store)", f"{import_s}  = {import_s.wall / parse_s.wall:.1f}x baseline; "
                                                  f"target <= 20 s: {'OK' if import_s.wall <= 20 else 'MISSED'}"),
        ("re-import (all unchanged)", str(reimport_s)),
        ("save 100k-edge graph", f"{save_graph_s} ({args.edges} edges)"),
        ("baseline: raw sqlite fetch of tools + edges", str(raw_s)),
        ("load all tools (ToolSpec)", str(tools_s)),
        ("load graph (ToolGraph)", str(graph_s)),
        ("to_networkx", str(nx_s)),
        ("load tools + graph + to_networkx", f"{load_wall:.2f} s wall, {load_cpu:.2f} s CPU  = "
                                             f"{load_wall / raw_s.wall:.1f}x baseline"),
        ("load_networkx (rows -> DiGraph)", str(direct_s)),
        ("load tools + load_networkx", f"{fast_wall:.2f} s wall, {fast_cpu:.2f} s CPU  = "
                                       f"{fast_wall / raw_s.wall:.1f}x baseline; target <= 5 s: "
                                       f"{'OK' if fast_wall <= 5 else 'MISSED'}"
                                       f"{'' if fast_wall <= 5 or fast_cpu > 5 else ' (wall, busy machine; CPU OK)'}"),
        ("peak RSS", f"{rss:.0f} MiB; target <= 1024 MiB: {'OK' if rss <= 1024 else 'MISSED'}"),
        ("database", f"{db.stat().st_size / 1e6:.1f} MB at {db}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0 if import_s.wall <= 20 and fast_wall <= 5 and rss <= 1024 else 1


if __name__ == "__main__":
    raise SystemExit(main())
