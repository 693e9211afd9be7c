"""Graph build at ASTRA scale: schema candidate generation on the synthetic 19,036-tool corpus.

Target (issue 6, this 2-core machine): candidate generation <= 60 s. Reported alongside:
- the LLM verification calls it would make (candidates in batches of ``--batch``) against one
  call per (same-domain) server pair, the baseline of asking an LLM about every server pair;
- a naive all-pairs scorer (every tool pair in a domain, token overlap of outputs vs
  parameters) timed on one domain in this process and extrapolated to all domains, against
  the inverted index on that same domain.

    python benchmarks/traj_graph_build.py [--servers N] [--tools N] [--batch N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from synthetic_corpus import generate  # noqa: E402

from astra.registry import parse_astra_record  # noqa: E402
from astra.synthesis.trajectories import batch_candidates, generate_candidates, server_pair_count  # noqa: E402
from astra.synthesis.trajectories._graph import input_params, output_fields  # noqa: E402


def naive_pairs(tools: list) -> tuple[int, float]:
    """Score every ordered tool pair (token overlap of A's outputs with B's parameters)."""
    outs = [set().union(*(set(f.name_tokens) | set(f.desc_tokens) for f in output_fields(t))) for t in tools]
    ins = [set().union(set(), *(set(p.name_tokens) | set(p.desc_tokens) for p, _ in input_params(t))) for t in tools]
    t0 = time.perf_counter()
    hits = 0
    for i, o in enumerate(outs):
        for j, p in enumerate(ins):
            if i != j and p and len(o & p) / len(p) >= 0.35:
                hits += 1
    return hits, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", type=int, default=1585)
    ap.add_argument("--tools", type=int, default=19036)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
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
    by_domain: dict[str, list] = defaultdict(list)
    for s in servers:
        by_domain[s.domain or s.name].extend(t.model_copy(update={"server": s.name}) for t in s.tools)
    tool_pairs = sum(len(v) * (len(v) - 1) for v in by_domain.values())
    print(f"candidate generation: {gen_s:.2f} s wall, {gen_cpu:.2f} s CPU (target <= 60 s: "
          f"{'PASS' if gen_s <= 60 else 'FAIL'}); {len(candidates)} candidates; postings visited "
          f"{stats['postings_visited']:,}; pairs scored {stats['pairs_scored']:,}")
    print(f"LLM verification calls: {len(batches):,} (batches of {args.batch}) vs {pairs:,} with one call per "
          f"same-domain server pair -> {pairs / max(1, len(batches)):.1f}x fewer")
    print(f"same-domain tool pairs (what all-pairs would score): {tool_pairs:,}; candidates are "
          f"{len(candidates) / max(1, tool_pairs):.4%} of them")

    # baseline in this process: all-pairs scoring on the largest domain, extrapolated by pair count
    domain, tools = max(by_domain.items(), key=lambda kv: len(kv[1]))
    one = [s for s in servers if (s.domain or s.name) == domain]
    t0 = time.perf_counter()
    generate_candidates(one, cross_server=True)
    idx_s = time.perf_counter() - t0
    _hits, naive_s = naive_pairs(tools)
    domain_pairs = len(tools) * (len(tools) - 1)
    print(f"domain {domain!r} ({len(tools)} tools, {domain_pairs:,} pairs): inverted index {idx_s:.2f} s, "
          f"naive all-pairs {naive_s:.2f} s -> {naive_s / max(idx_s, 1e-9):.1f}x; naive extrapolated to all domains "
          f"{naive_s * tool_pairs / domain_pairs:.0f} s")


if __name__ == "__main__":
    main()
