"""astra.client — the MCP client harness: connections, model providers, agent loop, runner."""

from astra.client._model import (
    Model,
    ModelError,
    ModelResponse,
    ModelSettings,
    ScriptedModel,
    ScriptExhausted,
)

__all__ = ["Model", "ModelError", "ModelResponse", "ModelSettings", "ScriptedModel", "ScriptExhausted"]
