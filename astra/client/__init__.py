"""astra.client — the MCP client harness: connections, model providers, agent loop, runner.

- :class:`Connections` holds many MCP servers open (stdio, streamable HTTP, in-process) and
  aggregates their tools under collision-free names (:class:`ToolBinding`);
- :func:`resolve_model` builds a :class:`Model` from a :class:`ModelSpec` (``openai:`` /
  ``anthropic:`` / ``local:`` / ``scripted:``, :func:`register_provider` for more; retries,
  optional on-disk cache); wrappers around a model (cache, limits, fixed settings) derive from
  :class:`ModelWrapper`, and settings merge in one place (:func:`merge_settings`);
- :func:`run_episode` runs one (multi-turn) episode into a :class:`~astra.records.Trajectory`: the one
  agent loop (:func:`play`), its rules a :class:`LoopPolicy` (rollouts by default; BFCL's is another);
- :func:`run_rollouts` runs tasks x samples, resumable, locally or on Ray.
"""

from astra.client._cache import CachedModel
from astra.client._connections import (
    ConnectionFailed,
    Connections,
    EpisodeUnavailable,
    ServerTarget,
    ToolBinding,
    ToolResult,
)
from astra.client._local import LocalModel
from astra.client._loop import AfterReply, EpisodeState, EpisodeTurn, LoopPolicy, play, run_episode
from astra.client._model import (
    FixedSettings,
    Model,
    ModelError,
    ModelResponse,
    ModelSettings,
    ModelWrapper,
    ScriptedModel,
    ScriptExhausted,
    merge_settings,
)
from astra.client._providers import AnthropicModel, OpenAIModel
from astra.client._resolve import (
    ModelSpec,
    Provider,
    model_endpoint,
    provider_of,
    register_provider,
    register_script,
    registered_providers,
    resolve_model,
)
from astra.client._retry import RetryPolicy
from astra.client._runner import RolloutSummary, arun_rollouts, run_rollouts
from astra.client._schema import openai_tool

__all__ = [
    "AfterReply",
    "AnthropicModel",
    "CachedModel",
    "ConnectionFailed",
    "EpisodeUnavailable",
    "Connections",
    "EpisodeState",
    "EpisodeTurn",
    "FixedSettings",
    "LocalModel",
    "LoopPolicy",
    "Model",
    "ModelError",
    "ModelResponse",
    "ModelSettings",
    "ModelSpec",
    "ModelWrapper",
    "OpenAIModel",
    "Provider",
    "RetryPolicy",
    "RolloutSummary",
    "ScriptExhausted",
    "ScriptedModel",
    "ServerTarget",
    "ToolBinding",
    "ToolResult",
    "arun_rollouts",
    "merge_settings",
    "model_endpoint",
    "openai_tool",
    "play",
    "provider_of",
    "register_provider",
    "register_script",
    "registered_providers",
    "resolve_model",
    "run_episode",
    "run_rollouts",
]
