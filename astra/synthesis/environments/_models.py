"""Records and configuration of the environment synthesis pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from astra.config import renamed_options
from astra.records import EnvironmentSpec, Record, ToolImplementation
from astra.servers._validate import Certification
from astra.synthesis._stage import Funnel
from astra.synthesis.trajectories._config import JudgeMode

STAGES = ("qa", "decompose", "necessity", "verify", "synthesize", "merge", "emit", "export")


class EnvironmentPipelineConfig(BaseModel):
    """Everything a run needs; stored in the run's manifest. Relative paths resolve against the config file."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # decomposition steps are hops (a "step" is an executed tool call elsewhere)
        return renamed_options(data, {"min_steps": "min_hops", "max_steps": "max_hops"}, "environment config")

    run_dir: Path = Field(description="run directory: manifest + one JSONL per stage")
    qa_path: Path | None = Field(default=None, description='input {"question", "answer"?, "domain"?} JSONL (no answer: '
                                 "the original ASTRA's questions.jsonl; the decomposition proposes it, unverified)")
    domains: list[str] = Field(default_factory=list, description="generate QA for these domains (with the model)")
    corpus_path: Path | None = Field(
        default=None,
        description="generate QA grounded in this text file (paragraphs), "
        'or in the original ASTRA\'s knowledge corpus JSONL ({"domain", "knowledge_corpus"})',
    )
    resume_from: Path | None = Field(default=None, description="the original ASTRA's environment pipeline output "
                                     "(main_question, decomposition_trace, ...): its QA, decompositions and necessity "
                                     "verdicts are taken; the run goes on from verification")
    questions_per_source: int = Field(default=2, ge=1, le=20)
    model: str = Field(default="local:smollm2", description="model spec for every LLM stage")
    max_tokens: int = Field(default=1024, ge=16, description="bound on each model reply")
    model_timeout_s: float = Field(default=120.0, gt=0, description="a reply slower than this is a failed call")
    llm_retries: int = Field(default=2, ge=0, le=5)
    concurrency: int = Field(default=4, ge=1)
    min_hops: int = Field(default=1, ge=1, description="a decomposition needs at least this many hops (1: single-hop "
                           "questions are allowed)")
    max_hops: int = Field(default=8, ge=1, description="at most this many hops (below 8 also bounds the decoder)")
    judge: JudgeMode = Field(default=JudgeMode.LLM, description="who judges necessity and verification: 'rules' for a "
                             "model too small to judge (the records say judge: rules)")
    verify_threshold: float = Field(default=0.75, ge=0.0, le=1.0, description="fixed verification threshold")
    verify_percentile: float | None = Field(
        default=None, ge=0.0, le=100.0, description="set the threshold from the run's scores instead: keep the items "
        "at or above this percentile of all verification scores (the original sets it from the score distribution)")
    synth_attempts: int = Field(default=3, ge=1, le=10, description="tool code attempts per step (feedback between)")
    complexity_scaling: bool = Field(
        default=False, description="also ask for a generalised tool; kept when it still verifies"
    )
    merge_tools: bool = True
    sandbox_timeout_s: float = Field(default=5.0, gt=0)
    sandbox_memory_mb: int = Field(default=256, ge=32)
    out_dir: Path | None = Field(default=None, description="where emitted servers go (default: RUN/servers)")
    export_dir: Path | None = Field(default=None, description="where RLVR data goes (default: RUN/export)")
    home: Path | None = Field(default=None, description="ASTRA home (registry); None: $ASTRA_HOME or ~/.astra")
    save_to_registry: bool = True
    data_source: str = "astra_env"
    certify_timeout_s: float = Field(default=60.0, gt=0)
    distractors: int = Field(
        default=0, ge=0, description="look-alike tools of other environments offered per RL sample"
    )

    @property
    def servers_dir(self) -> Path:
        return self.out_dir or self.run_dir / "servers"

    @property
    def exports_dir(self) -> Path:
        return self.export_dir or self.run_dir / "export"

    @classmethod
    def load(cls, path: str | Path) -> EnvironmentPipelineConfig:
        """Read a JSON (or YAML, when PyYAML is installed) config; paths are relative to its folder."""
        path = Path(path)
        text = path.read_text("utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml  # optional: only for YAML configs

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be an object")
        base = path.resolve().parent
        for key in ("run_dir", "qa_path", "corpus_path", "resume_from", "out_dir", "export_dir", "home"):
            if data.get(key) is not None and not Path(data[key]).expanduser().is_absolute():
                data[key] = str(base / Path(data[key]))
        return cls.model_validate(data)


class SynthAttempt(BaseModel):
    attempt: int
    variant: str = "base"
    name: str | None = None
    ok: bool = False
    error: str | None = None
    result: Any = None
    latency_s: float = 0.0


class ReferenceCall(BaseModel):
    """A call a tool must serve: the arguments of one step and the sub-answer it must return."""

    synth_id: str
    arguments: dict[str, Any]
    expected: Any = Field(description="the step's sub-answer")
    result: Any = Field(default=None, description="the value the verified implementation returned")


class SynthesizedTool(Record):
    id: str
    decomposition_id: str
    qa_id: str
    step_id: str
    sub_question: str
    implementation: ToolImplementation
    call: ReferenceCall
    variant: str = "base"
    attempts: list[SynthAttempt] = Field(default_factory=list)


class MergedTool(Record):
    id: str
    implementation: ToolImplementation
    members: list[str] = Field(description="ids of the synthesised tools it serves")
    calls: list[ReferenceCall]
    merged: bool = Field(default=False, description="one implementation now serves several steps")
    merge_note: str | None = None


# The solvability certificate stored with an emitted server is THE certification record of
# astra.servers (one replay of the server over stdio; old emit.jsonl summaries still load).
Certificate = Certification


class EmittedEnvironment(Record):
    id: str
    spec: EnvironmentSpec
    server_dir: str
    certificate: Certificate
    question: str
    answer: str
    registry: bool = False


class PipelineResult(BaseModel):
    run_dir: Path
    funnel: Funnel
    server_dirs: list[Path] = Field(default_factory=list)
    mcp_servers: dict[str, Any] = Field(default_factory=dict, description='{"mcpServers": {...}} for MCP hosts')
    exports: dict[str, Path] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    input_errors: list[str] = Field(default_factory=list)
