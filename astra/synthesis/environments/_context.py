"""What every stage of a run shares: config, run directory, the model, and stage inputs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from astra.client import Model, ModelSettings
from astra.records import ChatMessage
from astra.runs import RunDir
from astra.synthesis._llm import ask_json
from astra.synthesis._stage import Outcome, Stage, StageCounts
from astra.synthesis.environments._models import EnvironmentPipelineConfig

T = TypeVar("T", bound=BaseModel)


def resolve_pipeline_model(spec: str) -> Model:
    """The model of a spec string ('scripted:..', 'local:smollm2', 'openai:..'), via astra.client."""
    from astra.client import resolve_model  # the client unit owns provider construction

    return resolve_model(spec)


@dataclass
class PipelineContext:
    config: EnvironmentPipelineConfig
    model: Model | None = None
    progress: bool = True
    run: RunDir = field(init=False)

    seeded: dict[str, dict[str, Any]] = field(init=False, default_factory=dict)
    seed_errors: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.run = RunDir(self.config.run_dir, config=self.config.model_dump(mode="json"))
        if self.config.resume_from is not None and self.config.resume_from.is_file():
            self._seed_from_original(self.config.resume_from)

    def _seed_from_original(self, path: Any) -> None:
        """The original ASTRA's environment results: QA items, their decompositions and (when every
        step has its tool_necessity) the necessity verdicts take the place of those stages' model calls."""
        from astra.synthesis._original import read_env_results

        found = read_env_results(path)
        self.seed_errors = found.errors
        qa: dict[str, Any] = {}
        decompose: dict[str, Any] = {}
        necessity: dict[str, Any] = {}
        for item in found.items:
            qa[item.qa.id] = item.qa
            decompose[item.qa.id] = item.decomposition
            steps = item.decomposition.steps
            if all(s.needs_tool is not None for s in steps):
                if item.necessity_ok is False or not any(s.needs_tool for s in steps):
                    necessity[item.decomposition.id] = "necessity_illegitimate: the original marked it so" if (
                        item.necessity_ok is False) else "no_step_needs_a_tool"
                else:
                    necessity[item.decomposition.id] = item.decomposition
        self.seeded = {"qa": qa, "decompose": decompose, "necessity": necessity} if found.items or found.errors else {}

    def get_model(self) -> Model:
        if self.model is None:
            self.model = resolve_pipeline_model(self.config.model)
        return self.model

    @property
    def model_name(self) -> str:
        return self.model.name if self.model is not None else self.config.model

    def settings(self) -> ModelSettings:
        return ModelSettings(json_output=True, temperature=0.0, max_tokens=self.config.max_tokens,
                             timeout_s=self.config.model_timeout_s)

    async def ask(
        self, prompt: str | Sequence[ChatMessage], output: type[T], *, system: str, prompt_version: str
    ) -> tuple[T, list[dict[str, Any]]]:
        return await ask_json(
            self.get_model(),
            prompt,
            output,
            system=system,
            prompt_version=prompt_version,
            settings=self.settings(),
            retries=self.config.llm_retries,
        )

    def stage(self, name: str, output_model: type[T]) -> Stage[T]:
        return Stage(self.run, name, output_model)

    def outputs_of(self, name: str, output_model: type[T], input_ids: set[str] | None = None) -> list[T]:
        """A finished stage's outputs, limited to the given input ids (stale entries of an old input set are
        ignored)."""
        stage = Stage(self.run, name, output_model)
        return [
            output_model.model_validate(o)
            for e in stage.entries()
            if input_ids is None or e.id in input_ids
            for o in e.outputs
        ]

    def unique_outputs(self, name: str, output_model: type[T]) -> list[T]:
        """A finished stage's outputs, one per id (two inputs may yield the same record)."""
        return list({o.id: o for o in self.outputs_of(name, output_model)}.values())  # type: ignore[attr-defined]

    async def map_stage(
        self,
        name: str,
        output_model: type[BaseModel],
        items: list[tuple[str, Any]],
        fn: Callable[[Any], Awaitable[Outcome]],
        concurrency: int | None = None,
        gates: Mapping[str, float] | None = None,
    ) -> StageCounts:
        """Run stage ``name`` over (id, item) pairs with the run's concurrency and progress settings
        (``gates``: the current thresholds, see :meth:`Stage.run_items`). Inputs seeded from the
        original's files (``resume_from``) take their record instead of ``fn``."""
        seeded = self.seeded.get(name) if name != "qa" else None
        run = fn
        if seeded:
            items = [(i, (i, it)) for i, it in items]

            async def seeded_or_run(pair: tuple[str, Any]) -> Outcome:
                found = seeded.get(pair[0])
                if found is None:
                    return await fn(pair[1])
                return Outcome.drop(found) if isinstance(found, str) else Outcome.keep(found)

            run = seeded_or_run

        return await self.stage(name, output_model).run_items(
            items, run, concurrency=concurrency or self.config.concurrency, progress=self.progress, description=name,
            gates=gates,
        )

    def entry_ids(self, name: str) -> set[str]:
        return {e.id for e in Stage(self.run, name, BaseModel).entries()}
