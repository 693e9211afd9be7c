"""Judge calibration: a bundled set of trajectories with known defects, every judged item labelled
with its justification, and the agreement of a judge with those labels.

``astra judge calibrate --judge MODEL`` scores every case with the trajectory judge (rules first,
then one structured call, exactly as the reward stage does), compares each item verdict with its
label, and reports per dimension the accuracy and Cohen's kappa (over the 0 / 0.5 / 1 categories),
per defect the share of items right, and over repeated runs the spread (min / max / stdev of the
accuracy, and the share of items whose verdict changed). A failed judge call counts as a
disagreement on every item of its case, never as agreement.

``scripted:calibration-oracle`` replies with the labels (an exact report: the metric plumbing's
fixed point); ``--judge rules`` measures what rules alone can decide.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from astra.client import Model, ModelResponse, ModelSettings, register_script
from astra.errors import validation_problem
from astra.records import ChatMessage, Task, Trajectory
from astra.synthesis.trajectories._config import JudgeMode
from astra.synthesis.trajectories._reward import DIMENSIONS, reward_trajectory

OUT_PATH = Path(__file__).resolve().parent / "data" / "calibration.jsonl"
CATEGORIES = (0.0, 0.5, 1.0)


class Defect(StrEnum):
    CLEAN = "clean"
    HALLUCINATED_PARAMETER = "hallucinated_parameter"
    REDUNDANT_CALL = "redundant_call"
    IGNORED_ERROR = "ignored_error"
    WRONG_ANSWER = "wrong_answer"
    UNGROUNDED_ANSWER = "ungrounded_answer"
    FABRICATED_URL = "fabricated_url"
    LANGUAGE_MISMATCH = "language_mismatch"
    MISSING_PLAN = "missing_plan"


class ItemLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: str = Field(
        description="the judged item: C<n>, T<n>, P<n>, U<n>, F.understand, F.plan, A.relevance, A.summary"
    )
    score: float
    why: str = Field(min_length=1, description="the label's justification")

    @field_validator("score")
    @classmethod
    def _scale(cls, v: float) -> float:
        if v not in CATEGORIES:
            raise ValueError(f"score {v} is not one of 0, 0.5, 1")
        return v


class CalibrationCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    defect: Defect
    note: str = ""
    task: Task
    trajectory: Trajectory
    labels: list[ItemLabel] = Field(min_length=1)


def dimension_of_ref(ref: str) -> str:
    """Which of the seven dimensions an item ref belongs to."""
    fixed = {"F.understand": "query_understand", "F.plan": "query_plan", "A.relevance": "final_answer",
             "A.summary": "final_answer"}
    if ref in fixed:
        return fixed[ref]
    by_prefix = {"C": "tool_concise", "T": "tool_call", "P": "tool_plan", "U": "tool_understand"}
    if re.fullmatch(r"[CTPU]\d+", ref):
        return by_prefix[ref[0]]
    raise ValueError(f"unknown item ref {ref!r}")


def load_calibration_set(path: str | Path | None = None) -> tuple[list[CalibrationCase], list[str]]:
    """The cases of a calibration JSONL, and one ``FILE:LINE: field: reason`` per bad line (kept going)."""
    path = Path(path) if path is not None else OUT_PATH
    cases: list[CalibrationCase] = []
    errors: list[str] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                case = CalibrationCase.model_validate_json(line)
            except ValidationError as exc:
                errors.append(validation_problem(where, exc))
                continue
            if case.id in seen:
                errors.append(f"{where}: id: duplicate case {case.id!r}")
                continue
            bad = [lb.ref for lb in case.labels if not _known_ref(lb.ref)]
            if bad:
                errors.append(f"{where}: labels: unknown item ref(s) {bad}")
                continue
            seen.add(case.id)
            cases.append(case)
    return cases, errors


def _known_ref(ref: str) -> bool:
    try:
        dimension_of_ref(ref)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- the oracle judge


class OracleJudge(Model):
    """``scripted:calibration-oracle``: answers a trajectory-judge prompt with the set's labels."""

    name = "scripted:calibration-oracle"

    def __init__(self, path: str | Path | None = None) -> None:
        cases, errors = load_calibration_set(path)
        if errors:
            raise ValueError(f"calibration set has {len(errors)} bad line(s): {errors[0]}")
        self.labels = {c.trajectory.id: {lb.ref: lb for lb in c.labels} for c in cases}
        self.calls = 0

    async def request(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] = (),
                      settings: ModelSettings | None = None) -> ModelResponse:
        self.calls += 1
        prompt = next((m.content or "" for m in reversed(messages) if m.role == "user"), "")
        found = re.search(r"\(trajectory ([^)\s]+)\)", prompt)
        if not found or found.group(1) not in self.labels:
            text = "I can only judge trajectories of the calibration set."
        else:
            labels = self.labels[found.group(1)]
            shape = json.loads(prompt[prompt.rindex("\n{") + 1:])
            reply: dict[str, Any] = {}
            for section, value in shape.items():
                items = value if isinstance(value, list) else [value]
                out = []
                for item in items:
                    named = {"first_response_understanding": "F.understand", "first_response_plan": "F.plan",
                             "answer_relevance": "A.relevance", "answer_summary": "A.summary"}
                    ref = named[section] if section in named else item["id"]
                    label = labels[ref]
                    if "success" in item:
                        out.append({"id": item["id"], "success": label.score == 1.0, "reason": label.why})
                    else:
                        out.append({"id": item["id"], "score": label.score, "reason": label.why})
                reply[section] = out if isinstance(value, list) else out[0]
            text = json.dumps(reply, ensure_ascii=False)
        return ModelResponse(message=ChatMessage(role="assistant", content=text), model=self.name)


register_script("calibration-oracle", OracleJudge)


# --------------------------------------------------------------------------- agreement


def cohen_kappa(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Cohen's kappa of (judge, label) pairs over the 0 / 0.5 / 1 categories; None when undefined
    (no pairs, or chance agreement is 1 while observed agreement is not)."""
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(1 for a, b in pairs if a == b) / n
    judge = Counter(a for a, _ in pairs)
    label = Counter(b for _, b in pairs)
    expected = sum(judge[c] * label[c] for c in set(judge) | set(label)) / (n * n)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else None
    return round((observed - expected) / (1 - expected), 4)


class DimensionAgreement(BaseModel):
    dimension: str
    items: int
    agree: int
    accuracy: float | None
    kappa: float | None


class CalibrationRun(BaseModel):
    run: int
    dimensions: list[DimensionAgreement]
    by_defect: dict[str, float] = Field(description="share of labelled items the judge got right, per defect")
    failed_cases: list[str] = Field(default_factory=list, description="judge_failed: every item counts as wrong")
    judge_calls: int = 0
    verdicts: dict[str, float | None] = Field(default_factory=dict, description="case/ref -> the judge's score")


class DimensionSpread(BaseModel):
    dimension: str
    accuracy_mean: float | None
    accuracy_min: float | None
    accuracy_max: float | None
    accuracy_stdev: float | None
    kappa_mean: float | None
    changed_items: float | None = Field(description="share of items whose verdict differed between runs")


class CalibrationReport(BaseModel):
    judge: str
    mode: JudgeMode
    set: str
    cases: int
    items: int
    repeats: int
    runs: list[CalibrationRun]
    spread: list[DimensionSpread]
    judge_calls_per_case: float

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"judge calibration: {self.judge} ({self.cases} cases, {self.items} items, "
                            f"{self.repeats} run(s))")
        for col in ("dimension", "items", "accuracy", "kappa", "min-max", "stdev", "changed"):
            table.add_column(col)
        first = {d.dimension: d for d in self.runs[0].dimensions}
        for s in self.spread:

            def f(v: float | None) -> str:
                return "n/a" if v is None else f"{v:.3f}"

            table.add_row(s.dimension, str(first[s.dimension].items), f(s.accuracy_mean), f(s.kappa_mean),
                          f"{f(s.accuracy_min)}-{f(s.accuracy_max)}", f(s.accuracy_stdev), f(s.changed_items))
        return table


async def _score_case(
    case: CalibrationCase, judge: Model | None, mode: JudgeMode
) -> tuple[dict[str, float], bool, int]:
    reward, _ = await reward_trajectory(case.task, case.trajectory, judge, mode=mode)
    if reward.status != "ok":
        return {}, False, reward.judge_calls or 0
    return {i["ref"]: i["score"] for i in reward.items if i["ref"] != "-"}, True, reward.judge_calls or 0


async def calibrate(
    cases: Sequence[CalibrationCase], judge: Model | None, *, mode: JudgeMode = JudgeMode.LLM, repeats: int = 1,
    concurrency: int = 4, set_name: str = "bundled",
) -> CalibrationReport:
    """Score every case ``repeats`` times and compare each item verdict with its label."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    limiter = anyio.CapacityLimiter(max(1, concurrency))
    runs: list[CalibrationRun] = []
    for run in range(repeats):
        results: dict[str, tuple[dict[str, float], bool, int]] = {}

        async def one(case: CalibrationCase, into: dict[str, tuple[dict[str, float], bool, int]] = results) -> None:
            async with limiter:
                into[case.id] = await _score_case(case, judge, mode)

        async with anyio.create_task_group() as tg:
            for case in cases:
                tg.start_soon(one, case)
        pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
        wrong: dict[str, int] = defaultdict(int)
        right: dict[str, int] = defaultdict(int)
        verdicts: dict[str, float | None] = {}
        for case in cases:
            got, ok, _ = results[case.id]
            for lb in case.labels:
                verdict = got.get(lb.ref) if ok else None
                verdicts[f"{case.id}/{lb.ref}"] = verdict
                dim = dimension_of_ref(lb.ref)
                # a failed judge never agrees: pair it with a category that differs from the label
                pairs[dim].append((verdict if verdict is not None else -1.0, lb.score))
                if verdict == lb.score:
                    right[case.defect] += 1
                else:
                    wrong[case.defect] += 1
        dims = []
        for d in DIMENSIONS:
            p = pairs.get(d, [])
            agree = sum(1 for a, b in p if a == b)
            dims.append(DimensionAgreement(dimension=d, items=len(p), agree=agree,
                                           accuracy=round(agree / len(p), 4) if p else None, kappa=cohen_kappa(p)))
        by_defect = {str(k): round(right[k] / (right[k] + wrong[k]), 4) for k in sorted(set(right) | set(wrong))}
        runs.append(CalibrationRun(run=run, dimensions=dims, by_defect=by_defect,
                                   failed_cases=sorted(c for c, (_, ok, _) in results.items() if not ok),
                                   judge_calls=sum(n for _, _, n in results.values()), verdicts=verdicts))
    spread = []
    for d in DIMENSIONS:
        accs = [a.accuracy for r in runs for a in r.dimensions if a.dimension == d and a.accuracy is not None]
        kappas = [a.kappa for r in runs for a in r.dimensions if a.dimension == d and a.kappa is not None]
        keys = [k for k in runs[0].verdicts if dimension_of_ref(k.split("/", 1)[1]) == d]
        changed = [k for k in keys if len({r.verdicts[k] for r in runs}) > 1]
        spread.append(DimensionSpread(
            dimension=d, accuracy_mean=round(statistics.fmean(accs), 4) if accs else None,
            accuracy_min=min(accs) if accs else None, accuracy_max=max(accs) if accs else None,
            accuracy_stdev=round(statistics.pstdev(accs), 4) if accs else None,
            kappa_mean=round(statistics.fmean(kappas), 4) if kappas else None,
            changed_items=round(len(changed) / len(keys), 4) if keys else None))
    calls = sum(r.judge_calls for r in runs)
    return CalibrationReport(
        judge=judge.name if judge is not None and mode is JudgeMode.LLM else "rules", mode=mode, set=set_name,
        cases=len(cases), items=sum(len(c.labels) for c in cases), repeats=repeats, runs=runs, spread=spread,
        judge_calls_per_case=round(calls / (len(cases) * repeats), 3) if cases else 0.0)
