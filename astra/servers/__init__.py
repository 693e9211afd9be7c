"""astra.servers: environments as real MCP servers (official ``mcp`` SDK v2).

Public API
- :class:`Sandbox`, :class:`SandboxLimits`, :class:`SandboxResult`: model-written tool code
  under bubblewrap + seccomp, a sandbox per episode and in it a process forked from a warm parent
  that serves the episode's calls (:class:`ProcessScope`: or a fresh one per call; see ``_sandbox``);
  :class:`SandboxUnavailable` when it cannot be set up (fails closed).
- :func:`build_server` (an ``EnvironmentSpec``) and :func:`build_class_server` (a trusted
  Python class, e.g. BFCL's backends) return an :class:`EnvironmentServer` (an
  ``MCPServer``) for ``mcp.client.Client(server)`` in-process, stdio or HTTP; its
  :class:`EnvironmentRuntime` (``server.runtime``) is the harness's hidden control handle
  (reset / snapshot / restore / state / calls), and :class:`EnvironmentControl` is the same
  over the wire (MCP extension ``dev.astra/environment``). See ``_runtime`` for how
  requests map to episodes (``EPISODE_META_KEY``).
- :func:`emit` writes a standalone server directory; :func:`certify_emitted` (also
  :func:`validate_emitted`) launches it over stdio and replays the verifiers' reference calls:
  THE certification, one :class:`Certification` record (``_validate``).
- :func:`score_calls` (and :func:`score_episode`, :func:`score_trajectory`, :func:`compute_score`):
  THE process reward (one definition, ``_rewards``), its matching rule :func:`answer_in_result`
  and template-agnostic episode parsing (:func:`calls_from_text`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from astra.records import EnvironmentSpec, ToolImplementation, Verifier

from ._emit import emit, load_emitted, mcp_servers_block
from ._rewards import (
    EpisodeScore,
    ProcessReward,
    SubQuestion,
    ToolCallRecord,
    answer_in_result,
    answers_match,
    calls_from_messages,
    calls_from_text,
    compute_score,
    process_reward,
    score_calls,
    score_episode,
    score_trajectory,
    sub_questions,
)
from ._runtime import (
    CONTROL_EXTENSION,
    EPISODE_META_KEY,
    BindRefused,
    EnvironmentControl,
    EnvironmentRuntime,
    EnvironmentServer,
    EpisodeRefusal,
    SchemaCheck,
    build_class_server,
    build_server_from_dict,
    check_bind,
    request_context,
    serve,
)
from ._runtime import EnvironmentError_ as EnvironmentSpecError
from ._sandbox import ProcessScope, Sandbox, SandboxError, SandboxLimits, SandboxResult, SandboxUnavailable
from ._validate import (
    Certification,
    CheckKind,
    ValidationReport,
    certify_client,
    certify_emitted,
    stdio_parameters,
    validate_emitted,
)

SAMPLES_DIR = Path(__file__).with_name("samples")


def sample_path(name: str = "inventory") -> Path:
    """Path of a bundled sample environment spec (``astra/servers/samples/NAME.json``)."""
    path = SAMPLES_DIR / f"{name}.json"
    if not path.is_file():
        available = sorted(p.stem for p in SAMPLES_DIR.glob("*.json"))
        raise FileNotFoundError(f"no sample environment {name!r}; available: {available}")
    return path


def load_sample(name: str = "inventory") -> EnvironmentSpec:
    """A bundled sample environment (``inventory``: a stateful warehouse with 7 tools and 5 verifiers)."""
    return EnvironmentSpec.model_validate_json(sample_path(name).read_text(encoding="utf-8"))


def build_server(
    spec: EnvironmentSpec,
    *,
    sandboxed: bool | None = None,
    limits: SandboxLimits | None = None,
    bearer_token: str | None = None,
    public_url: str | None = None,
    **episode_options: Any,
) -> EnvironmentServer:
    """An ``MCPServer`` for ``spec``: tools with the spec's input schemas and descriptions,
    ``structured_content`` results, per-episode state.

    ``sandboxed=None``: sandboxed, even for a spec marked ``sandboxed=False``, unless the user opted
    in (``ASTRA_UNSAFE_NO_SANDBOX=1``); ``sandboxed=False`` runs the tool code in-process (only for
    trusted, hand-written environments: the caller's choice, never the data's). Serve it in-process with
    ``mcp.client.Client(server)``, or over stdio / HTTP with ``astra.servers.serve``.
    ``episode_options``: ``max_episodes``, ``episode_ttl_s``, ``call_timeout_s``, ``episode_memory_bytes``.
    """
    return build_server_from_dict(
        spec.model_dump(mode="json"), sandboxed=sandboxed, limits=limits, bearer_token=bearer_token,
        public_url=public_url, **episode_options,
    )


__all__ = [
    "SAMPLES_DIR",
    "Certification",
    "CheckKind",
    "EpisodeScore",
    "ValidationReport",
    "answer_in_result",
    "answers_match",
    "calls_from_messages",
    "calls_from_text",
    "compute_score",
    "ProcessReward",
    "SubQuestion",
    "ToolCallRecord",
    "score_calls",
    "score_trajectory",
    "sub_questions",
    "emit",
    "load_emitted",
    "load_sample",
    "mcp_servers_block",
    "process_reward",
    "sample_path",
    "score_episode",
    "stdio_parameters",
    "validate_emitted",
    "certify_client",
    "certify_emitted",
    "serve",
    "CONTROL_EXTENSION",
    "EPISODE_META_KEY",
    "BindRefused",
    "EnvironmentControl",
    "EpisodeRefusal",
    "EnvironmentRuntime",
    "EnvironmentServer",
    "EnvironmentSpec",
    "EnvironmentSpecError",
    "Sandbox",
    "SandboxError",
    "ProcessScope",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "SchemaCheck",
    "ToolImplementation",
    "Verifier",
    "build_class_server",
    "build_server",
    "check_bind",
    "request_context",
]
