"""BFCL v3 multi-turn gold replay over MCP: all 800 entries, agreement with the direct checker, time.

Baseline (same process): BFCL's ``multi_turn_checker`` fed the ground truth directly, as
BFCL's own evaluation would score a perfect model. Measured: ``scripted:gold`` replaying
that ground truth through our MCP servers and the episode loop, then scored by the same
checker, plus the MCP-vs-direct state comparison on every entry. The replay must agree
with the baseline on every entry (the proof that the MCP wrapping is faithful).

    python benchmarks/bfcl_gold.py [--category all|base|...] [--limit N] [--concurrency N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import anyio

from astra.bfcl import (
    CATEGORIES,
    GOLD_MODEL,
    ground_truth_as_decoded,
    load_entries,
    run_bfcl,
    score_decoded,
)


class Clock:
    """Wall and CPU seconds of a block (CPU time is what to compare on a busy shared machine)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="all", choices=["all", *CATEGORIES])
    parser.add_argument("--limit", type=int, default=None, help="entries per category")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    categories = list(CATEGORIES) if args.category == "all" else [args.category]
    entries = load_entries(categories, limit=args.limit)
    print(f"{len(entries)} entries ({', '.join(categories)})")

    with Clock() as direct_clock:
        direct = {e.id: score_decoded(e, ground_truth_as_decoded(e)) for e in entries}
    direct_pass = sum(v.valid for v in direct.values())
    print(f"baseline  ground truth -> multi_turn_checker directly: {direct_pass}/{len(entries)} pass, "
          f"{direct_clock.wall:.2f} s wall, {direct_clock.cpu:.2f} s CPU")

    with tempfile.TemporaryDirectory() as run_dir, Clock() as replay_clock:
        summary = anyio.run(
            lambda: run_bfcl(GOLD_MODEL, entries, run_dir, concurrency=args.concurrency, keep_messages=False)
        )
    replay_pass = sum(int(c["passed"]) for c in summary.categories.values())
    print(f"measured  scripted:gold over MCP -> same checker (+ state check): {replay_pass}/{len(entries)} pass, "
          f"{replay_clock.wall:.2f} s wall, {replay_clock.cpu:.2f} s CPU, concurrency {args.concurrency}")
    for category, score in summary.categories.items():
        print(f"  {category:13s} {int(score['passed'])}/{int(score['total'])}")
    print(f"ratio     replay/baseline: {replay_clock.wall / max(direct_clock.wall, 1e-9):.2f}x wall, "
          f"{replay_clock.cpu / max(direct_clock.cpu, 1e-9):.2f}x CPU; "
          f"{1000 * replay_clock.wall / max(len(entries), 1):.1f} ms wall per entry")

    agree = len(entries) - len(summary.gold_disagreements)
    print(f"agreement replay vs direct: {agree}/{len(entries)}")
    for d in summary.gold_disagreements:
        print(f"  DIFFERS {d['id']}: replay valid={d['replay_valid']} direct valid={d['ground_truth_valid']}: "
              f"{d['reason']}: {d['message']}")
    print(f"MCP state == BFCL direct execution: {len(entries) - len(summary.mcp_unfaithful)}/{len(entries)}")
    for entry_id in summary.mcp_unfaithful:
        print(f"  UNFAITHFUL {entry_id}")
    return 0 if agree == len(entries) and not summary.mcp_unfaithful else 1


if __name__ == "__main__":
    sys.exit(main())
