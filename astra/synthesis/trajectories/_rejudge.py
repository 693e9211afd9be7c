"""Offline re-judging: new reward scores for a finished run's trajectories, with no policy call.

The rollouts are read from ``<run>/rollout.jsonl`` and their tasks from ``<run>/quality.jsonl``;
nothing is rolled out again (no policy model is ever built here). Scores go to a stage of their
own, versioned by judge and prompt version — ``<run>/reward.<judge>.<version>.jsonl`` — beside the
run's original ``reward.jsonl``, which is left untouched. Resumable like every stage.
"""

from __future__ import annotations

import re
from pathlib import Path
from statistics import fmean
from typing import Any

from pydantic import BaseModel, Field

from astra.client import Model
from astra.errors import UserError
from astra.records import Reward, Task, Trajectory
from astra.runs import RunDir
from astra.synthesis._stage import Outcome, Stage, StageCounts
from astra.synthesis.trajectories._config import JudgeMode
from astra.synthesis.trajectories._reward import (
    DIMENSIONS,
    JUDGE_VERSION,
    RULES_VERSION,
    original_keys,
    score_trajectory,
)


class RejudgeError(UserError, RuntimeError):
    """A run directory that cannot be re-judged (no rollouts, no tasks)."""


class RejudgeResult(BaseModel):
    run_dir: str
    stage: str = Field(description="the versioned reward stage the new scores went to")
    judge: str
    judge_version: str
    counts: StageCounts
    policy_calls: int = Field(default=0, description="always 0: re-judging never builds a policy model")
    judge_calls_per_sample: float
    before: dict[str, float | None] = Field(default_factory=dict, description="mean per key, the run's reward.jsonl")
    after: dict[str, float | None] = Field(default_factory=dict, description="mean per key, the new scores")

    def summary(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def rejudge_stage_name(judge_name: str, mode: JudgeMode) -> str:
    if mode is JudgeMode.RULES:
        return f"reward.rules.{RULES_VERSION}"
    return f"reward.{re.sub(r'[^A-Za-z0-9._-]+', '_', judge_name)}.{JUDGE_VERSION}"


def _means(rewards: list[Reward]) -> dict[str, float | None]:
    rows = [original_keys(r) for r in rewards if r.status == "ok"]
    out: dict[str, float | None] = {}
    for key in (*DIMENSIONS, "overall_score"):
        values = [v for row in rows if (v := row.get(key)) is not None]
        out[key] = round(fmean(values), 4) if values else None
    return out


async def rejudge_run(
    run_dir: str | Path, judge: Model | None, *, mode: JudgeMode = JudgeMode.LLM, concurrency: int = 4,
    progress: bool = True,
) -> RejudgeResult:
    """Score every stored trajectory of ``run_dir`` again with ``judge`` (or rules)."""
    path = Path(run_dir)
    if not (path / "manifest.json").is_file():
        raise RejudgeError(f"{path}: not a run directory (no manifest.json)")
    if not (path / "rollout.jsonl").is_file():
        raise RejudgeError(f"{path}: no rollouts to re-judge (no rollout.jsonl); run `astra traj rollout` first")
    if mode is JudgeMode.LLM and judge is None:
        raise RejudgeError("a judge model is needed (or judge mode 'rules')")
    run = RunDir(path)
    tasks = {t.id: t for t in Stage(run, "quality", Task).outputs()}
    trajs: list[Trajectory] = Stage(run, "rollout", Trajectory).outputs()
    if trajs and not tasks:
        raise RejudgeError(f"{path}: no tasks (quality.jsonl) for the stored rollouts")
    judge_name = judge.name if (judge is not None and mode is JudgeMode.LLM) else "rules"
    name = rejudge_stage_name(judge_name, mode)

    async def score(traj: Trajectory) -> Outcome:
        task = tasks.get(traj.task_id)
        if task is None:
            return Outcome.drop(f"task_missing: {traj.task_id}", failed=True)
        return await score_trajectory(task, traj, judge if mode is JudgeMode.LLM else None, mode)

    stage = Stage(run, name, Reward)
    counts = await stage.run_items([(t.id, t) for t in trajs], score, concurrency=concurrency, progress=progress,
                                   description=f"rejudge: {judge_name}")
    old = Stage(run, "reward", Reward).outputs() if (path / "reward.jsonl").is_file() else []
    version = RULES_VERSION if mode is JudgeMode.RULES else JUDGE_VERSION
    run.mark(name, "done", judge=judge_name, judge_version=version, policy_calls=0,
             **counts.model_dump(exclude={"stage"}))
    return RejudgeResult(run_dir=str(path), stage=name, judge=judge_name, judge_version=version, counts=counts,
                         judge_calls_per_sample=counts.calls_per_item, before=_means(old),
                         after=_means(stage.outputs()))
