"""astra.trainers — ASTRA environments for RL trainers, each adapter checked by the trainer's own code.

- :class:`EpisodePool`: one pooled MCP connection per worker process; :class:`Rollout`: one
  trajectory's episodes (server-minted handles), calls and process reward (the one definition,
  :mod:`astra.servers._rewards`) with per-step rewards.
- :mod:`astra.trainers.export`: RL samples (unique tool names, distractors, user background),
  verl parquet rows and tool-config YAML.
- :mod:`astra.trainers.verl`: verl ``BaseTool`` (imports verl; load it through the YAML).
- :mod:`astra.trainers.trl`: TRL ``environment_factory`` module per export + reward function.
- :mod:`astra.trainers.openenv`: OpenEnv ``Environment``, one episode per session (imports openenv-core).
- :mod:`astra.trainers.hosts`: ``mcp.json`` / ``.vscode/mcp.json``; :mod:`astra.trainers.hardening`:
  the hardening certificate; :mod:`astra.trainers.astra_rl`: ASTRA-RL-1k row importer.
"""

from astra.trainers._pool import (
    Episode,
    EpisodeEvicted,
    EpisodePool,
    PoolLoop,
    Rollout,
    StepOutcome,
    launch_from_config,
    stdio_launch,
)
from astra.trainers.export import (
    ExportEnvironment,
    Sample,
    distractors,
    export_tool_names,
    samples,
    verl_row,
    verl_tool_config,
    write_verl_parquet,
    write_yaml,
)

__all__ = [
    "Episode",
    "EpisodeEvicted",
    "EpisodePool",
    "ExportEnvironment",
    "PoolLoop",
    "Rollout",
    "Sample",
    "StepOutcome",
    "distractors",
    "export_tool_names",
    "launch_from_config",
    "samples",
    "stdio_launch",
    "verl_row",
    "verl_tool_config",
    "write_verl_parquet",
    "write_yaml",
]
