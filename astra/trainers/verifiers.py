"""Prime Intellect ``verifiers`` 0.4 (``verifiers.v1``) over ASTRA environments.

This module imports ``verifiers`` (it runs in verifiers' own environment: verifiers 0.4 pins
``mcp==2.0.0``; scripts/setup.sh makes ``.venv-verifiers`` with astra installed ``--no-deps``).
:func:`astra.trainers.verifiers_package.write_verifiers_package` writes, per export, an
installable taskset package whose classes subclass these:

- :class:`AstraTools`: the **toolset** (a taskset-scoped ``vf.Toolset``: verifiers serves it
  once per eval as a streamable-HTTP MCP server). Its tools are the sample's exported tools
  (own + distractors, the exact names the ground truth uses); each call runs on the emitted
  environment server through an :class:`~astra.trainers.EpisodePool` (one pooled connection
  per worker) in the rollout's own episode. verifiers keeps a :class:`AstraState` per rollout
  and hands it to every call (its state channel), so the rollout key and the calls made so far
  persist across the calls of one rollout and never cross rollouts.
- :class:`AstraTask`: one sample (prompt, ground truth); its ``@vf.reward`` is the process
  reward of the calls the toolset recorded (:func:`astra.servers.score_calls`, the one
  definition), the per-step rewards go to ``trace.info["astra_step_rewards"]``.
- :class:`AstraTaskset`: the export's samples; ``--env.taskset.environment NAME`` picks one
  environment (its rows and its tool selection); empty: every sample, the union of their tools.
- :class:`AstraHarness`: verifiers' own ``null`` harness (its chat-completions tool loop over
  MCP), the package's default.

Episodes of rollouts that end are closed when more than ``EpisodePool.max_open_episodes`` are
open (least recently used first) or by the server's idle TTL: verifiers gives a taskset-scoped
server no end-of-rollout hook.
"""

from __future__ import annotations

# pyright: reportMissingTypeStubs=false, reportMissingImports=false, reportUnknownMemberType=false
# pyright: reportUnknownVariableType=false, reportUnknownArgumentType=false, reportAttributeAccessIssue=false
# pyright: reportUntypedBaseClass=false, reportPrivateUsage=false, reportUntypedFunctionDecorator=false
# (verifiers lives in its own environment, not the one pyright checks: its names are unknown there)
import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, ClassVar

import verifiers.v1 as vf
from pydantic import Field
from verifiers.v1.harnesses.null import NullHarness

from astra.servers import ToolCallRecord, score_calls
from astra.trainers._pool import EpisodeEvicted, EpisodePool, PoolLoop, Rollout, launch_from_config

__all__ = [
    "AstraHarness",
    "AstraState",
    "AstraTask",
    "AstraTaskData",
    "AstraTaskset",
    "AstraTasksetConfig",
    "AstraTools",
    "AstraToolsConfig",
]


class AstraState(vf.State):
    """What verifiers keeps per rollout for the toolset: the rollout's key in the toolset
    process and the calls made so far (what the reward scores)."""

    rollout: str | None = None
    calls: list[dict[str, Any]] = Field(default_factory=list)
    failure: str | None = None
    """Why this rollout's environment state was lost (its episode evicted): it is never scored."""


class AstraToolsConfig(vf.SharedToolsetConfig):
    environment: str = ""
    """Offer only this environment's tools (its own and its distractors); empty: every sample's."""


class AstraTools(vf.Toolset[AstraToolsConfig, AstraState]):
    """The export's tools over the emitted environment servers (see the module docstring).
    Generated subclasses set ``SERVERS`` (launch configs), ``ROUTES`` (exported tool name ->
    ``(server, tool)``), ``SELECTION`` (environment -> its tool names) and one typed async
    method per tool that returns ``await self._call(name, arguments)``."""

    TOOL_PREFIX: ClassVar[str | None] = None  # the exported names, as the ground truth names them
    SERVERS: ClassVar[dict[str, Any]] = {}
    ROUTES: ClassVar[dict[str, tuple[str, str]]] = {}
    SELECTION: ClassVar[dict[str, list[str]]] = {}
    CALL_TIMEOUT_S: ClassVar[float] = 60.0

    def __init__(self, config: AstraToolsConfig) -> None:
        super().__init__(config)
        self._pool: EpisodePool | None = None
        self._rollouts: OrderedDict[str, Rollout] = OrderedDict()
        self._lock = threading.Lock()

    def tool_names(self) -> list[str]:
        """The tools this toolset offers (see :class:`AstraToolsConfig`)."""
        env = self.config.environment
        if env and env not in self.SELECTION:
            raise vf.ToolsetError(f"no environment {env!r} in this export; environments: {sorted(self.SELECTION)}")
        names = self.SELECTION[env] if env else [n for names in self.SELECTION.values() for n in names]
        return list(dict.fromkeys(names))

    def register(self, mcp: Any) -> None:
        for name in self.tool_names():
            fn = getattr(self, name)
            mcp.add_tool(self._with_state(fn), name=name, description=(fn.__doc__ or "").strip() or None)

    def pool(self) -> EpisodePool:
        with self._lock:
            if self._pool is None:
                self._pool = EpisodePool(
                    [(n, launch_from_config(launch)) for n, launch in sorted(self.SERVERS.items())],
                    call_timeout_s=self.CALL_TIMEOUT_S,
                    loop=PoolLoop.CALLER,  # the toolset server's loop: no thread hop per call
                )
            return self._pool

    def _rollout(self, state: AstraState) -> Rollout:
        """This rollout's trajectory: found by the key in its state, or started on its first call."""
        if state.rollout is not None:
            rollout = self._rollouts.get(state.rollout)
            if rollout is None:  # evicted or this server restarted: never a silent fresh state
                raise EpisodeEvicted("this rollout's episodes were closed (more rollouts open than the pool holds)")
            self._rollouts.move_to_end(state.rollout)
            return rollout
        pool = self.pool()
        key = secrets.token_urlsafe(16)
        rollout = self._rollouts[key] = pool.rollout()
        state.rollout = key
        while len(self._rollouts) > pool.max_open_episodes:
            _, oldest = self._rollouts.popitem(last=False)
            oldest.close_soon()
        return rollout

    async def _call(self, name: str, arguments: dict[str, Any]) -> str:  # a dict: 'name'/'self' may be parameters
        """Call ``name`` in this rollout's episode; the recorded calls go back into the state.
        A failed call is answered as text (an exception would skip verifiers' state write, and
        the reward counts failed calls)."""
        state = self.state
        server, tool = self.ROUTES[name]
        try:
            rollout = self._rollout(state)
            outcome = await rollout.call(server, tool, {k: v for k, v in arguments.items() if v is not None}, name)
        except EpisodeEvicted as exc:  # kept in the state (an exception would not be): the reward refuses it
            state.failure = str(exc)
            return f"error: {exc}"
        state.calls = rollout.recorded_calls()
        return outcome.text


class AstraTaskData(vf.TaskData):
    environment: str
    ground_truth: str
    """The tool sub-questions as JSON (``{id, sub_question, sub_answer, tool}``, exported names)."""


class AstraTask(vf.Task[AstraTaskData, AstraState]):
    """One RL sample: its reward is the process reward of the calls the toolset recorded."""

    @vf.reward(weight=1.0)
    async def process_reward(self, trace: Any) -> float:
        state = trace.state
        if getattr(state, "failure", None):  # an infrastructure failure, never a score
            raise EpisodeEvicted(f"this rollout cannot be scored: {state.failure}")
        calls = [ToolCallRecord.model_validate(c) for c in getattr(state, "calls", None) or []]
        score = score_calls(calls, self.data.ground_truth)
        trace.info["astra_step_rewards"] = score.step_rewards
        trace.info["astra_solved"] = score.solved_ids
        return score.reward

    @vf.metric
    async def tool_calls(self, trace: Any) -> float:
        return float(len(getattr(trace.state, "calls", None) or []))


class AstraTasksetConfig(vf.TasksetConfig):
    environment: str = ""
    """Load only this environment's samples (and offer only its tools); empty: all of them."""
    tools: AstraToolsConfig = AstraToolsConfig()


class AstraTaskset(vf.Taskset[AstraTask, AstraTasksetConfig]):
    """The export's samples. Generated subclasses set ``SAMPLES`` and ``TOOLS`` (their
    :class:`AstraTools` subclass)."""

    SAMPLES: ClassVar[list[dict[str, Any]]] = []
    TOOLS: ClassVar[type[AstraTools]] = AstraTools

    def load(self) -> Iterable[AstraTask]:
        env = self.config.environment
        for sample in self.SAMPLES:
            if env and sample["environment"] != env:
                continue
            messages = sample["prompt"]
            system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
            user = "\n\n".join(m["content"] for m in messages if m["role"] == "user")
            yield AstraTask(
                AstraTaskData(
                    id=sample["id"],
                    name=sample["environment"],
                    prompt=user,
                    system_prompt=system,
                    environment=sample["environment"],
                    ground_truth=json.dumps(sample["ground_truth"], ensure_ascii=False),
                ),
                self.config.task,
            )

    @classmethod
    def toolsets(cls, config: AstraTasksetConfig) -> list[vf.Toolset]:
        tools = config.tools
        if config.environment and not tools.environment:
            tools = tools.model_copy(update={"environment": config.environment})
        return [cls.TOOLS(tools)]


class AstraHarness(NullHarness):
    """verifiers' ``null`` harness (a chat-completions tool loop over the toolset's MCP server)."""

