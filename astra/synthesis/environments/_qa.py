"""Stage 1: QA input (JSONL) or multi-hop QA generation from a domain list or a small corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from astra.errors import validation_problem
from astra.records import QAItem, stable_id
from astra.synthesis._llm import LLMOutputError
from astra.synthesis._stage import Outcome, StageCounts
from astra.synthesis.environments._context import PipelineContext

PROMPT_VERSION = "qa-gen-v1"

SYSTEM = (
    "You write multi-hop questions for training tool-using agents. Every question needs 2-4 "
    "steps, each computable by a short Python function using only the standard library "
    "(arithmetic over facts stated in the question, unit conversion, date arithmetic, string "
    "operations, lookups in a small table). Reply with JSON only."
)


class QALine(BaseModel):
    """One line of an input QA file."""

    model_config = ConfigDict(extra="ignore")

    question: str = Field(min_length=1)
    answer: str | None = Field(
        default=None,
        description="missing: a question-only line (the original ASTRA's "
        "questions.jsonl); decomposition proposes the answer, unverified until tools reproduce it",
    )
    domain: str | None = None

    @field_validator("answer", mode="before")
    @classmethod
    def _answer_text(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, int | float):
            return str(v)
        return v

    @field_validator("question", "answer")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()


class GeneratedQALine(QALine):
    answer: str  # pyright: ignore[reportIncompatibleVariableOverride, reportGeneralTypeIssues]  (required here)


class GeneratedQA(BaseModel):
    items: list[GeneratedQALine] = Field(min_length=1)


def qa_id(question: str, answer: str, domain: str | None) -> str:
    return stable_id(question.strip(), answer.strip(), domain, prefix="qa_")


def read_qa_jsonl(path: str | Path) -> tuple[list[QAItem], list[str]]:
    """Valid items, and one ``FILE:LINE: field: reason`` message per bad or duplicate line.

    A line without ``answer`` (the original ASTRA's ``questions.jsonl``: ``{"question", "domain"}``)
    is an item whose answer the decomposition proposes (``answer_unverified``). A FIFO, a device
    or a non-UTF-8 line is reported, never read forever or raised."""
    from astra.registry import RecordError, iter_json_lines, read_input_file

    path = Path(path)
    items: list[QAItem] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    try:
        data = read_input_file(path)
    except RecordError as exc:
        return [], [f"{path}:0: {exc.field}: {exc.reason}"]
    for lineno, doc in iter_json_lines(path, data):
        if doc is None:
            continue
        where = f"{path}:{lineno}"
        if isinstance(doc, RecordError):
            errors.append(f"{where}: (line): " + (f"invalid JSON: {doc.reason}" if doc.field == "json" else doc.reason))
            continue
        if not isinstance(doc, dict):
            errors.append(f"{where}: (line): expected a JSON object, got {type(doc).__name__}")
            continue
        try:
            parsed = QALine.model_validate(doc)
        except ValidationError as exc:
            errors.append(validation_problem(where, exc))
            continue
        item_id = qa_id(parsed.question, parsed.answer or "", parsed.domain)
        if item_id in seen:
            errors.append(f"{where}: question: duplicate of line {seen[item_id]}")
            continue
        seen[item_id] = lineno
        items.append(QAItem(id=item_id, question=parsed.question, answer=parsed.answer or "", domain=parsed.domain,
                            source=where, answer_unverified=parsed.answer is None))
    return items, errors


def _corpus_chunks(path: Path, max_chars: int = 1500) -> list[str]:
    paragraphs = [p.strip() for p in path.read_text("utf-8").split("\n\n") if p.strip()]
    return [p[:max_chars] for p in paragraphs]


class _Source(BaseModel):
    kind: str
    text: str
    domain: str | None = None


async def run_qa(ctx: PipelineContext) -> tuple[StageCounts, list[str]]:
    """Accept the input file and/or generate QA; returns the stage counts and input errors."""
    config = ctx.config
    items: list[tuple[str, Any]] = []
    errors: list[str] = []
    if config.qa_path is None and not config.domains and config.corpus_path is None and config.resume_from is None:
        raise ValueError("no QA input: set qa_path, domains, corpus_path or resume_from in the config")
    for key in ("qa_path", "corpus_path", "resume_from"):
        path = getattr(config, key)
        if path is not None and not path.is_file():
            raise ValueError(f"{key}: {path}: no such file")
    if config.qa_path is not None:
        good, errors = read_qa_jsonl(config.qa_path)
        items += [(q.id, q) for q in good]
        items += [(stable_id("bad_input", e, prefix="bad_"), e) for e in errors]
    sources: list[_Source] = [_Source(kind="domain", text=d, domain=d) for d in config.domains]
    if config.corpus_path is not None and config.corpus_path.suffix.lower() == ".jsonl":
        # the original ASTRA's knowledge corpus: {"domain", "knowledge_corpus"} (empty corpus: a bare domain)
        from astra.synthesis._original import read_knowledge_corpus

        found = read_knowledge_corpus(config.corpus_path)
        errors += found.errors
        items += [(stable_id("bad_input", e, prefix="bad_"), e) for e in found.errors]
        sources += [_Source(kind="corpus", text=text[:1500], domain=domain) if text else
                    _Source(kind="domain", text=domain or "", domain=domain) for domain, text in found.items]
    elif config.corpus_path is not None:
        sources += [_Source(kind="corpus", text=c) for c in _corpus_chunks(config.corpus_path)]
    if ctx.seeded:  # the original's environment results: their QA items (the later stages take theirs)
        items += [(q.id, q) for q in ctx.seeded["qa"].values()]
        errors += ctx.seed_errors
        items += [(stable_id("bad_input", e, prefix="bad_"), e) for e in ctx.seed_errors]
    items += [(stable_id("gen", s.kind, s.text, config.questions_per_source, prefix="gen_"), s) for s in sources]

    async def one(item: QAItem | str | _Source) -> Outcome:
        if isinstance(item, QAItem):
            return Outcome.keep(item)
        if isinstance(item, str):
            return Outcome.drop(f"bad_input: {item}")
        return await _generate(ctx, item)

    counts = await ctx.map_stage("qa", QAItem, items, one)
    return counts, errors


async def _generate(ctx: PipelineContext, source: _Source) -> Outcome:
    n = ctx.config.questions_per_source
    if source.kind == "domain":
        prompt = f"Domain: {source.text}\nWrite {n} multi-hop questions with their exact final answers."
    else:
        prompt = (
            f"Text:\n{source.text}\n\nWrite {n} multi-hop questions answerable from facts in this text "
            "(state the needed facts in the question), with their exact final answers."
        )
    prompt += ' Reply as {"items": [{"question": "...", "answer": "..."}]}.'
    try:
        reply, audit = await ctx.ask(prompt, GeneratedQA, system=SYSTEM, prompt_version=PROMPT_VERSION)
    except LLMOutputError as exc:
        return Outcome.drop(f"generation_failed: {exc.reason}", failed=True, audit=exc.audit)
    out = {}
    for q in reply.items[:n]:
        item_id = qa_id(q.question, q.answer, q.domain or source.domain)
        out[item_id] = QAItem(id=item_id, question=q.question, answer=q.answer, domain=q.domain or source.domain,
                              source=f"generated:{ctx.model_name}:{source.kind}")
    return Outcome.keep(*out.values(), audit=audit)
