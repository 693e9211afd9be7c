"""Graph build at ASTRA scale: typed candidate generation on the synthetic 19,036-tool corpus.

Target (issue 6, kept by issue 17; this 2-core machine): candidate generation <= 60 s, across
all servers (not per declared domain). Reported alongside:
- the LLM verification calls it would make (candidates in batches of ``--batch``) against one
  call per ordered server pair, the baseline of asking an LLM about every server pair;
- how the work grows: pairs scored against the ordered tool pairs an all-pairs matcher would
  score, and a naive all-pairs matcher over the same typed profiles, timed on a sample of
  tools in this process and extrapolated to the corpus.

    python benchmarks/traj_graph_build.py [--servers N] [--tools N] [--batch N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from synthetic_corpus import generate  # noqa: E402

from astra.registry import parse_astra_record  # noqa: E402
from astra.synthesis.trajectories._graph import (  # noqa: E402
    batch_candidates,
    generate_candidates,
    profile_servers,
    server_pair_count,
)


def naive_pairs(profiles: list, sample: int, seed: int) -> tuple[int, float, int]:
    """Compare every output key of ``sample`` source tools with every parameter key of all tools."""
    rng = random.Random(seed)
    sources = rng.sample(profiles, min(sample, len(profiles)))
    t0 = time.perf_counter()
    hits = 0
    pairs = 0
    for src in sources:
        keys = {(f.sem, f.subject) for f in (*src.outputs, *src.effects)}
        for dst in profiles:
            if dst is src:
                continue
            pairs += 1
            if any((p.sem, p.subject) in keys for p in dst.params):
                hits += 1
    return hits, time.perf_counter() - t0, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", type=int, default=1585)
    ap.add_argument("--tools", type=int, default=19036)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--naive-sample", type=int, default=200, help="source tools timed for the all-pairs baseline")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = generate(Path(tmp) / "corpus.jsonl", servers=args.servers, tools=args.tools, seed=args.seed)
        t0 = time.perf_counter()
        servers = [parse_astra_record(json.loads(line), source=f"{path}:{i + 1}")
                   for i, line in enumerate(path.read_text("utf-8").splitlines()) if line.strip()]
        parse_s = time.perf_counter() - t0
    n_tools = sum(len(s.tools) for s in servers)
    print(f"corpus: {len(servers)} servers, {n_tools} tools, {len({s.domain for s in servers})} domains "
          f"(parsed in {parse_s:.1f} s)")

    t0, c0 = time.perf_counter(), time.process_time()
    candidates, stats = generate_candidates(servers, cross_server=True)
    gen_s, gen_cpu = time.perf_counter() - t0, time.process_time() - c0
    batches = batch_candidates(candidates, args.batch)
    pairs = server_pair_count(servers, cross_server=True)
    tool_pairs = n_tools * (n_tools - 1)
    print(f"candidate generation: {gen_s:.2f} s wall, {gen_cpu:.2f} s CPU (target <= 60 s: "
          f"{'PASS' if gen_s <= 60 else 'FAIL'}); {len(candidates):,} candidates "
          f"({stats['cross_server_candidates']:,} across servers, {stats['order_candidates']:,} order); "
          f"pairs scored {stats['pairs_scored']:,}")
    print(f"LLM verification calls: {len(batches):,} (batches of {args.batch}) vs {pairs:,} with one call per "
          f"ordered server pair -> {pairs / max(1, len(batches)):.1f}x fewer; calls per tool "
          f"{len(batches) / n_tools:.2f} (grows with candidates, bounded per destination tool)")
    print(f"ordered tool pairs (what all-pairs would score): {tool_pairs:,}; scored {stats['pairs_scored']:,} "
          f"= {stats['pairs_scored'] / tool_pairs:.4%} of them")

    # baseline in this process: all-pairs over the same typed profiles, on a sample of sources
    t0 = time.perf_counter()
    profiles = profile_servers(servers)
    prof_s = time.perf_counter() - t0
    _hits, naive_s, naive_n = naive_pairs(profiles, args.naive_sample, args.seed)
    extrapolated = naive_s * tool_pairs / max(1, naive_n)
    print(f"typing every tool: {prof_s:.2f} s; naive all-pairs key matching: {naive_n:,} pairs in {naive_s:.2f} s "
          f"-> {extrapolated:.0f} s extrapolated to all {tool_pairs:,} pairs = {extrapolated / gen_s:.1f}x the "
          f"blocked generation")


if __name__ == "__main__":
    main()
