"""BFCL v3 multi-turn gold replay over MCP: all 800 entries, agreement with the direct checker, time.

Baseline (same process): BFCL's ``multi_turn_checker`` fed the ground truth directly, as
BFCL's own evaluation would score a perfect model. Measured: ``scripted:gold`` replaying
that ground truth through our MCP servers and the episode loop, then scored by the same
checker, plus the MCP-vs-direct state comparison on every entry, once per MCP server
implementation (``astra``: astra.servers.build_class_server; ``bfcl``: BFCL-exact results).
The replay must agree with the baseline on every entry (the proof that the MCP wrapping is
faithful); entries where the servers' state diverges from BFCL's direct execution are listed.

    python benchmarks/bfcl_gold.py [--category all|base|...] [--limit N] [--concurrency N] [--servers astra,bfcl]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import anyio

from astra.bfcl import (
    CATEGORIES,
    GOLD_MODEL,
    ground_truth_as_decoded,
    load_entries,
    run_bfcl,
    score_decoded,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from registry_bench import Clock  # noqa: E402 - wall and CPU seconds of a block, shared by the benchmarks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="all", choices=["all", *CATEGORIES])
    parser.add_argument("--limit", type=int, default=None, help="entries per category")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--servers", default="astra,bfcl", help="comma-separated server implementations to measure")
    args = parser.parse_args()
    categories = list(CATEGORIES) if args.category == "all" else [args.category]
    entries = load_entries(categories, limit=args.limit)
    print(f"{len(entries)} entries ({', '.join(categories)})")

    with Clock() as direct_clock:
        direct = {e.id: score_decoded(e, ground_truth_as_decoded(e)) for e in entries}
    direct_pass = sum(v.valid for v in direct.values())
    print(f"baseline  ground truth -> multi_turn_checker directly: {direct_pass}/{len(entries)} pass, "
          f"{direct_clock.wall:.2f} s wall, {direct_clock.cpu:.2f} s CPU")

    failed = False
    for servers in args.servers.split(","):
        failed |= not replay(entries, servers, args.concurrency, direct_clock)
    return 1 if failed else 0


def replay(entries: list, servers: str, concurrency: int, direct_clock: Clock) -> bool:
    with tempfile.TemporaryDirectory() as run_dir, Clock() as replay_clock:
        summary = anyio.run(
            lambda: run_bfcl(
                GOLD_MODEL, entries, run_dir, concurrency=concurrency, keep_messages=False, servers=servers
            )
        )
    replay_pass = sum(int(c["passed"]) for c in summary.categories.values())
    print(f"measured  scripted:gold over MCP ({servers} servers) -> same checker (+ state check): "
          f"{replay_pass}/{len(entries)} pass, {replay_clock.wall:.2f} s wall, {replay_clock.cpu:.2f} s CPU, "
          f"concurrency {concurrency}")
    for category, score in summary.categories.items():
        print(f"  {category:13s} {int(score['passed'])}/{int(score['total'])}")
    print(f"  ratio replay/baseline: {replay_clock.wall / max(direct_clock.wall, 1e-9):.2f}x wall, "
          f"{replay_clock.cpu / max(direct_clock.cpu, 1e-9):.2f}x CPU; "
          f"{1000 * replay_clock.wall / max(len(entries), 1):.1f} ms wall per entry")
    agree = len(entries) - len(summary.gold_disagreements)
    print(f"  verdict agreement replay vs direct: {agree}/{len(entries)}")
    for d in summary.gold_disagreements:
        print(f"    DIFFERS {d['id']}: replay valid={d['replay_valid']} direct valid={d['ground_truth_valid']}: "
              f"{d['reason']}: {d['message']}")
    print(f"  MCP server state == BFCL direct execution: {len(entries) - len(summary.mcp_unfaithful)}/{len(entries)}")
    with_state = {r: None for r in summary.mcp_unfaithful}
    for entry_id in with_state:
        print(f"    STATE DIFFERS {entry_id}")
    return agree == len(entries)


if __name__ == "__main__":
    sys.exit(main())
