"""`astra rollout` whose run blocks in a resumable stage, for the SIGTERM test.

Usage: python sigterm_child.py RUN_DIR TASKS_FILE. Two items finish, the third waits (on the
event loop, as a slow model or tool does); READY is printed once the two are on disk."""

from __future__ import annotations

import sys

import anyio
from pydantic import BaseModel

import astra.client
from astra.cli import main
from astra.runs import RunDir
from astra.synthesis._stage import Outcome, Stage


class Item(BaseModel):
    id: str


def blocking_rollouts(tasks, model, out, **kwargs):  # the signature of astra.client.run_rollouts
    async def run() -> None:
        stage = Stage(RunDir(out), "trajectories", Item)

        async def fn(item: str) -> Outcome:
            if item == "c":
                print("READY", flush=True)
                await anyio.sleep(600)
            return Outcome.keep(Item(id=item))

        await stage.run_items([(i, i) for i in "abc"], fn, concurrency=1, progress=False)

    anyio.run(run)


astra.client.run_rollouts = blocking_rollouts
sys.argv = ["astra", "rollout", "--tasks", sys.argv[2], "--model", "scripted:echo", "--out", sys.argv[1]]
main()
