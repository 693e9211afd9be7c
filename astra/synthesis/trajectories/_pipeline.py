"""The trajectory pipeline: graph -> chains -> verify -> tasks (+quality) -> rollout -> reward -> export.

Every stage writes ``<out_dir>/<stage>.jsonl`` through :class:`astra.synthesis.Stage` (one
line per input; a killed run resumes where it stopped). Stages read the previous stage's
outputs from the run directory, so each can also be run on its own (``astra traj <stage>``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from astra.client import FixedSettings, Model, ModelSettings, provider_of
from astra.errors import AstraError
from astra.records import (
    EnvironmentLaunch,
    EnvironmentSpec,
    FailureClass,
    GraphEdge,
    HttpLaunch,
    Reward,
    ServerSpec,
    SimulatedLaunch,
    StdioLaunch,
    Task,
    TerminationReason,
    ToolChain,
    ToolGraph,
    ToolSpec,
    Trajectory,
    stable_id,
)
from astra.runs import RunDir
from astra.synthesis._llm import LLMOutputError, ask_json
from astra.synthesis._stage import Funnel, Outcome, Stage, StageCounts
from astra.synthesis.trajectories import _chains, _graph
from astra.synthesis.trajectories._config import JudgeMode, TrajectoryConfig
from astra.synthesis.trajectories._export import SFTSample, report_lines, select, write_exports
from astra.synthesis.trajectories._reward import score_trajectory
from astra.synthesis.trajectories._simulate import SimulatedServer, mark_injected
from astra.synthesis.trajectories._tasks import (
    PERSONAS_PATH,
    Persona,
    generate_tasks,
    load_personas,
    rule_quality,
    score_task,
)
from astra.synthesis.trajectories._templates import load_template
from astra.synthesis.trajectories._tokens import gguf_tokenizer
from astra.synthesis.trajectories._verify import verify_chain

STAGES = ("graph", "chains", "verify", "tasks", "quality", "rollout", "reward", "export")
"""Stage files in order (the ``tasks`` CLI verb runs ``tasks`` and ``quality``)."""

ROLLOUT_SYSTEM = (
    "You are a helpful assistant with tools. Use the tools to get the facts you need, one step at a time, "
    "then answer the user's request directly and concisely."
)
_FAILED_TERMINATIONS = {TerminationReason.model_error, TerminationReason.server_error, TerminationReason.timeout,
                        TerminationReason.cancelled}


class TimeoutModel(FixedSettings):
    """The run's per-request timeout on every call (stages pass settings without one)."""

    def __init__(self, inner: Model, timeout_s: float) -> None:
        super().__init__(inner, ModelSettings(timeout_s=timeout_s))
        self.timeout_s = timeout_s


class PipelineError(AstraError, RuntimeError):
    """A user-facing problem with a run (a missing server, a stage run before its inputs exist)."""


class PipelineResult(BaseModel):
    run_dir: str
    funnel: Funnel
    exports: dict[str, str] = Field(default_factory=dict)
    exported: int = 0
    graph: dict[str, Any] = Field(default_factory=dict)
    coverage: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir, "exports": self.exports, "exported": self.exported, "graph": self.graph,
            "coverage": self.coverage, "seconds": round(self.seconds, 2),
            "funnel": [{**s.model_dump(), "model_calls_per_item": s.calls_per_item} for s in self.funnel.stages],
            "judge_calls_per_sample": next((s.calls_per_item for s in self.funnel.stages if s.stage == "reward"), None),
        }


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str), "utf-8")
    os.replace(tmp, path)


class TrajectoryPipeline:
    """One run of the pipeline over a run directory. ``models`` maps a model spec to an
    instance (tests pass scripted models); other specs go through ``astra.client.resolve_model``."""

    def __init__(
        self, config: TrajectoryConfig, *, models: dict[str, Model] | None = None, progress: bool = True
    ) -> None:
        self.config = config
        self.progress = progress
        self.run = RunDir(config.out_dir, config=config.model_dump(mode="json"))
        self._models: dict[str, Model] = dict(models or {})
        self._owned: list[Model] = []
        self._timed: dict[str, Model] = {}
        self._registry: Any = None
        self._servers: list[ServerSpec] | None = None
        self._environments: dict[str, EnvironmentSpec] = {}
        self._originals: Any = None
        self.server_plans: dict[str, Any] = {}

    # ------------------------------------------------------------------ plumbing

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from astra.registry import Registry

            self._registry = Registry.open(self.config.home)
        return self._registry

    def model(self, spec: str) -> Model:
        if spec not in self._models:
            from astra.client import resolve_model

            self._models[spec] = resolve_model(spec)
            self._owned.append(self._models[spec])
        if spec not in self._timed:
            self._timed[spec] = TimeoutModel(self._models[spec], self.config.model_timeout_s)
        return self._timed[spec]

    async def aclose(self) -> None:
        for m in self._owned:
            await m.aclose()
        self._owned.clear()
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def stage(self, name: str, model: type[BaseModel]) -> Stage[Any]:
        return Stage(self.run, name, model)

    def _require(self, name: str) -> None:
        if self.run.status(name) != "done":
            verb = "tasks" if name == "quality" else name
            raise PipelineError(f"{self.run.path}: stage {name!r} has not run yet; run `astra traj {verb}` first "
                                "(or `astra traj run`)")

    # ------------------------------------------------------------------ servers

    async def servers(self) -> list[ServerSpec]:
        """The run's servers, snapshotted in ``servers.json`` on first use (a resumed run sees the same tools)."""
        if self._servers is not None:
            return self._servers
        snapshot = self.run.path / "servers.json"
        self._load_environments()
        if snapshot.exists():
            self._servers = [ServerSpec.model_validate(s) for s in json.loads(snapshot.read_text("utf-8"))]
            return self._servers
        from astra.registry import discover_tools

        specs: list[ServerSpec] = []
        for name in self.config.servers:
            spec = self.registry.get_server(name)
            if spec is None:
                known = ", ".join(self.registry.server_names()[:20]) or "none"
                raise PipelineError(f"server {name!r} is not in the registry at {self.registry.path} (known: {known})")
            specs.append(spec)
        for spec in self.config.inline_servers:
            if not spec.tools and isinstance(spec.launch, (StdioLaunch, HttpLaunch)):
                found = await discover_tools(spec.launch, name=spec.name)
                spec = spec.model_copy(update={"tools": found.tools})
            self.registry.upsert_server(spec)
            specs.append(spec)
        named = {s.name for s in specs}
        for spec in self.originals().servers():  # servers of the original files' mcp_info (documented, maybe remote)
            if spec.name not in named and spec.name not in self._environments:
                self.registry.upsert_server(spec)
                specs.append(spec)
        for env in self._environments.values():
            spec = ServerSpec(
                id=stable_id("environment", env.id, prefix="srv-"),
                name=env.name,
                description=env.description,
                domain=env.provenance.get("domain") if isinstance(env.provenance.get("domain"), str) else None,
                launch=EnvironmentLaunch(environment_id=env.id),
                tools=[t.spec.model_copy(update={"server": env.name}) for t in env.tools],
                source=f"environment:{env.id}",
            )
            self.registry.save_environment(env)
            self.registry.upsert_server(spec)
            specs.append(spec)
        names = [s.name for s in specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PipelineError(f"servers named twice: {dup}")
        specs = [
            s.model_copy(update={"tools": [t.model_copy(update={"server": s.name}) for t in s.tools]}) for s in specs
        ]
        _write_json(snapshot, [s.model_dump(mode="json") for s in specs])
        self._servers = specs
        return specs

    def _load_environments(self) -> None:
        if self._environments or not self.config.environments:
            return
        for path in self.config.environments:
            try:
                env = EnvironmentSpec.model_validate_json(Path(path).read_text("utf-8"))
            except OSError as exc:
                raise PipelineError(f"{path}: cannot read environment: {exc.strerror}") from exc
            except ValueError as exc:
                raise PipelineError(f"{path}: not an EnvironmentSpec: {str(exc).splitlines()[0]}") from exc
            self._environments[env.name] = env

    def originals(self) -> Any:
        """The original ASTRA files this run starts from (``tasks_path``, ``resume_from``), read once."""
        if self._originals is None:
            from astra.synthesis._original import OriginalInputs

            try:
                self._originals = OriginalInputs(self.config.resume_from, self.config.tasks_path, self.graph_name())
            except ValueError as exc:
                raise PipelineError(str(exc)) from None
        return self._originals

    async def _seeded(self, stage_name: str, model: type[BaseModel]) -> StageCounts | None:
        """Seed ``stage_name`` from an original file (None: no file for it); a skipped stage is marked so."""
        originals = self.originals()
        if originals.skips(stage_name):
            self.run.mark(stage_name, "done", skipped=f"the run starts at {originals.start!r} (original files given)")
            return StageCounts(stage=stage_name)
        found = originals.get(stage_name)
        if found is None:
            return None
        await self.servers()
        outcomes = dict(originals.outcomes(stage_name))

        async def seed(item_id: str) -> Outcome:
            return outcomes[item_id]

        counts = await self.stage(stage_name, model).run_items(
            [(i, i) for i in outcomes], seed, concurrency=1, progress=self.progress,
            description=f"{stage_name}: from {Path(found.path).name}")
        self.run.mark(stage_name, "done", **counts.model_dump(exclude={"stage"}), imported_from=found.path)
        return counts

    async def tools(self) -> dict[str, ToolSpec]:
        return {t.qualified_name: t for s in await self.servers() for t in s.tools}

    # ------------------------------------------------------------------ 1. graph

    def graph_name(self) -> str:
        return self.config.graph.name or f"traj-{Path(self.config.out_dir).resolve().name}"

    def load_graph(self) -> ToolGraph:
        path = self.run.path / "graph.json"
        if not path.exists():
            raise PipelineError(f"{self.run.path}: no graph yet; run `astra traj graph` first")
        return ToolGraph.model_validate_json(path.read_text("utf-8"))

    async def build_graph(self) -> ToolGraph:
        path = self.run.path / "graph.json"
        if path.exists() and self.run.status("graph") == "done":
            return self.load_graph()
        originals = self.originals()
        if originals.skips("graph"):
            self.run.mark("graph", "done", skipped=f"the run starts at {originals.start!r} (original files given)")
            return ToolGraph(name=self.graph_name())
        if originals.graph is not None:  # the original's graph detect output: its chains as order edges
            await self.servers()
            graph = originals.graph
            version = self.registry.save_graph(graph)
            graph = graph.model_copy(update={"version": version})
            _write_json(path, graph.model_dump(mode="json"))
            found = originals.get("graph")
            self.run.mark("graph", "done", graph=graph.name, version=version, edges=len(graph.edges),
                          nodes=len(graph.nodes), imported_from=found.path, input_errors=found.errors[:50])
            return graph
        opts = self.config.graph
        servers = await self.servers()
        tools = await self.tools()
        t0 = time.perf_counter()
        stats: dict[str, Any]
        candidates, stats = _graph.generate_candidates(
            servers, cross_server=opts.cross_server, min_score=opts.min_candidate_score,
            max_sources_per_tool=opts.max_sources_per_tool,
        ) if opts.uses_candidates else ([], {"tools": len(tools), "candidates": 0})
        stats["seconds"] = round(time.perf_counter() - t0, 4)
        batches = _graph.batch_candidates(candidates, opts.batch_size)
        stats["llm_calls"] = len(batches) if opts.llm_verify else 0
        stats["server_pairs"] = _graph.server_pair_count(servers, opts.cross_server)
        self.run.mark("candidates", "done", **stats)
        by_id = dict(batches)
        judge = self.model(self.config.judge) if opts.llm_verify else None

        async def verify_batch(batch: list[_graph.Candidate]) -> Outcome:
            if judge is None:  # schema edges only
                return Outcome.keep(*[GraphEdge(src=c.src, dst=c.dst, kind=c.kind, bindings=c.bindings, score=c.score,
                                                provenance="schema", rationale=c.rationale or None) for c in batch])
            try:
                verdicts, audit = await ask_json(judge, _graph.edge_prompt(batch, tools), _graph.EdgeVerdicts,
                                                 system=_graph.EDGE_SYSTEM, prompt_version=_graph.EDGE_PROMPT_VERSION)
            except LLMOutputError as exc:
                return Outcome.drop(f"judge_failed: {exc.reason[:160]}", failed=True, audit=exc.audit)
            edges, why = _graph.verdicts_to_edges(batch, verdicts, tools, opts.min_edge_score)
            audit.append({"not_accepted": why})
            if not edges:
                return Outcome.drop(
                    "no_edge_accepted: " + ", ".join(f"{k} {n}" for k, n in sorted(why.items())), audit=audit
                )
            return Outcome.keep(*edges, audit=audit)

        stage = self.stage("graph", GraphEdge)
        await stage.run_items(list(by_id.items()), verify_batch, concurrency=self.config.concurrency,
                              progress=self.progress, description="graph: verify candidate edges")
        edges: list[GraphEdge] = list(stage.outputs())
        if opts.uses_server_chains:
            proposer = self.model(self.config.judge)

            async def propose(server: ServerSpec) -> Outcome:
                try:
                    detected, audit = await ask_json(proposer, _graph.chain_prompt(server), _graph.ChainDetections,
                                                     prompt_version=_graph.CHAIN_PROMPT_VERSION)
                except LLMOutputError as exc:
                    return Outcome.drop(f"judge_failed: {exc.reason[:160]}", failed=True, audit=exc.audit)
                found, outcome = _graph.chains_to_edges(server, detected)
                audit.append({"detections": outcome.model_dump(mode="json")})
                if not found:
                    return Outcome.drop(f"no_valid_chain: {outcome.yes} yes, {outcome.no} no, {outcome.not_sure} not "
                                        f"sure, {len(outcome.unknown_tools)} unknown tools", audit=audit)
                return Outcome.keep(*found, audit=audit)

            chain_stage = self.stage("graph_chains", GraphEdge)
            multi = [(s.name, s) for s in servers if len(s.tools) >= 2]
            await chain_stage.run_items(multi, propose, concurrency=self.config.concurrency, progress=self.progress,
                                        description="graph: LLM-proposed chains")
            edges += list(chain_stage.outputs())
        if opts.trace:
            from astra.synthesis.trajectories._graph_trace import trace_edges

            traced, trace_stats = await trace_edges(servers, seeds=opts.trace_seeds, allow=opts.trace_allow,
                                                    calls_per_tool=opts.trace_calls)
            self.run.mark("graph_trace", "done", **trace_stats)
            stats["trace"] = trace_stats
            edges += traced
        graph = ToolGraph(name=self.graph_name(), nodes=sorted(tools), edges=_graph.merge_edges(edges),
                          meta={"run": str(self.run.path), "candidates": stats, "seed": self.config.seed})
        version = self.registry.save_graph(graph)
        graph = graph.model_copy(update={"version": version})
        _write_json(path, graph.model_dump(mode="json"))
        self.run.mark(
            "graph", "done", graph=graph.name, version=version, edges=len(graph.edges), nodes=len(graph.nodes)
        )
        return graph

    # ------------------------------------------------------------------ 2. chains

    async def sample_chains(self) -> dict[str, Any]:
        if await self._seeded("chains", ToolChain) is not None:
            return {}
        graph = self.load_graph()
        opts = self.config.chains
        attempts, covered, _edges = _chains.sample_walks(
            graph, num_chains=opts.num_chains, min_length=opts.min_length, max_length=opts.max_length,
            seed=self.config.seed, uncovered_weight=opts.uncovered_weight,
        )
        toolsets = _chains.sample_toolsets(graph, count=opts.num_toolsets, max_size=opts.max_toolset_size,
                                           seed=self.config.seed, covered=covered)
        outcomes: dict[str, Outcome] = {}
        for attempt_id, chain, reason in attempts:
            outcomes[attempt_id] = Outcome.keep(chain) if chain is not None else Outcome.drop(reason or "dropped")
        for ts in toolsets:
            outcomes[ts.id] = Outcome.keep(ts)

        async def emit(item_id: str) -> Outcome:
            return outcomes[item_id]

        stage = self.stage("chains", ToolChain)
        await stage.run_items([(i, i) for i in outcomes], emit, concurrency=1, progress=self.progress,
                              description="chains: sample walks and tool sets")
        cov = _chains.coverage(graph, stage.outputs()).summary()
        self.run.mark("chains", "done", coverage=cov)
        return cov

    # ------------------------------------------------------------------ 3-4. verify, tasks, quality

    async def verify_chains(self) -> StageCounts:
        seeded = await self._seeded("verify", ToolChain)
        if seeded is not None:
            return seeded
        self._require("chains")
        tools = await self.tools()
        judge = self.model(self.config.judge)
        chains = self.stage("chains", ToolChain).outputs()
        return await self.stage("verify", ToolChain).run_items(
            [(c.id, c) for c in chains],
            lambda c: verify_chain(c, tools, judge, self.config.verify, seed=self.config.seed),
            concurrency=self.config.concurrency, progress=self.progress, description="verify: vote + back-translation",
        )

    async def generate_tasks(self) -> StageCounts:
        if self.originals().get("tasks") is not None:  # given tasks: both task stages from the file
            await self._seeded("tasks", Task)
            threshold = self.config.tasks.quality_threshold

            async def gate(task: Task) -> Outcome:  # the original's own scores, when it has them, meet ours
                overall = task.quality.get("overall")
                if overall is not None and overall < threshold:
                    return Outcome.drop(f"below_quality_threshold: {overall:.2f} < {threshold}")
                return Outcome.keep(task)

            return await self.stage("quality", Task).run_items(
                [(t.id, t) for t in self.stage("tasks", Task).outputs()], gate, concurrency=1,
                progress=self.progress, description="tasks: quality (given scores)",
                gates={"quality_threshold": threshold})
        self._require("verify")
        tools = await self.tools()
        gen = self.model(self.config.model)
        chains = self.stage("verify", ToolChain).outputs()
        personas = self._personas()
        await self.stage("tasks", Task).run_items(
            [(c.id, c) for c in chains], lambda c: generate_tasks(c, tools, gen, self.config.tasks, personas),
            concurrency=self.config.concurrency, progress=self.progress, description="tasks: generate",
        )
        tasks = self.stage("tasks", Task).outputs()
        threshold = self.config.tasks.quality_threshold
        if self.config.tasks.quality_judge == JudgeMode.RULES:
            async def judged(t: Task) -> Outcome:
                return rule_quality(t, tools, threshold)
        else:
            judge = self.model(self.config.judge)

            async def judged(t: Task) -> Outcome:
                return await score_task(t, tools, judge, threshold)
        return await self.stage("quality", Task).run_items(
            [(t.id, t) for t in tasks], judged,
            concurrency=self.config.concurrency, progress=self.progress, description="tasks: quality",
            gates={"quality_threshold": self.config.tasks.quality_threshold},
        )

    def _personas(self) -> list[Persona] | None:
        opts = self.config.tasks
        if "persona" not in opts.augmentations:
            return None
        path = opts.personas or PERSONAS_PATH
        try:
            personas, errors = load_personas(path)
        except OSError as exc:
            raise PipelineError(f"{path}: cannot read the persona file: {exc.strerror}") from exc
        if errors:
            self.run.mark("personas", "read", path=str(path), personas=len(personas), errors=errors[:50])
        if not personas:
            raise PipelineError(f"{path}: no usable persona" + (f" ({errors[0]})" if errors else ""))
        return personas

    # ------------------------------------------------------------------ 5. rollouts

    async def _targets(self, needed: set[str], queries: dict[str, str] | None = None) -> tuple[list[Any], set[str]]:
        """Connection targets for the servers the tasks use, and which of them are simulated.

        ``queries`` maps trajectory ids to the user's request: simulated tools see it."""
        targets: list[Any] = []
        simulated: set[str] = set()
        queries = queries or {}

        def user_query(episode: str) -> str | None:
            return queries.get(episode) or queries.get(episode.rsplit(":", 1)[0])

        for spec in await self.servers():
            if spec.name not in needed:
                continue
            if isinstance(spec.launch, (StdioLaunch, HttpLaunch)):
                targets.append(spec)
            elif isinstance(spec.launch, EnvironmentLaunch) and spec.name in self._environments:
                from astra.servers import build_server

                env = self._environments[spec.name]
                targets.append((spec.name, build_server(env)))
            elif isinstance(spec.launch, EnvironmentLaunch):
                found = self.registry.get_environment(spec.launch.environment_id)
                if found is None:
                    raise PipelineError(
                        f"server {spec.name!r}: environment {spec.launch.environment_id!r} is not in the registry"
                    )
                from astra.servers import build_server

                targets.append((spec.name, build_server(found[0])))
            else:
                assert isinstance(spec.launch, SimulatedLaunch)
                from astra.synthesis._original import Execution, plan_servers

                def simulate(doc_spec: ServerSpec) -> SimulatedServer:
                    return SimulatedServer(doc_spec, self.model(self.config.simulator),
                                           error_rate=self.config.rollout.sim_error_rate, seed=self.config.seed,
                                           user_query=user_query)

                found, plans = await plan_servers([spec], live_remote=self.config.live_remote, simulate=simulate)
                targets += found
                self.server_plans.update({n: p.model_dump(mode="json") for n, p in plans.items()})
                if plans[spec.name].execution is Execution.SIMULATED:
                    simulated.add(spec.name)
        if self.server_plans:
            _write_json(self.run.path / "servers_plan.json", self.server_plans)
        return targets, simulated

    async def rollouts(self) -> StageCounts:
        self._require("quality")
        from astra.client import Connections, run_episode
        from astra.client._loop import trajectory_id

        tasks = self.stage("quality", Task).outputs()
        agent = self.model(self.config.model)
        opts = self.config.rollout
        stage = self.stage("rollout", Trajectory)
        items = [(trajectory_id(t.id, agent.name, s), (t, s)) for t in tasks for s in range(opts.samples)]
        todo = [it for it in items if it[0] not in stage.done_ids()]
        if not todo:  # nothing left: do not start servers
            return await stage.run_items([], _never, progress=False)
        queries = {tid: "\n".join(t.user_turns) for tid, (t, _) in todo}
        targets, simulated = await self._targets({srv for t, _ in (it[1] for it in todo) for srv in t.servers}, queries)
        sim_servers = {name: srv for name, srv in (x for x in targets if isinstance(x, tuple))
                       if isinstance(srv, SimulatedServer)}
        settings = ModelSettings(temperature=opts.temperature, max_tokens=opts.max_tokens, seed=self.config.seed)
        async with Connections(targets) as conns:

            async def roll(item: tuple[Task, int]) -> Outcome:
                task, sample = item
                traj = await run_episode(agent, conns, task, system_prompt=ROLLOUT_SYSTEM, settings=settings,
                                         max_requests=opts.max_requests, sample=sample,
                                         meta={"chain_id": task.chain_id, "simulated_servers": sorted(simulated)})
                if simulated:
                    traj = traj.model_copy(update={"steps": [
                        s.model_copy(update={"simulated": s.server in simulated}) for s in traj.steps]})
                    traj = mark_injected(traj, sim_servers)
                if traj.termination in _FAILED_TERMINATIONS or traj.failure_class == FailureClass.infrastructure:
                    # not the policy's doing (records.FailureClass): retried on resume, never scored
                    why = traj.infra_fault or traj.termination
                    return Outcome.drop(f"{why}: {(traj.error or '')[:160]}", failed=True)
                return Outcome.keep(traj)

            counts = await stage.run_items(items, roll, concurrency=self.config.concurrency, progress=self.progress,
                                           description="rollout: episodes")
        return counts

    # ------------------------------------------------------------------ 6-7. rewards, export

    async def rewards(self) -> StageCounts:
        self._require("rollout")
        tasks = {t.id: t for t in self.stage("quality", Task).outputs()}
        mode = self.config.reward.judge
        judge = self.model(self.config.judge) if mode is JudgeMode.LLM else None
        trajs = self.stage("rollout", Trajectory).outputs()
        return await self.stage("reward", Reward).run_items(
            [(t.id, t) for t in trajs], lambda t: score_trajectory(tasks[t.task_id], t, judge, mode),
            concurrency=self.config.concurrency, progress=self.progress,
            description=f"reward: rules + {'judge' if judge else 'no judge (rules only)'}",
        )

    async def export(self) -> dict[str, str]:
        self._require("reward")
        tasks = {t.id: t for t in self.stage("quality", Task).outputs()}
        trajs = {t.id: t for t in self.stage("rollout", Trajectory).outputs()}
        rewards = self.stage("reward", Reward).outputs()
        opts = self.config.reward

        async def pick(reward: Reward) -> Outcome:
            traj = trajs[reward.trajectory_id]
            return select(reward, traj, tasks[traj.task_id], opts)

        stage = self.stage("export", SFTSample)
        # a task dropped since (a stricter threshold on a rerun) takes its trajectories with it
        current = [r for r in rewards if r.trajectory_id in trajs and trajs[r.trajectory_id].task_id in tasks]
        await stage.run_items([(r.id, r) for r in current], pick, concurrency=1, progress=self.progress,
                              description="export: filter by thresholds",
                              gates={"reward_threshold": opts.threshold, "dimension_minimum": opts.min_dimension})
        stage_outputs = [o for o in stage.outputs() if o.id in trajs and trajs[o.id].task_id in tasks]
        template = load_template(self.config.export_template) if self.config.export_template else None
        tokenizer = None
        if template is not None and self.config.export_tokenizer:
            from astra.client._local import resolve_gguf

            tokenizer = gguf_tokenizer(resolve_gguf(self.config.export_tokenizer), template)
        ours = [f for f in self.config.export_formats if f != "astra-original"]  # (written below, in its shapes)
        paths = write_exports(stage_outputs, self.run.path / "export", ours, template, tokenizer)
        if "astra-original" in self.config.export_formats:
            paths.update(self.export_original(self.run.path / "export" / "astra-original",
                                              [o.id for o in stage_outputs]))
        self.run.mark(
            "export", "done", **self.stage("export", SFTSample).counts().model_dump(exclude={"stage"}), paths=paths
        )
        return paths

    def export_original(self, out_dir: Path, trajectory_ids: Sequence[str] | None = None) -> dict[str, str]:
        """The original ASTRA's shapes: ``trajectories.jsonl`` (its interaction output, with the
        reward pipeline's ``tools``/``messages``) and ``rewards.jsonl`` (its ``reward_all`` keys).
        ``trajectory_ids``: only these (default: every rolled-out trajectory with an ok reward)."""
        from astra.synthesis._original import to_original_reward, to_original_trajectory, write_jsonl

        snapshot = self.run.path / "servers.json"
        servers = ({s["name"]: ServerSpec.model_validate(s) for s in json.loads(snapshot.read_text("utf-8"))}
                   if snapshot.exists() else {})
        tasks = {t.id: t for t in self.stage("quality", Task).outputs()}
        trajs = {t.id: t for t in self.stage("rollout", Trajectory).outputs()}
        rewards = {r.trajectory_id: r for r in self.stage("reward", Reward).outputs()}
        wanted = list(trajectory_ids) if trajectory_ids is not None else sorted(trajs)
        traj_rows, reward_rows = [], []
        for tid in wanted:
            traj = trajs.get(tid)
            if traj is None:
                continue
            task = tasks.get(traj.task_id)
            server = servers.get(task.servers[0]) if task is not None and len(task.servers) == 1 else None
            row = to_original_trajectory(traj, task, server)
            reward = to_original_reward(rewards[tid]) if tid in rewards else None
            if reward is not None:
                row["reward"] = reward
                reward_rows.append(reward)
            traj_rows.append(row)
        write_jsonl(out_dir / "trajectories.jsonl", traj_rows)
        write_jsonl(out_dir / "rewards.jsonl", reward_rows)
        return {
            "astra-original": str(out_dir / "trajectories.jsonl"),
            "astra-original-rewards": str(out_dir / "rewards.jsonl"),
        }

    # ------------------------------------------------------------------ funnel

    def funnel(self) -> Funnel:
        funnel = Funnel()
        cand = self.run.manifest["stages"].get("candidates")
        if cand:
            funnel.add(StageCounts(stage="candidates", inputs=cand.get("tools", 0), outputs=cand.get("candidates", 0)))
        for name in ("graph", "graph_chains", *STAGES[1:]):
            if (self.run.path / f"{name}.jsonl").exists() or self.run.status(name) is not None:
                funnel.add(self.stage(name, BaseModel).counts())
        return funnel

    def result(self, started: float) -> PipelineResult:
        graph = self.run.manifest["stages"].get("graph", {})
        exp = self.run.manifest["stages"].get("export", {})
        return PipelineResult(
            run_dir=str(self.run.path), funnel=self.funnel(), exports=exp.get("paths", {}),
            exported=exp.get("outputs", 0), graph={k: graph.get(k) for k in ("graph", "version", "nodes", "edges")},
            coverage=self.run.manifest["stages"].get("chains", {}).get("coverage", {}),
            seconds=time.perf_counter() - started,
        )

    async def run_stage(self, verb: str) -> None:
        """One CLI verb: graph, chains, verify, tasks (generation + quality), rollout, reward, export."""
        steps = {
            "graph": self.build_graph, "chains": self.sample_chains, "verify": self.verify_chains,
            "tasks": self.generate_tasks, "rollout": self.rollouts, "reward": self.rewards, "export": self.export,
        }
        if verb not in steps:
            raise PipelineError(f"unknown stage {verb!r} (stages: {', '.join(steps)})")
        await steps[verb]()


VERBS = ("graph", "chains", "verify", "tasks", "rollout", "reward", "export")


async def _never(_: Any) -> Outcome:  # pragma: no cover - called only with no items
    raise AssertionError("no items")


async def run_trajectory_pipeline(
    config: TrajectoryConfig,
    *,
    progress: bool = True,
    models: dict[str, Model] | None = None,
    stages: Sequence[str] = VERBS,
) -> PipelineResult:
    """Run the stages (all by default) and return the funnel and export paths; resumable."""
    started = time.perf_counter()
    pipeline = TrajectoryPipeline(config, models=models, progress=progress)
    try:
        for verb in stages:
            await pipeline.run_stage(verb)
        result = pipeline.result(started)
    finally:
        await pipeline.aclose()
    if progress:
        from rich.console import Console

        console = Console(stderr=True)
        console.print(result.funnel.render())
        if result.exports:
            console.print(
                f"exported {result.exported} sample(s): " + ", ".join(result.exports.values()), highlight=False
            )
            if config.export_template:
                for line in report_lines(Path(result.run_dir) / "export"):
                    console.print(line, highlight=False)
    return result


# Example requests in the sample servers' own terms (IANA zone names, the inventory's SKUs).
DEMO_EXAMPLES = {
    "time/get_current_time": "What time is it now in Europe/London, and what time is that in Asia/Tokyo?",
    "time/convert_time": "Convert 09:30 from America/New_York time to Europe/Paris time.",
    "inventory/list_items": "Which items of the tools category do we have, and how many of each?",
    "inventory/get_item": "How many claw hammers (SKU HAM-2) are in stock, and at what price?",
    "inventory/create_order": "Order 2 claw hammers (SKU HAM-2) for customer Dana.",
}


def demo_config(
    out_dir: str | os.PathLike[str],
    model_spec: str = "local:smollm2",
    home: str | os.PathLike[str] | None = None,
    *,
    judge_model: str | None = None,
) -> TrajectoryConfig:
    """A small offline run on real MCP servers: ``mcp-server-time`` (PyPI, stdio) and the bundled
    sample environment, emitted as a standalone server and launched over stdio like any MCP
    server. A real endpoint also gets two registry sample servers simulated by the model.

    The embedded 135M model writes the tasks and drives the rollouts, but cannot judge: with it,
    graph edges come from the rule-based candidates (provenance ``schema``), chain verification is
    off, and task quality and trajectory rewards are scored by rules, which the data says
    (``quality_judge: rules``, ``judge: rules``); nothing it keeps is presented as LLM-judged."""
    from astra.registry import SAMPLE_SERVERS, Registry, import_file
    from astra.servers import emit, load_emitted

    with Registry.open(home) as registry:
        report = import_file(registry, SAMPLE_SERVERS)
        if not report.ok:
            raise PipelineError("bundled sample servers failed to import: " + "; ".join(report.errors[:3]))
    samples_dir = Path(__file__).resolve().parents[2] / "servers" / "samples"
    sample = EnvironmentSpec.model_validate_json((samples_dir / "inventory.json").read_text("utf-8"))
    emitted = Path(out_dir) / "servers" / sample.name
    if not (emitted / "environment.json").is_file() or load_emitted(emitted) != sample:
        emit(sample, emitted)
    time_server = ServerSpec(
        id=stable_id("demo", "time", prefix="srv-"), name="time", title="Time",
        description="Current time and time zone conversion (PyPI mcp-server-time).", domain="time",
        launch=StdioLaunch(command=sys.executable, args=["-m", "mcp_server_time", "--local-timezone", "UTC"]),
        source="pypi:mcp-server-time",
    )
    inventory_server = ServerSpec(
        id=stable_id("demo", "emitted", sample.id, prefix="srv-"), name=sample.name, title=sample.name,
        description=sample.description, domain="inventory",
        launch=StdioLaunch(command=sys.executable, args=[str(emitted.resolve() / "server.py")]),
        source=f"emitted:{emitted}",
    )
    local = provider_of(model_spec) == "local"  # one in-process model: no point in concurrent requests
    return TrajectoryConfig.model_validate({
        "out_dir": str(out_dir),
        "home": str(home) if home is not None else None,
        "servers": [] if local else ["geo-locator", "weather-forecast"],
        "inline_servers": [time_server.model_dump(mode="json"), inventory_server.model_dump(mode="json")],
        "model": model_spec,
        "judge_model": judge_model,
        "seed": 0,
        "concurrency": 1 if local else 4,
        "model_timeout_s": 90.0 if local else 300.0,
        "graph": {"batch_size": 8, "max_sources_per_tool": 3, "llm_verify": not local},
        "chains": {"num_chains": 2, "max_length": 3, "num_toolsets": 2, "max_toolset_size": 2},
        "verify": {"enabled": not local, "votes": 1, "distractors": 2},
        "tasks": {"per_chain": 1, "augmentations": [] if local else ["context_shift", "persona"],
                  "multi_turn": not local, "quality_threshold": 0.6 if local else 0.25,
                  "quality_judge": "rules" if local else "llm",
                  # a 135M model writes a request by varying an example; with none it asks about the tools
                  "examples": DEMO_EXAMPLES if local else {}},
        # temperature 0 with the embedded model: a seeded run makes the same data on every machine
        "rollout": {"samples": 1, "max_requests": 3 if local else 6, "max_tokens": 256,
                    "temperature": 0.0 if local else 0.7},
        "reward": {"threshold": 0.3, "judge": "rules" if local else "llm"},
    })
