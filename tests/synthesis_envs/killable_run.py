"""Run the pipeline on a QA file with the oracle, but block forever after N model calls (for kill -9 tests).

Usage: python killable_run.py RUN_DIR QA_PATH HOME BLOCK_AFTER
Prints 'BLOCKED <calls>' on stdout when it stops answering.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anyio  # noqa: E402

from astra.client import Model, ModelResponse  # noqa: E402
from astra.synthesis.environments import EnvironmentPipelineConfig, run_environment_pipeline  # noqa: E402
from synthesis_envs.envs_gold import oracle_model  # noqa: E402


class BlockingModel(Model):
    def __init__(self, inner: Model, block_after: int) -> None:
        self.inner, self.block_after, self.calls = inner, block_after, 0
        self.name = inner.name

    async def request(self, messages, tools=(), settings=None) -> ModelResponse:
        self.calls += 1
        if self.calls > self.block_after:
            print(f"BLOCKED {self.calls - 1}", flush=True)
            await anyio.sleep_forever()
        return await self.inner.request(messages, tools, settings)


def main() -> None:
    run_dir, qa_path, home, block_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    config = EnvironmentPipelineConfig(run_dir=run_dir, qa_path=qa_path, home=home, concurrency=1)
    anyio.run(
        lambda: run_environment_pipeline(config, model=BlockingModel(oracle_model(), block_after), progress=False)
    )
    print("FINISHED", flush=True)


if __name__ == "__main__":
    main()
