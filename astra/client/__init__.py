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
from astra.client._local import LocalModel, parse_tool_reply, smollm2_path, tool_call_schema
from astra.client._loop import AfterReply, EpisodeState, EpisodeTurn, LoopPolicy, play, run_episode, trajectory_id
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
    EchoModel,
    ModelSpec,
    Provider,
    model_endpoint,
    provider_of,
    register_provider,
    register_script,
    registered_providers,
    registered_scripts,
    resolve_model,
)
from astra.client._retry import RetryPolicy
from astra.client._runner import RolloutSummary, arun_rollouts, run_rollouts
from astra.client._schema import anthropic_tool, openai_tool, provider_schema

__all__ = [
    "AfterReply",
    "AnthropicModel",
    "CachedModel",
    "ConnectionFailed",
    "EpisodeUnavailable",
    "Connections",
    "EchoModel",
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
    "anthropic_tool",
    "arun_rollouts",
    "merge_settings",
    "model_endpoint",
    "openai_tool",
    "parse_tool_reply",
    "play",
    "provider_of",
    "provider_schema",
    "register_provider",
    "register_script",
    "registered_providers",
    "registered_scripts",
    "resolve_model",
    "run_episode",
    "run_rollouts",
    "smollm2_path",
    "tool_call_schema",
    "trajectory_id",
]
