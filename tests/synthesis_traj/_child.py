"""A pipeline run in its own process, for the kill -9 / resume tests.

Usage: python _child.py OUT_DIR HOME [BLOCK_KIND N]. With BLOCK_KIND ("agent" or "judge"),
the N-th new episode (agent) or N-th judge call prints READY and then hangs, so that the
parent can kill -9 the process in the middle of that stage (earlier items are on disk).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent))

from conftest import Router, router_model, time_server  # noqa: E402

from astra.synthesis.trajectories import TrajectoryConfig, run_trajectory_pipeline  # noqa: E402


class BlockingRouter(Router):
    def __init__(self, kind: str | None, n: int) -> None:
        super().__init__()
        self.block_kind, self.n, self.count = kind, n, 0

    def __call__(self, messages, tools):  # type: ignore[override]
        kind = self.kind(messages, tools)
        first_of_episode = kind != "agent" or not any(m.role == "assistant" for m in messages)
        if kind == self.block_kind and first_of_episode:
            self.count += 1
            if self.count == self.n:
                print("READY", flush=True)
                time.sleep(600)  # hold the stage open until the parent kills us
        return super().__call__(messages, tools)


def config(out_dir: str, home: str) -> TrajectoryConfig:
    return TrajectoryConfig(
        out_dir=Path(out_dir), home=Path(home), servers=["geo-locator", "weather-forecast"],
        inline_servers=[time_server()], model="scripted:router", concurrency=1,
        chains={"num_chains": 3, "num_toolsets": 3}, tasks={"augmentations": ["context_shift"], "multi_turn": True},
        rollout={"samples": 2},
    )


def main() -> None:
    out_dir, home = sys.argv[1], sys.argv[2]
    kind = sys.argv[3] if len(sys.argv) > 3 else None
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    model = router_model(BlockingRouter(kind, n))
    result = anyio.run(lambda: run_trajectory_pipeline(config(out_dir, home), progress=False,
                                                       models={"scripted:router": model}))
    print("DONE", result.exported, flush=True)


if __name__ == "__main__":
    main()
