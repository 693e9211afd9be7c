"""Stage 5: tool synthesis — a tool document, a call statement and a standard-library implementation.

The implementation runs in the :mod:`astra.servers` sandbox and is accepted only when the
call returns the step's sub-answer (normalised comparison, never a substring test). Static
checks run first (schema, arguments, a function of that name, standard-library imports
only, no hard-coded answer). Retries are bounded, feed the failure back to the model, and
every attempt is recorded. With complexity scaling, a generalised variant replaces the base
tool only when it still serves the call.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from astra.records import ChatMessage, Decomposition, DecompositionStep, ToolImplementation, ToolSpec, stable_id
from astra.synthesis._llm import LLMOutputError
from astra.synthesis._stage import Outcome, StageCounts
from astra.synthesis.environments._answers import answer_in_result, answers_match
from astra.synthesis.environments._context import PipelineContext
from astra.synthesis.environments._models import ReferenceCall, SynthAttempt, SynthesizedTool
from astra.synthesis.environments._sandbox import SandboxRunner

PROMPT_VERSION = "synthesize-v1"
SCALE_PROMPT_VERSION = "scale-v1"

SYSTEM = (
    "You write one tool for an AI agent: a Python function using only the standard library. "
    "Facts the tool needs (tables, rates, constants) live inside the code; the inputs that vary "
    "are parameters. The function takes keyword arguments named like the schema's properties "
    "and returns a JSON value (a number, string, list or object). Reply with JSON only."
)

EXAMPLE = (
    '{"name": "miles_to_km", "description": "Convert a distance in miles to kilometres.", '
    '"parameters": {"type": "object", "properties": {"miles": {"type": "number", "description": '
    '"distance in miles"}}, "required": ["miles"]}, "arguments": {"miles": 5}, '
    '"code": "def miles_to_km(miles):\\n    return miles * 1.609344\\n"}'
)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_STDLIB = frozenset(sys.stdlib_module_names)


# The reply's JSON Schema is also a constrained decoder's grammar: ``parameters`` must then be an
# object schema with typed properties, and the call's arguments must be given (validation is unchanged).
_PARAMETERS_GRAMMAR: JsonDict = {
    "properties": {
        "type": {"const": "object"},
        "properties": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {"type": {"enum": ["number", "integer", "string", "boolean"]},
                                             "description": {"type": "string"}},
            "required": ["type", "description"], "additionalProperties": False}},
        "required": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["type", "properties", "required"],
    "additionalProperties": False,
}


def _require_arguments(schema: JsonDict) -> None:
    schema["required"] = ["name", "description", "parameters", "arguments", "code"]


class ToolReply(BaseModel):
    model_config = ConfigDict(json_schema_extra=_require_arguments)

    name: str
    description: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(json_schema_extra=_PARAMETERS_GRAMMAR)
    arguments: dict[str, Any] = Field(default_factory=dict)
    code: str = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be a Python identifier of at most 64 characters")
        return v


def static_problems(reply: ToolReply, expected: Any) -> list[str]:
    """What is wrong with a tool before running it; empty when it may run."""
    problems: list[str] = []
    schema = reply.parameters
    if schema.get("type") != "object":
        problems.append('schema: parameters must be a JSON Schema with "type": "object"')
    try:
        Draft202012Validator.check_schema(schema)
        Draft202012Validator(schema).validate(reply.arguments)
    except SchemaError as exc:
        problems.append(f"schema: {exc.message}")
    except ValidationError as exc:
        problems.append(f"arguments: {exc.message}")
    try:
        tree = ast.parse(reply.code)
    except SyntaxError as exc:
        return [*problems, f"code: syntax error line {exc.lineno}: {exc.msg}"]
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    fn = functions.get(reply.name)
    if fn is None:
        problems.append(f"code: no top-level function named {reply.name!r}")
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        for module in modules:
            if module.split(".")[0] not in _STDLIB:
                problems.append(f"code: imports {module!r}, which is not in the standard library")
    if fn is not None:
        params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
        accepts_any = fn.args.kwarg is not None
        unknown = [a for a in reply.arguments if a not in params and not accepts_any]
        if unknown:
            problems.append(f"code: {reply.name}() has no parameter {', '.join(unknown)}")
        names_used = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
        if params and not (params & names_used) and not accepts_any:
            problems.append("code: the function ignores its arguments")
        for node in ast.walk(fn):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) and node.value.value is not None:
                if answers_match(node.value.value, expected):
                    problems.append("code: returns the expected answer as a constant (hard-coded)")
                    break
    return problems


def _known_facts(dec: Decomposition, step: DecompositionStep) -> list[dict[str, str]]:
    by_id = {s.id: s for s in dec.steps}
    return [
        {"step": d, "sub_question": by_id[d].sub_question, "sub_answer": by_id[d].sub_answer} for d in step.depends_on
    ]


def synthesis_prompt(dec: Decomposition, step: DecompositionStep) -> str:
    return (
        f"Main question (context): {dec.question}\n"
        f"Step: {step.sub_question}\n"
        f"Answers of earlier steps it uses: {json.dumps(_known_facts(dec, step), ensure_ascii=False)}\n"
        f"The call you write must return exactly: {step.sub_answer}\n"
        "Write a reusable tool (general parameters, not this one question) and the call statement "
        f'(the arguments for this step). Reply as:\n{EXAMPLE}'
    )


def _scale_prompt(tool: ToolImplementation, call: ReferenceCall) -> str:
    return (
        "Generalise this tool (complexity scaling): add optional parameters with defaults that let it "
        "handle more cases (more units, more table rows, a precision, input validation with clear "
        "errors) while the existing call still returns the same result.\n"
        f"Tool: {json.dumps(tool.spec.model_dump(include={'name', 'description', 'input_schema'}))}\n"
        f"Code:\n{tool.source}\nExisting call arguments: {json.dumps(call.arguments)}\n"
        f"It must keep returning: {json.dumps(call.expected)}. Keep the same function name. Reply as:\n{EXAMPLE}"
    )


async def _try(
    sandbox: SandboxRunner, reply: ToolReply, expected: Any, attempt: int, variant: str
) -> SynthAttempt:
    record = SynthAttempt(attempt=attempt, variant=variant, name=reply.name)
    problems = static_problems(reply, expected)
    if problems:
        record.error = "; ".join(problems)
        return record
    result = await sandbox.call(reply.code, reply.name, reply.arguments)
    record.latency_s = round(result.latency_s, 4)
    if not result.ok:
        record.error = f"{result.error_kind or 'error'}: {result.error}"
        return record
    record.result = result.value
    if not answer_in_result(result.value, expected):  # records accepted: a normalised leaf value must equal it
        record.error = (
            f"wrong_result: the call returned {json.dumps(result.value, default=str)[:200]}, expected {expected!r}"
        )
        return record
    record.ok = True
    return record


def implementation_of(reply: ToolReply) -> ToolImplementation:
    return ToolImplementation(
        spec=ToolSpec(
            server="synthesized", name=reply.name, description=reply.description, input_schema=reply.parameters
        ),
        source=reply.code,
        entrypoint=reply.name,
    )


async def synthesize_one(
    ctx: PipelineContext, sandbox: SandboxRunner, dec: Decomposition, step: DecompositionStep
) -> Outcome:
    messages = [ChatMessage(role="user", content=synthesis_prompt(dec, step))]
    attempts: list[SynthAttempt] = []
    audit: list[dict[str, Any]] = []
    accepted: ToolReply | None = None
    accepted_result: Any = None
    for attempt in range(ctx.config.synth_attempts):
        try:
            reply, calls = await ctx.ask(messages, ToolReply, system=SYSTEM, prompt_version=PROMPT_VERSION)
        except LLMOutputError as exc:
            audit += exc.audit
            attempts.append(SynthAttempt(attempt=attempt, error=f"bad_reply: {exc.reason}"))
            break  # the model cannot produce a valid reply even after its own retries
        audit += calls
        record = await _try(sandbox, reply, step.sub_answer, attempt, "base")
        attempts.append(record)
        if record.ok:
            accepted, accepted_result = reply, record.result
            break
        messages = [
            *messages,
            ChatMessage(role="assistant", content=calls[-1].get("raw", "")),
            ChatMessage(
                role="user", content=f"That tool failed: {record.error}. Fix it and reply with the whole tool again."
            ),
        ]
    synth_id = stable_id("tool", dec.id, step.id, prefix="tool_")
    meta = {"attempts": [a.model_dump(mode="json") for a in attempts]}
    if accepted is None:
        last = attempts[-1].error if attempts else "no attempt"
        return Outcome.drop(
            f"synthesis_failed: {len(attempts)} attempt(s); last: {last}", failed=True, audit=[*audit, meta]
        )
    implementation = implementation_of(accepted)
    call = ReferenceCall(
        synth_id=synth_id, arguments=accepted.arguments, expected=step.sub_answer, result=accepted_result
    )
    variant = "base"
    if ctx.config.complexity_scaling:
        try:
            scaled, calls = await ctx.ask(_scale_prompt(implementation, call), ToolReply, system=SYSTEM,
                                          prompt_version=SCALE_PROMPT_VERSION)
            audit += calls
            scaled = scaled.model_copy(update={"arguments": accepted.arguments})
            record = await _try(sandbox, scaled, step.sub_answer, len(attempts), "scaled")
        except LLMOutputError as exc:
            audit += exc.audit
            attempts.append(SynthAttempt(attempt=len(attempts), variant="scaled", error=f"bad_reply: {exc.reason}"))
        else:
            attempts.append(record)
            if record.ok:
                implementation, variant = implementation_of(scaled), "scaled"
                call = call.model_copy(update={"result": record.result})
    tool = SynthesizedTool(
        id=synth_id, decomposition_id=dec.id, qa_id=dec.qa_id, step_id=step.id, sub_question=step.sub_question,
        implementation=implementation, call=call, variant=variant, attempts=attempts,
    )
    return Outcome.keep(tool, audit=audit)


def tool_steps(decs: list[Decomposition]) -> list[tuple[str, tuple[Decomposition, DecompositionStep]]]:
    return [
        (stable_id("tool", d.id, s.id, prefix="tool_"), (d, s))
        for d in decs
        for s in d.steps
        if s.needs_tool
    ]


async def run_synthesize(ctx: PipelineContext) -> StageCounts:
    items = tool_steps(ctx.unique_outputs("verify", Decomposition))
    async with SandboxRunner(ctx.config) as sandbox:
        return await ctx.map_stage(
            "synthesize", SynthesizedTool, items, lambda pair: synthesize_one(ctx, sandbox, *pair)
        )
