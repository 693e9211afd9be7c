"""The trajectory pipeline's configuration: one pydantic model, loaded from YAML or JSON."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from astra.config import renamed_options
from astra.errors import UserError, validation_problem
from astra.records import ServerSpec


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GraphOptions(_Options):
    name: str | None = Field(default=None, description="graph name in the registry (default: traj-<run dir name>)")
    method: Literal["candidates", "server_chains", "both"] = Field(
        default="candidates", description="candidates: typed candidates from the docs (LLM-verified if llm_verify); "
        "server_chains: the original ASTRA's per-server LLM chain detection only; both: their union")
    cross_server: bool = Field(default=True, description="also link tools across servers (portable value types only)")
    min_candidate_score: float = Field(default=0.45, ge=0.0, le=1.0)
    max_sources_per_tool: int = Field(default=8, ge=1,
                                      description="keep the best N candidate sources per destination tool")
    llm_verify: bool = Field(default=True, description="an LLM verifies candidate edges (in batches)")
    batch_size: int = Field(default=12, ge=1, description="candidate edges per LLM verification call")
    llm_chains: bool = Field(default=False, description="same as method: both (kept for old configs)")
    min_edge_score: float = Field(default=0.5, ge=0.0, le=1.0, description="LLM-verified edges below this are dropped")
    trace: bool = Field(default=False, description="execution-grounded edges: call read-only tools of the live "
                        "servers and link a real output value to the parameters it fits (opt-in)")
    trace_allow: list[str] = Field(default_factory=list, description="server/tool names that may be called although "
                                   "their annotations do not say read-only")
    trace_seeds: dict[str, Any] = Field(default_factory=dict, description="argument values to start from, by "
                                        "parameter name or semantic type (e.g. {\"repo_path\": \"/tmp/repo\"})")
    trace_calls: int = Field(default=3, ge=1, le=20, description="calls per tool at most while tracing")

    @model_validator(mode="after")
    def _legacy_chains(self) -> GraphOptions:
        if self.llm_chains and self.method == "candidates":
            self.method = "both"
        return self

    @property
    def uses_candidates(self) -> bool:
        return self.method in ("candidates", "both")

    @property
    def uses_server_chains(self) -> bool:
        return self.method in ("server_chains", "both")


class ChainOptions(_Options):
    num_chains: int = Field(default=20, ge=0)
    min_length: int = Field(default=2, ge=2)
    max_length: int = Field(default=5, ge=2)
    num_toolsets: int = Field(default=10, ge=0, description="single- and multi-tool sets without a chain")
    max_toolset_size: int = Field(default=3, ge=1, le=3)
    uncovered_weight: float = Field(default=4.0, ge=1.0, description="how much more likely an uncovered tool is picked")

    @model_validator(mode="after")
    def _lengths(self) -> ChainOptions:
        if self.max_length < self.min_length:
            raise ValueError(f"chains.max_length ({self.max_length}) < chains.min_length ({self.min_length})")
        return self


class VerifyOptions(_Options):
    enabled: bool = True
    votes: int = Field(default=1, ge=1, description="LLM votes per chain; a majority must accept")
    back_translation: bool = True
    min_back_translation: float = Field(default=0.5, ge=0.0, le=1.0, description="recovered-chain similarity to pass")
    distractors: int = Field(default=4, ge=0, description="extra tools offered when recovering the chain")


AUGMENTATIONS = ("context_shift", "complicate", "persona")
"""The original ASTRA's augmentations: the same tools in another scenario ("diverse"), harder
constraints ("complicate"), and the request as a given user would ask it ("by_ug")."""
_LEGACY_AUGMENTATIONS = {"wording": "context_shift", "complex": "complicate"}


class JudgeMode(StrEnum):
    """Who scores the seven reward dimensions."""

    LLM = "llm"      # one structured judge call per trajectory (rules override where they decide)
    RULES = "rules"  # rules alone: no model call; rewards say so and are never presented as LLM-judged


class TaskOptions(_Options):
    per_chain: int = Field(default=1, ge=1, description="base questions per chain / toolset")
    augmentations: list[str] = Field(default_factory=lambda: list(AUGMENTATIONS),
                                     description="context_shift, complicate, persona (applied to every base question)")
    variants: int = Field(default=1, ge=1, le=8, description="variants per augmentation mode and base question")
    examples: dict[str, str] = Field(default_factory=dict, description="an example request per tool (server/tool), "
                                     "shown for a chain with that tool and no back-translated query of its own")
    personas: Path | None = Field(default=None, description="persona JSONL ({\"persona\": ...} or profile fields per "
                                  "line); default: the bundled sample")
    multi_turn: bool = True
    quality_threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="mean of the four quality scores, in [0, 1]"
    )
    quality_judge: JudgeMode = Field(default=JudgeMode.LLM, description="llm (judge_model) or rules (no judge model; "
                                     "tasks say quality_judge: rules)")

    @field_validator("augmentations", mode="before")
    @classmethod
    def _legacy_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return list(dict.fromkeys(_LEGACY_AUGMENTATIONS.get(x, x) if isinstance(x, str) else x for x in v))
        return v

    @model_validator(mode="after")
    def _known(self) -> TaskOptions:
        unknown = sorted(set(self.augmentations) - set(AUGMENTATIONS))
        if unknown:
            raise ValueError(f"tasks.augmentations: unknown {unknown} (known: {', '.join(AUGMENTATIONS)})")
        return self


class RolloutOptions(_Options):
    samples: int = Field(default=1, ge=1)
    max_requests: int = Field(default=8, ge=1, description="model requests per episode (was max_steps)")
    max_tokens: int | None = Field(default=512, description="per model reply")
    temperature: float | None = 0.7
    sim_error_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="share of simulated tool calls that fail "
                                  "with a transient error (marked error_kind=injected_error in the trajectory)")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return renamed_options(data, {"max_steps": "max_requests"}, "trajectory config: rollout")


class RewardOptions(_Options):
    judge: JudgeMode = Field(default=JudgeMode.LLM, description="llm (judge_model) or rules (no judge model)")
    threshold: float = Field(default=0.6, ge=0.0, le=1.0, description="minimum overall reward to export")
    min_dimension: float = Field(default=0.0, ge=0.0, le=1.0, description="every dimension must reach this to export")
    require_schema_valid: bool = Field(
        default=False, description="export only when every call's arguments were schema-valid"
    )


class TrajectoryConfig(_Options):
    """Everything one run of the trajectory pipeline needs."""

    out_dir: Path
    home: Path | None = Field(default=None, description="ASTRA home (registry); default $ASTRA_HOME or ~/.astra")
    servers: list[str] = Field(default_factory=list, description="registry server names")
    inline_servers: list[ServerSpec] = Field(
        default_factory=list, description="servers given in full here, not in the registry"
    )
    environments: list[Path] = Field(default_factory=list, description="EnvironmentSpec JSON files, served in-process")
    tasks_path: Path | None = Field(default=None, description="tasks JSONL (Task records or the original ASTRA's "
                                    "tasks.jsonl): the tasks stage reads them instead of generating; servers of their "
                                    "mcp_info join the run; graph, chains and verify are skipped")
    resume_from: list[Path] = Field(
        default_factory=list,
        description="the original ASTRA's intermediate files (graph "
        "detect output, sub-chains, verified chains): the run starts after the latest of them",
    )
    live_remote: bool = Field(default=False, description="call documented servers' call_info endpoints live when "
                              "reachable (their ${VAR} secrets from the environment); otherwise they are simulated")
    model: str = "local:smollm2"
    judge_model: str | None = Field(default=None, description="default: model")
    simulator_model: str | None = Field(
        default=None, description="simulates tools of servers that cannot run; default: model"
    )
    seed: int = 0
    concurrency: int = Field(default=4, ge=1)
    model_timeout_s: float = Field(default=300.0, gt=0, description="per model request; a timed-out local generation "
                                   "keeps the model busy, so err on the long side (the old name llm_timeout_s is "
                                   "accepted, with a deprecation message)")
    graph: GraphOptions = Field(default_factory=GraphOptions)
    chains: ChainOptions = Field(default_factory=ChainOptions)
    verify: VerifyOptions = Field(default_factory=VerifyOptions)
    tasks: TaskOptions = Field(default_factory=TaskOptions)
    rollout: RolloutOptions = Field(default_factory=RolloutOptions)
    reward: RewardOptions = Field(default_factory=RewardOptions)
    export_formats: list[str] = Field(default_factory=lambda: ["openai", "hf", "sharegpt", "parquet"])
    export_template: str | None = Field(default=None, description="adapt hf / sharegpt / parquet to this chat "
                                        "template (matrix name, .jinja or .gguf path) and export only clean renders")
    export_tokenizer: str | None = Field(default=None, description="the 'tokens' format: a GGUF file whose "
                                         "vocabulary tokenises the export ('smollm2' = the embedded model)")

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return renamed_options(data, {"llm_timeout_s": "model_timeout_s"}, "trajectory config")

    @property
    def llm_timeout_s(self) -> float:
        """The old name of :attr:`model_timeout_s`."""
        return self.model_timeout_s

    @model_validator(mode="after")
    def _check(self) -> TrajectoryConfig:
        known = ["openai", "hf", "sharegpt", "parquet", "tokens", "astra-original"]
        unknown = sorted(set(self.export_formats) - set(known))
        if unknown:
            raise ValueError(f"export_formats: unknown {unknown} (known: {', '.join(known)})")
        if "tokens" in self.export_formats and not (self.export_template and self.export_tokenizer):
            raise ValueError("export_formats: 'tokens' needs export_template and export_tokenizer")
        if not (self.servers or self.inline_servers or self.environments or self.tasks_path or self.resume_from):
            raise ValueError("no servers: give at least one of servers, inline_servers, environments "
                             "(or tasks_path / resume_from files that bring theirs)")
        return self

    @property
    def judge(self) -> str:
        return self.judge_model or self.model

    @property
    def simulator(self) -> str:
        return self.simulator_model or self.model

    @classmethod
    def load(cls, path: str | Path) -> TrajectoryConfig:
        """Read a YAML or JSON config; relative paths in it are relative to the file.

        Raises :class:`ConfigError` naming the file and the offending field.
        """
        path = Path(path)
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        data: Any
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:  # json / yaml parse errors carry line numbers in their message
            raise ConfigError(
                f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}"
            ) from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        base = path.parent.resolve()
        for key in ("out_dir", "home"):
            if isinstance(data.get(key), str) and not Path(data[key]).expanduser().is_absolute():
                data[key] = str(base / data[key])
        tasks = data.get("tasks")
        if (
            isinstance(tasks, dict)
            and isinstance(tasks.get("personas"), str)
            and not Path(tasks["personas"]).is_absolute()
        ):
            tasks["personas"] = str(base / tasks["personas"])
        for key in ("environments", "resume_from"):
            if isinstance(data.get(key), list):
                data[key] = [
                    str(base / e) if isinstance(e, str) and not Path(e).is_absolute() else e for e in data[key]
                ]
        if isinstance(data.get("tasks_path"), str) and not Path(data["tasks_path"]).expanduser().is_absolute():
            data["tasks_path"] = str(base / data["tasks_path"])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(validation_problem(str(path), exc)) from exc


class ConfigError(UserError, ValueError):
    """A config file that cannot be read or validated (the message names file and field)."""
