"""verl native tool over ASTRA environments: ``BaseTool`` -> episode open / tool call / process reward / close.

verl (0.9.x, no MCP tools) builds one tool object per tool name from a tool-config YAML
(:func:`astra.trainers.export.verl_tool_config` writes it) and, in its tool agent loop, runs
``create`` -> ``execute`` -> ``release`` around **every** call. So the environment's state
cannot live in the tool instance: it lives in the trajectory. The first call of a trajectory
(verl's ``AgentData``, passed to ``execute``) opens a :class:`~astra.trainers.Rollout` over the
worker's pooled connection (one per process, :class:`~astra.trainers.EpisodePool`); every
later call of that trajectory, whichever tool, reuses its episode; the episode closes when
verl drops the trajectory (a finalizer) or, at the latest, when the pool's bound of open
episodes is reached. ``execute`` returns the per-step reward (F1 gained by the call) as
verl's ``tool_reward``, and the calls go into ``AgentData.extra_fields["astra_calls"]``, which
verl hands to the reward function (``extra_info``), so ``compute_score`` scores the real calls.

``create_kwargs`` (the parquet's ``tools_kwargs``): ``ground_truth`` (the sub-questions, for
per-step rewards). Without ``agent_data`` (another loop calling ``create``/``execute``/
``release`` directly), each instance is its own trajectory, closed on ``release``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from astra.trainers._pool import (
    DEFAULT_MAX_OPEN_EPISODES,
    EpisodeEvicted,
    EpisodePool,
    PoolLoop,
    Rollout,
    launch_from_config,
)

__all__ = ["AstraTool"]

_ROLLOUTS: weakref.WeakKeyDictionary[Any, Rollout] = weakref.WeakKeyDictionary()


@dataclass
class _Instance:
    truth: Any
    own: Rollout | None = None  # set when there is no trajectory object to hang the rollout on


def _pool_for(config: dict[str, Any]) -> EpisodePool:
    servers = config["servers"]

    def make() -> EpisodePool:
        targets = [(name, launch_from_config(launch)) for name, launch in sorted(servers.items())]
        return EpisodePool(
            targets,
            call_timeout_s=float(config.get("call_timeout_s", 60.0)),
            max_open_episodes=int(config.get("max_open_episodes", DEFAULT_MAX_OPEN_EPISODES)),
            loop=PoolLoop.CALLER,  # verl's agent-loop worker loop: its calls skip the thread hop
        )

    return EpisodePool.shared(EpisodePool.key_of({"servers": servers, "timeout": config.get("call_timeout_s")}), make)


class AstraTool(BaseTool):
    """One tool of an ASTRA environment for verl (see the module docstring).

    ``config`` (from the tool-config YAML): ``type: native``, ``server`` (the environment's
    server name), ``tool`` (the tool's name on that server; the schema's name may differ in a
    multi-environment export), ``servers`` (``{name: launch}`` of every environment the export
    uses, so all tools of a worker share one pool)."""

    def __init__(self, config: dict[str, Any], tool_schema: OpenAIFunctionToolSchema) -> None:
        super().__init__(config, tool_schema)
        self.server = config["server"]
        self.server_tool = config.get("tool") or self.name
        self.pool = _pool_for(config)
        self._instances: dict[str, _Instance] = {}

    async def create(self, instance_id: str | None = None, **kwargs: Any) -> tuple[str, ToolResponse]:
        create_kwargs = kwargs.get("create_kwargs") or {}
        instance_id = instance_id or uuid4().hex
        self._instances[instance_id] = _Instance(truth=create_kwargs.get("ground_truth"))
        return instance_id, ToolResponse()

    def _rollout(self, instance: _Instance, agent_data: Any) -> Rollout:
        if agent_data is None:
            if instance.own is None:
                instance.own = self.pool.rollout(instance.truth)
            return instance.own
        rollout = _ROLLOUTS.get(agent_data)
        if rollout is None:
            rollout = _ROLLOUTS[agent_data] = self.pool.rollout(instance.truth)
            weakref.finalize(agent_data, rollout.close_soon)
        elif rollout.truth is None and instance.truth is not None:
            rollout.set_truth(instance.truth)
        return rollout

    async def execute(
        self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
    ) -> tuple[ToolResponse, float, dict[str, Any]]:
        instance = self._instances.get(instance_id)
        if instance is None:
            raise ValueError(f"unknown tool instance {instance_id!r}: call create() first")
        agent_data = kwargs.get("agent_data")
        rollout = self._rollout(instance, agent_data)
        # checked at run time: verl passes whatever the model produced
        arguments = parameters if isinstance(parameters, dict) else {}  # pyright: ignore[reportUnnecessaryIsInstance]
        try:
            outcome = await rollout.call(self.server, self.server_tool, arguments, self.name)
        except EpisodeEvicted as exc:
            # verl turns a tool's exception into text for the model and goes on; the reward must not
            # score this trajectory as if nothing happened: compute_score raises on it
            if agent_data is not None:
                agent_data.extra_fields["astra_error"] = str(exc)
            raise
        if agent_data is not None:
            agent_data.extra_fields["astra_calls"] = rollout.recorded_calls()
        return (
            ToolResponse(text=outcome.text),
            outcome.step_reward,
            {"is_error": outcome.is_error, "latency_s": outcome.latency_s},
        )

    async def calc_reward(self, instance_id: str, **kwargs: Any) -> float:
        """The process reward of the trajectory so far (0.0 without a ground truth)."""
        instance = self._instances.get(instance_id)
        agent_data = kwargs.get("agent_data")
        rollout = _ROLLOUTS.get(agent_data) if agent_data is not None else (instance.own if instance else None)
        score = rollout.reward() if rollout is not None else None
        return score.reward if score is not None else 0.0

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        instance = self._instances.pop(instance_id, None)
        if instance is not None and instance.own is not None:
            await instance.own.close()
