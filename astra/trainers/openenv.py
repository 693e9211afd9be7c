"""OpenEnv (``openenv-core``) environment over an ASTRA environment: one episode per OpenEnv session.

OpenEnv's server builds one :class:`AstraOpenEnv` per session when the class says
``SUPPORTS_CONCURRENT_SESSIONS`` (it does: sessions never share state), and drives it with
``reset`` / ``step`` / ``state``. ``reset`` starts a new trajectory (a
:class:`~astra.trainers.Rollout` over the process's pooled connection: a fresh, server-minted
episode, the previous one closed), ``step(AstraAction(tool=..., arguments=...))`` calls a tool
in that episode and returns its reply with the per-step process reward, and
``step(AstraAction(final_answer=...))`` ends the episode (``done``; the process reward in
``metadata``). Unlike a proxy that opens a backend MCP session per request, state persists
across the steps of a session.
"""

from __future__ import annotations

# pyright: reportMissingTypeStubs=false
# (openenv-core ships no type information)
import json
from typing import Any

from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field

from astra.trainers._pool import EpisodePool, PoolLoop, Rollout, launch_from_config

__all__ = ["AstraAction", "AstraObservation", "AstraOpenEnv", "openenv_factory"]


class AstraAction(Action):
    """Call one tool, or give the final answer (ends the episode)."""

    tool: str | None = Field(default=None, description="the tool to call")
    arguments: dict[str, Any] = Field(default_factory=dict)
    final_answer: str | None = Field(default=None, description="the answer; ends the episode")


class AstraObservation(Observation):
    text: str = ""
    is_error: bool = False
    question: str | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list, description="OpenAI function tools (on reset)")


class AstraOpenEnv(Environment[AstraAction, AstraObservation, State]):
    """One RL sample of an export as an OpenEnv environment (see the module docstring).

    ``sample``: ``{"question", "tools" (OpenAI), "routes" ({tool: [server, tool]}),
    "servers" ({name: launch}), "ground_truth"}`` (what :func:`openenv_factory` is given)."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, sample: dict[str, Any]) -> None:
        super().__init__()
        self.sample = sample
        servers = sample["servers"]
        self.pool = EpisodePool.shared(
            EpisodePool.key_of({"servers": servers}),
            lambda: EpisodePool(  # the server's loop (step_async) skips the thread hop; sync step still hops
                [(n, launch_from_config(launch)) for n, launch in sorted(servers.items())], loop=PoolLoop.CALLER
            ),
        )
        self.routes = {name: tuple(route) for name, route in sample["routes"].items()}
        self._rollout: Rollout | None = None
        self._episode_id: str | None = None

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> AstraObservation:
        if self._rollout is not None:
            self._rollout.close_soon()
        self._rollout = self.pool.rollout(self.sample.get("ground_truth"))
        self._episode_id = episode_id
        return AstraObservation(question=self.sample["question"], tools=self.sample["tools"], reward=0.0, done=False)

    def _check(self, action: AstraAction) -> Rollout:
        if self._rollout is None:
            raise RuntimeError("reset() starts an episode before step()")
        return self._rollout

    def _final(self, rollout: Rollout, action: AstraAction) -> AstraObservation:
        score = rollout.reward()
        rollout.close_soon()
        self._rollout = None
        return AstraObservation(
            text="",
            done=True,
            reward=0.0,
            metadata={
                "process_reward": score.reward if score else None,
                "final_answer": action.final_answer,
                "step_rewards": score.step_rewards if score else [],
            },
        )

    def _observe(self, outcome: Any) -> AstraObservation:
        return AstraObservation(text=outcome.text, is_error=outcome.is_error, reward=outcome.step_reward, done=False)

    def _route(self, action: AstraAction) -> tuple[str, str] | AstraObservation:
        route = self.routes.get(action.tool or "")
        if route is None:
            return AstraObservation(
                text=f"unknown tool {action.tool!r}; available: {sorted(self.routes)}", is_error=True, reward=0.0
            )
        return route

    def step(self, action: AstraAction, timeout_s: float | None = None, **kwargs: Any) -> AstraObservation:
        rollout = self._check(action)
        if action.final_answer is not None:
            return self._final(rollout, action)
        route = self._route(action)
        if isinstance(route, AstraObservation):
            return route
        return self._observe(rollout.call_sync(route[0], route[1], action.arguments, action.tool))

    async def step_async(self, action: AstraAction, timeout_s: float | None = None, **kwargs: Any) -> AstraObservation:
        rollout = self._check(action)
        if action.final_answer is not None:
            return self._final(rollout, action)
        route = self._route(action)
        if isinstance(route, AstraObservation):
            return route
        return self._observe(await rollout.call(route[0], route[1], action.arguments, action.tool))

    @property
    def state(self) -> State:
        calls = len(self._rollout.calls) if self._rollout is not None else 0
        return State(episode_id=self._episode_id, step_count=calls)

    def close(self) -> None:
        if self._rollout is not None:
            self._rollout.close_soon()
            self._rollout = None


def openenv_sample(sample: Any) -> dict[str, Any]:
    """The JSON an :class:`AstraOpenEnv` is built from (``sample``: :class:`astra.trainers.export.Sample`)."""
    servers = {}
    by_name = {sample.env.name: sample.env}
    for server in (ref.server for ref in sample.routes.values()):
        env = by_name.get(server)
        if env is None:
            raise ValueError(f"sample {sample.env.name!r} routes to {server!r}: pass its launch in servers")
        servers[server] = env.launch_config()
    return {
        "question": sample.prompt[-1]["content"],
        "tools": sample.tools,
        "routes": {k: [ref.server, ref.tool] for k, ref in sample.routes.items()},
        "servers": servers,
        "ground_truth": json.dumps(sample.truth),
    }


def openenv_factory(sample: dict[str, Any]) -> Any:
    """What OpenEnv's server takes as its environment factory: a new instance per session."""
    return lambda: AstraOpenEnv(sample)
