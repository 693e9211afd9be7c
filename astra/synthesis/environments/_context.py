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

    def __post_init__(self) -> None:
        self.run = RunDir(self.config.run_dir, config=self.config.model_dump(mode="json"))

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
        """A finished stage's outputs, limited to the given input ids (stale entries of an old input set are ignored)."""
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
        (``gates``: the current thresholds, see :meth:`Stage.run_items`)."""
        return await self.stage(name, output_model).run_items(
            items, fn, concurrency=concurrency or self.config.concurrency, progress=self.progress, description=name,
            gates=gates,
        )

    def entry_ids(self, name: str) -> set[str]:
        return {e.id for e in Stage(self.run, name, BaseModel).entries()}
