"""Records that cross unit boundaries (the data contracts of docs/ARCHITECTURE.md).

Every record is a pydantic v2 model, serialised as one JSON line in run directories.
Records that are produced from inputs carry a stable ``id`` (a hash of those inputs, see
:func:`stable_id`) so that a restarted stage can skip what it already wrote.

Units re-export the records they own from their ``__init__``; this module is the one
place where the shapes are defined, so that units built in parallel agree on them.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_validator

from astra.tool_errors import ToolErrorKind
from astra.tools import JSONSchema, ToolRef


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the input of every content hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def stable_id(*parts: Any, prefix: str = "", length: int = 16) -> str:
    """A short, stable id derived from the given parts (order matters)."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode("utf-8")).hexdigest()[:length]
    return f"{prefix}{digest}" if prefix else digest


class Record(BaseModel):
    """Base of all records: strict about unknown fields, JSON round-trippable."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json_line(self) -> str:
        return self.model_dump_json(exclude_none=False)


# --------------------------------------------------------------------------- registry


class ToolSpec(Record):
    """One tool of one MCP server, as listed by ``tools/list`` (or imported from docs)."""

    server: str = Field(description="name of the server this tool belongs to")
    name: str
    title: str | None = None
    description: str = ""
    input_schema: JSONSchema = Field(default_factory=lambda: {"type": "object", "properties": {}})
    output_schema: JSONSchema | None = None
    annotations: dict[str, Any] = Field(default_factory=dict)

    @property
    def qualified_name(self) -> str:
        return f"{self.server}/{self.name}"


class StdioLaunch(Record):
    kind: Literal["stdio"] = "stdio"
    command: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None


class HttpLaunch(Record):
    kind: Literal["http"] = "http"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    transport: Literal["streamable-http", "sse"] = Field(
        default="streamable-http", description="streamable HTTP (current), or the legacy HTTP+SSE transport"
    )
    url_config: dict[str, Any] | None = Field(
        default=None, description="JSON put base64-encoded into the URL's {config_b64} placeholder at launch (Smithery)"
    )


class EnvironmentLaunch(Record):
    """An environment emitted by ``astra.servers`` (served in-process or from its directory)."""

    kind: Literal["environment"] = "environment"
    environment_id: str


class SimulatedLaunch(Record):
    """No runnable server: an LLM simulates the tools from their schemas."""

    kind: Literal["simulated"] = "simulated"
    call_info: dict[str, Any] | None = None
    remote: HttpLaunch | None = Field(
        default=None, description="a remote MCP endpoint for these tools (from call_info), called live only on request "
        "(--live-remote) and when reachable; url, headers and url_config may hold ${VAR} references to secrets"
    )


Launch = Annotated[
    StdioLaunch | HttpLaunch | EnvironmentLaunch | SimulatedLaunch, Field(discriminator="kind")
]


class ServerSpec(Record):
    id: str = Field(description="stable id: hash of source + name")
    name: str = Field(description="unique, human-usable name (the registry key)")
    title: str | None = None
    description: str = ""
    domain: str | None = None
    launch: Launch = Field(default_factory=SimulatedLaunch)
    tools: list[ToolSpec] = Field(default_factory=list)
    source: str | None = Field(default=None, description="where this record came from (file:line, url, command)")
    content_hash: str | None = None


class GraphEdge(Record):
    """A dependency between two tools: ``src``'s output can feed (data) or must precede (order) ``dst``."""

    src: str = Field(description="qualified tool name: server/tool")
    dst: str = Field(description="qualified tool name: server/tool")
    kind: Literal["data", "order"] = "data"
    bindings: dict[str, str] = Field(default_factory=dict, description="dst_param -> src output field")
    score: float = Field(default=1.0, ge=0.0, le=1.0)
    provenance: Literal["schema", "llm", "trace", "manual"] = "schema"
    rationale: str | None = None


class ToolGraph(Record):
    """A versioned tool dependency graph (the store holds edges; networkx is the algorithm side)."""

    name: str
    version: int = 1
    nodes: list[str] = Field(default_factory=list, description="qualified tool names")
    edges: list[GraphEdge] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- client


class ToolCall(Record):
    """A tool call as the model made it (OpenAI shape, arguments kept as the raw string)."""

    id: str
    name: str
    arguments: str = "{}"


class ChatMessage(Record):
    """OpenAI chat-format message; ``tool_calls`` on assistant turns, ``tool_call_id`` on tool turns."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    reasoning_content: str | None = None
    thinking_blocks: list[dict[str, Any]] | None = Field(
        default=None,
        description="the provider's own reasoning blocks, verbatim (Anthropic thinking / redacted_thinking "
        "with their signatures): sent back unchanged on the next request, as tool use with thinking requires",
    )

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role == "tool":
            out["name"] = self.name
        if self.reasoning_content:
            out["reasoning_content"] = self.reasoning_content
        return out


class Usage(Record):
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )


_TOOL_ERROR_KINDS: dict[str, ToolErrorKind] = {k.value: k for k in ToolErrorKind}


def _known_error_kind(value: Any) -> Any:
    # a kind this version knows is read back as its member; another string (a newer writer) stays as it is
    return _TOOL_ERROR_KINDS.get(value, value) if type(value) is str else value


ErrorKindField = Annotated[ToolErrorKind | str | None, BeforeValidator(_known_error_kind)]


class Step(Record):
    """One executed tool call inside an episode."""

    turn: int = 0
    call_id: str
    tool: str = Field(description="the name the model used (aggregated, collision-free)")
    server: str | None = None
    server_tool: str | None = Field(default=None, description="the tool's own name on its server")
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    result: Any = None
    is_error: bool = False
    error_kind: ErrorKindField = Field(default=None, description="a ToolErrorKind: unknown_tool | bad_arguments | "
                                       "tool_error | timeout | server_died | ...")
    latency_s: float = 0.0
    simulated: bool = False

    @property
    def ref(self) -> ToolRef | None:
        """Where this call went (None when the harness did not know the server: an unknown tool)."""
        if self.server is None or self.server_tool is None:
            return None
        return ToolRef(server=self.server, tool=self.server_tool, exposed=self.tool)


class TerminationReason(StrEnum):
    """Why an episode ended. Members equal (and hash like) their string values, so records
    written before this was an enum read back unchanged."""

    final_answer = "final_answer"  # a non-empty assistant answer without tool calls on the last turn
    max_steps = "max_steps"
    max_tokens = "max_tokens"  # the token budget, or a reply cut at the provider's token limit
    no_answer = "no_answer"  # the model stopped without tool calls and without any text
    model_error = "model_error"  # the provider failed for good (after retries), or its reply was unusable
    server_error = "server_error"  # a tool server is gone for good
    timeout = "timeout"  # the episode deadline
    cancelled = "cancelled"


def _enum_value(value: Any) -> str:
    return value.value if isinstance(value, StrEnum) else str(value)


# serialised as its string, also when a caller's model_copy(update=...) put a plain string there
Termination = Annotated[TerminationReason, PlainSerializer(_enum_value, return_type=str)]


class FailureClass(StrEnum):
    """Whose doing an episode's outcome is: rewards and reruns treat the classes apart."""

    none = "none"  # ended with an assistant answer, no infrastructure fault on the way
    policy = "policy"  # the model's own doing: max_steps, max_tokens, no_answer
    infrastructure = "infrastructure"  # not the model's doing (see InfraFault): never a reward of 0; rerun it


class InfraFault(StrEnum):
    """The infrastructure fault that hit an episode (the first one)."""

    provider_error = "provider_error"  # the model endpoint refused or failed for good (HTTP error after retries)
    bad_response = "bad_response"  # the endpoint answered 200 with garbage or a wrongly shaped body
    transport_error = "transport_error"  # no answer from the model endpoint: connection refused/reset, timeout
    server_died = "server_died"  # a tool server died or stayed unavailable
    tool_timeout = "tool_timeout"  # a tool call got no answer in time
    timeout = "timeout"  # the episode deadline passed
    judge_error = "judge_error"  # the judge failed (a reward that could not be computed)
    cancelled = "cancelled"


class Trajectory(Record):
    id: str = Field(description="stable id: hash of task id, model, sample index")
    task_id: str
    sample: int = 0
    model: str
    tools: list[dict[str, Any]] = Field(default_factory=list, description="OpenAI function-format tools")
    messages: list[ChatMessage] = Field(default_factory=list)
    steps: list[Step] = Field(default_factory=list)
    final_answer: str | None = None
    usage: Usage = Field(default_factory=Usage)
    termination: Termination
    error: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)
    failure_class: FailureClass | None = Field(
        default=None, description="none | policy | infrastructure (None: written before the classes existed)")
    infra_fault: InfraFault | None = Field(default=None, description="which infrastructure fault, when there was one")

    @property
    def ends_with_answer(self) -> bool:
        """True when the episode ended with an assistant answer (the only kind SFT exports)."""
        return self.termination == TerminationReason.final_answer and bool((self.final_answer or "").strip())


# --------------------------------------------------------------------------- synthesis


class ChainCall(Record):
    tool: str = Field(description="qualified tool name: server/tool")
    bindings: dict[str, str] = Field(default_factory=dict, description="param -> '<step index>.<field>'")


class ToolChain(Record):
    id: str
    calls: list[ChainCall]
    kind: Literal["chain", "toolset"] = "chain"
    acyclic: bool = True
    graph: str | None = None
    graph_version: int | None = None
    verification: dict[str, Any] = Field(default_factory=dict)


class Task(Record):
    id: str
    user_turns: list[str] = Field(min_length=1)
    target_tools: list[str] = Field(default_factory=list)
    chain_id: str | None = None
    difficulty: str | None = None
    persona: str | None = None
    quality: dict[str, float] = Field(default_factory=dict)
    servers: list[str] = Field(default_factory=list, description="registry server names the task may use")
    provenance: dict[str, Any] = Field(default_factory=dict)


class Reward(Record):
    id: str
    trajectory_id: str
    task_id: str
    dimensions: dict[str, float] = Field(default_factory=dict)
    overall: float | None = None
    process: list[float] = Field(default_factory=list, description="per-step process rewards")
    rules: dict[str, float] = Field(default_factory=dict)
    judge_model: str | None = None
    rationale: str | None = None
    status: Literal["ok", "judge_failed"] = "ok"
    error: str | None = None
    mode: Literal["llm", "rules"] | None = Field(
        default=None, description="llm: a judge model scored the items; rules: rules alone (never LLM-judged)")
    judge_version: str | None = Field(default=None, description="prompt / rule-set version of the scores")
    judge_calls: int | None = Field(default=None, description="model requests this reward took (retries included)")
    items: list[dict[str, Any]] = Field(
        default_factory=list, description="item verdicts: kind, ref, score (0 / 0.5 / 1), reason, source (judge|rule)")

    @field_validator("dimensions")
    @classmethod
    def _in_unit_interval(cls, v: dict[str, float]) -> dict[str, float]:
        for key, value in v.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"dimension {key!r} = {value} is outside [0, 1]")
        return v


class QAItem(Record):
    id: str
    question: str
    answer: str
    domain: str | None = None
    source: str | None = None
    answer_unverified: bool = Field(
        default=False, description="no answer was given (question-only input): decomposition proposes it, "
        "and it stays unverified until tools reproduce it"
    )


class DecompositionStep(Record):
    id: str
    hop: int = 1
    sub_question: str
    depends_on: list[str] = Field(default_factory=list)
    is_parallel: bool = False
    sub_answer: str
    needs_tool: bool | None = None
    reason: str | None = None


class Decomposition(Record):
    id: str
    qa_id: str
    question: str
    answer: str
    steps: list[DecompositionStep]
    scores: dict[str, float] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list, description="problems checks found without dropping the item")
    model: str | None = None
    judge: str | None = Field(default=None, description="who judged necessity and verification: 'rules' when the "
                              "model cannot (the embedded model); None: the LLM judge")
    answer_unverified: bool = Field(default=False, description="the final answer was proposed by the decomposing "
                                    "model (question-only input), not given")


class ToolImplementation(Record):
    """A tool of an environment: its MCP-facing spec plus the Python source that implements it."""

    spec: ToolSpec
    source: str = Field(description="Python source defining a function named like the tool")
    entrypoint: str | None = Field(default=None, description="function name in source (default: spec.name)")
    stateful: bool = Field(default=False, description="takes the episode state as its first argument")


class Verifier(Record):
    """A reference call with its expected result, or a sub-question with its expected answer."""

    id: str
    sub_question: str | None = None
    expected_answer: Any = None
    tool: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    expected_result: Any = None
    state_check: dict[str, Any] | None = None


class EnvironmentSpec(Record):
    id: str
    name: str
    description: str = ""
    tools: list[ToolImplementation] = Field(default_factory=list)
    initial_state: dict[str, Any] = Field(default_factory=dict)
    verifiers: list[Verifier] = Field(default_factory=list)
    sandboxed: bool = Field(default=True, description="False only for trusted, hand-written code")
    provenance: dict[str, Any] = Field(default_factory=dict)


class RLSample(Record):
    id: str
    prompt: list[ChatMessage]
    environment_id: str
    tools: list[dict[str, Any]] = Field(default_factory=list, description="OpenAI function-format tools")
    sub_qa: list[dict[str, Any]] = Field(default_factory=list, description="[{sub_question, sub_answer, tool}]")
    answer: str | None = None
    data_source: str = "astra_env"
