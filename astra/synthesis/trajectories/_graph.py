"""Stage 1: the tool dependency graph.

Real MCP tools rarely publish a useful output schema, so candidates come from what the docs
say. Every tool gets a *role* from its verb (read, create, modify, delete) and every field a
*semantic type* (path, revision, branch, entity name, URL, time zone, content ...) inferred
from its name, its description, its parent field and its JSON schema; a read tool's outputs
are inferred from its name and description where no schema says (``git_log`` "Shows the
commit logs" returns revisions). A candidate ``A -> B`` needs a typed match: a value A returns
fits a parameter of B (a ``data`` edge), or A creates or changes the thing B's parameter
names (an ``order`` edge: ``git_add -> git_commit``, ``create_entities -> add_observations``).
Deleting tools produce nothing, and a parameter that names the new thing a tool creates is fed
by nothing, so ``delete_X -> create_X`` is never proposed. Matching is within and across
servers (portable types only across servers), never by declared domain, and is blocked by
semantic type so the work grows with the matches, not with tools squared. Scores multiply the
evidence of both sides; every candidate says why in ``rationale``.

On top of the candidates: an LLM verifies them in batches (calls grow with candidates), the
original ASTRA's per-server chain proposals (yes / no / not sure, chains with tasks) add
edges, and :mod:`._graph_trace` adds execution-grounded edges; :func:`merge_edges` keeps one
edge per pair and the provenance of every source.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, Field
from rapidfuzz import fuzz, process

from astra.jsonutil import is_array, is_object
from astra.records import GraphEdge, ServerSpec, ToolSpec, stable_id

_STOP = frozenset(
    "a an the of to for in on by with and or from is are be this that it its as at any all "
    "use used using given which will can optional required value values new e g eg if not no "
    "return returns returned specified specify should must do does".split()
)
_SPLIT = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _stem(token: str) -> str:
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 4 and token.endswith(("ches", "shes", "sses", "xes")):
        return token[:-2]
    if len(token) >= 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


@lru_cache(maxsize=65536)
def _tokens(text: str) -> tuple[str, ...]:
    text = _CAMEL.sub(" ", text).lower()
    return tuple(_stem(t) for t in _SPLIT.split(text) if t and t not in _STOP and len(t) > 1)


def tokens(text: str | None) -> list[str]:
    """Normalised tokens: camelCase and snake_case split, lower-cased, stop words dropped, plurals folded."""
    return list(_tokens(text)) if text else []


# ----------------------------------------------------------------------------- semantic types


class SemType(StrEnum):
    """What a value means, whatever its JSON type."""

    PATH = "path"  # a file or directory path
    REPO = "repo_path"  # the path of a repository (a checkout, not any directory)
    REVISION = "revision"  # a commit hash or any git revision
    BRANCH = "branch"
    ENTITY = "entity"  # the name of an entity in a knowledge graph
    RELATION = "relation"
    OBSERVATION = "observation"
    URL = "url"
    COORDINATE = "coordinate"  # latitude / longitude
    LOCATION = "location"  # an address, a place, or coordinates
    QUERY = "query"  # free search text
    CONTENT = "content"  # a document's or file's text
    TEXT = "text"  # a short message
    TIMEZONE = "timezone"
    TIME = "time"
    ID = "id"  # an identifier of a subject (user_id -> ID of "user")
    NAME = "name"  # a name of a subject
    FIELD = "field"  # any other named field: matches the same name only
    STAGED = "staged"  # the staging area of a version control system (state, never a value)


class Role(StrEnum):
    """What a tool does to the things it names, from its verb."""

    READ = "read"
    CREATE = "create"
    MODIFY = "modify"
    DELETE = "delete"


class Evidence(StrEnum):
    """Where a field's semantic type came from (strongest first)."""

    SCHEMA = "output schema"
    NAME = "name"
    DESCRIPTION = "description"
    TOOL = "tool name and description"
    LIFECYCLE = "lifecycle"


_EVIDENCE_WEIGHT: dict[Evidence, float] = {Evidence.SCHEMA: 0.95, Evidence.NAME: 0.9, Evidence.DESCRIPTION: 0.75,
                                           Evidence.TOOL: 0.6, Evidence.LIFECYCLE: 0.8}

# Cue words -> semantic type. Most specific first: the first cue found in a field's own name wins.
_CUE_ORDER: tuple[tuple[SemType, tuple[str, ...]], ...] = (
    (SemType.TIMEZONE, ("timezone", "tz", "iana")),
    (SemType.REVISION, ("revision", "commit", "sha", "hash", "ref")),
    (SemType.BRANCH, ("branch",)),
    (SemType.ENTITY, ("entity",)),
    (SemType.RELATION, ("relation",)),
    (SemType.OBSERVATION, ("observation",)),
    (SemType.URL, ("url", "uri", "link", "href")),
    (SemType.TIME, ("time", "datetime", "timestamp", "date")),
    (SemType.COORDINATE, ("latitude", "longitude", "coordinate", "lat", "lng", "lon")),
    (SemType.LOCATION, ("location", "address")),
    (SemType.PATH, ("path", "file", "filename", "filepath", "dir", "directory", "folder")),
    (SemType.QUERY, ("query", "keyword", "topic", "search")),
    (SemType.CONTENT, ("content", "text", "body")),
    (SemType.TEXT, ("message",)),
)
_CUE: dict[str, SemType] = {}
for _t, _words in _CUE_ORDER:
    for _w in _words:
        _CUE.setdefault(_w, _t)
_PRIORITY = {t: i for i, (t, _) in enumerate(_CUE_ORDER)}
_CUE_WORDS = tuple(_CUE)

# Identifier-like leaf names: "user_id" is the ID of a user, "city_name" the NAME of a city.
_ID_WORDS = frozenset({"id", "uuid", "key", "number", "code"})
_NAME_WORDS = frozenset({"name", "title", "handle", "slug", "label"})
# Types whose values mean the same on any server: only these link tools across servers.
_PORTABLE = frozenset({SemType.PATH, SemType.URL, SemType.TIME, SemType.TIMEZONE, SemType.CONTENT, SemType.LOCATION,
                       SemType.COORDINATE,
                       SemType.ID, SemType.NAME, SemType.FIELD})
# Types that point at an existing thing (as opposed to free content).
_REFERENCE = frozenset({SemType.PATH, SemType.REPO, SemType.REVISION, SemType.BRANCH, SemType.ENTITY,
                        SemType.RELATION, SemType.URL, SemType.LOCATION, SemType.COORDINATE, SemType.ID,
                        SemType.NAME})
# output type -> parameter types it can fill, with how well
_FEEDS: dict[SemType, tuple[tuple[SemType, float], ...]] = {
    SemType.BRANCH: ((SemType.BRANCH, 1.0), (SemType.REVISION, 0.9)),
    SemType.COORDINATE: ((SemType.COORDINATE, 1.0), (SemType.LOCATION, 0.9)),
    SemType.CONTENT: ((SemType.CONTENT, 1.0), (SemType.TEXT, 0.6)),
    SemType.ENTITY: ((SemType.ENTITY, 1.0), (SemType.QUERY, 0.5)),
    SemType.NAME: ((SemType.NAME, 1.0), (SemType.QUERY, 0.5)),
}

_VERBS: dict[str, Role] = {}
for _role, _words in (
    (Role.READ, "get list search find read show fetch query lookup look open view describe retrieve check count "
                "browse inspect download export convert compute calculate summarize analyze validate translate "
                "estimate track echo diff status log tree print cat"),
    (Role.CREATE, "create add write insert new make post upload save put register book commit append generate "
                  "stage init clone"),
    (Role.MODIFY, "update edit modify move rename set patch replace checkout switch toggle merge push apply "
                  "rebase tag"),
    (Role.DELETE, "delete remove drop clear reset cancel destroy purge unstage revoke uninstall stop kill"),
):
    for _w in _words.split():
        _VERBS[_w] = _role
# read verbs that return the content of their subject rather than a list of identifiers
_CONTENT_VERBS = frozenset("read fetch open view download cat show echo diff".split())
# verbs that are also what they produce: a commit creates a revision
_VERB_PRODUCES = {"commit": SemType.REVISION}
# words that say a tool works on a VCS staging area
_STAGE_WORDS = frozenset({"staged", "staging", "unstage"})
_GENERIC_OUTPUTS = frozenset({"content", "result", "text", "output", "data", "message", "success", "response"})
_NEW_TARGET = re.compile(r"\b(?:output|new)\b", re.I)
# undocumented parameters this generic take their type from what the tool's description is about
_GENERIC_PARAMS = frozenset("target source dest destination input value item object arg argument spec other base"
                            .split())
# own-name cues too vague to beat a description
_AMBIGUOUS_NAMES = frozenset({"destination", "source", "origin", "target"})
# read verbs that list or find things: a plain noun in their name is what they return
_LIST_VERBS = frozenset("list search find query lookup browse".split())
# last words that make a field a setting, not a reference to a thing ("branch_type", "max_count", "time_difference")
_SETTING_WORDS = frozenset("type kind mode format count limit max min line option sort order difference offset "
                           "duration page size depth level flag".split())


@lru_cache(maxsize=65536)
def cue_type(token: str) -> SemType | None:
    """The semantic type a (normalised) word names: exact cue, else a close spelling (rapidfuzz).

    Fuzzy matching catches compounds and variants ("filepath", "datetimes", "hashes");
    only long words are matched fuzzily so short ones ("ids", "to") never drift.
    """
    hit = _CUE.get(token)
    if hit is not None or len(token) < 6:
        return hit
    found = process.extractOne(token, _CUE_WORDS, scorer=fuzz.ratio, score_cutoff=88)
    return _CUE[found[0]] if found else None


def _cue_of(words: Iterable[str]) -> SemType | None:
    best: SemType | None = None
    for w in words:
        t = cue_type(w)
        if t is not None and (best is None or _PRIORITY[t] < _PRIORITY[best]):
            best = t
    return best


@dataclass(slots=True, frozen=True)
class TypedField:
    """One field (output) or parameter (input) with its inferred semantic type."""

    path: str  # "revision", "entities[].name", "result"
    sem: SemType
    subject: str | None  # for ID / NAME / FIELD: what it identifies ("user"); else None
    evidence: Evidence
    required: bool = False
    new: bool = False  # names the thing its tool creates: fed by nothing

    @property
    def key(self) -> tuple[SemType, str | None]:
        return self.sem, self.subject

    @property
    def weight(self) -> float:
        return _EVIDENCE_WEIGHT[self.evidence]

    def describe(self) -> str:
        what = f"{self.sem.value}:{self.subject}" if self.subject else self.sem.value
        return f"{self.path} ({what}, from {self.evidence.value})"


@dataclass(slots=True)
class ToolProfile:
    """What one tool consumes and produces, typed."""

    tool: ToolSpec
    verb: str | None
    role: Role
    noun: SemType | None  # the kind of thing the tool acts on (write_file -> path)
    noun_subject: str | None
    params: list[TypedField] = field(default_factory=list)
    outputs: list[TypedField] = field(default_factory=list)  # values it returns (data edges)
    effects: list[TypedField] = field(default_factory=list)  # things it creates or changes (order edges)
    uses_stage: bool = False

    @property
    def records_changes(self) -> bool:
        """Stages or commits changes (a VCS): it needs a change to exist first."""
        return self.uses_stage and self.verb in ("add", "stage", "commit")


def _schema_type(schema: Any) -> str | None:
    if not is_object(schema):
        return None
    t = schema.get("type")
    if is_array(t):
        t = next((x for x in t if x != "null"), None)
    if t is None:
        for alt in schema.get("anyOf") or schema.get("oneOf") or ():
            t = _schema_type(alt)
            if t is not None and t != "null":
                break
    return t if isinstance(t, str) else None


def walk_schema(schema: Any, prefix: str = "", parent: tuple[str, ...] = (), depth: int = 0
          ) -> Iterable[tuple[str, tuple[str, ...], tuple[str, ...], str, Any, bool]]:
    """(path, leaf tokens, parent tokens, description, subschema, required) of each property, two levels deep."""
    if not is_object(schema) or depth > 2:
        return
    props = schema.get("properties")
    if not is_object(props):
        return
    required = set(schema.get("required") or []) if is_array(schema.get("required")) else set()
    for name, sub in props.items():
        if not is_object(sub):
            continue
        path = f"{prefix}{name}"
        leaf = _tokens(name)
        desc = found if isinstance(found := sub.get("description"), str) else ""
        yield path, leaf, parent, desc, sub, name in required or sub.get("required") is True
        inner = sub.get("items") if _schema_type(sub) == "array" else sub
        if is_object(inner) and is_object(inner.get("properties")):
            yield from walk_schema(inner, f"{path}[]." if inner is not sub else f"{path}.", leaf, depth + 1)


def _type_field(leaf: tuple[str, ...], parent: tuple[str, ...], desc: str, schema: Any, *, fallback: bool = True
                ) -> tuple[SemType, str | None, Evidence] | None:
    """A field's semantic type from its own name, else its description, else its parent's name.

    ``fallback``: when nothing names a type, an identifier-like name still gives ID / NAME of a
    subject, and any other name a FIELD that matches the same name only.
    """
    if is_object(schema) and schema.get("enum"):
        return None  # a choice among fixed values, never fed by another tool
    jtype = _schema_type(schema)
    if jtype == "boolean" or (leaf and leaf[-1] in _SETTING_WORDS):
        return None
    fmt = schema.get("format") if is_object(schema) else None
    if fmt in ("uri", "url", "iri"):
        return SemType.URL, None, Evidence.NAME
    if fmt in ("date-time", "date", "time"):
        return SemType.TIME, None, Evidence.NAME
    if ("repo" in leaf or "repository" in leaf) and "path" in leaf:
        return SemType.REPO, None, Evidence.NAME
    own = _cue_of(leaf)
    if own is not None and desc and set(leaf) <= _AMBIGUOUS_NAMES:
        own = None  # "destination": a path for move_file, an address for directions; the description decides
    generic = not leaf or set(leaf) <= (_NAME_WORDS | _ID_WORDS | {"content", "text", "value", "item"})
    if own is not None and not (generic and parent):
        return own, None, Evidence.NAME
    numeric = jtype in ("integer", "number")
    dtoks = _tokens(desc)[:16] if desc else ()
    if dtoks:
        if "repository" in dtoks and "path" in dtoks:
            return SemType.REPO, None, Evidence.DESCRIPTION
        by_desc = _cue_of(dtoks)
        content = by_desc in (SemType.CONTENT, SemType.QUERY, SemType.TEXT)
        if numeric and by_desc is not SemType.TIME:
            by_desc = None  # "the last N lines of the file" is a count, not a file
        if by_desc is not None and not (content and leaf and leaf[-1] in _ID_WORDS | _NAME_WORDS):
            return by_desc, None, Evidence.DESCRIPTION
    if generic and parent:
        up = _cue_of(parent)
        if up is not None:
            return up, None, Evidence.NAME
    if own is not None:
        return own, None, Evidence.NAME
    if dtoks and jtype not in ("array", "object"):
        # "Repository name", "name of the repository", "Pull request number": what it names, from the description
        # when the name says less ("repo", "name", "pull_number" -> pull_request; not "city_name" -> canonical_city)
        leaf_subject = leaf[:-1] if leaf and leaf[-1] in _ID_WORDS | _NAME_WORDS else leaf
        for i, w in enumerate(dtoks[:6]):
            if w in _ID_WORDS or w in _NAME_WORDS:
                before = [t for t in dtoks[:i] if t not in _VERBS][-2:]
                after = [t for t in dtoks[i + 1:i + 3] if t not in _VERBS][:1]
                words = before or after
                if words and (not leaf_subject or words[-1] != leaf_subject[-1]):
                    return (SemType.ID if w in _ID_WORDS else SemType.NAME), "_".join(words), Evidence.DESCRIPTION
                break
    if not fallback:
        return None
    if leaf and leaf[-1] in _ID_WORDS and jtype not in ("array", "object"):
        subject = "_".join(leaf[:-1]) or (parent[-1] if parent else None)
        return SemType.ID, subject, Evidence.NAME
    if leaf and leaf[-1] in _NAME_WORDS and jtype not in ("array", "object"):
        subject = "_".join(leaf[:-1]) or (parent[-1] if parent else None)
        return SemType.NAME, subject, Evidence.NAME
    if len(leaf) == 1 and jtype == "string" and leaf[0] not in _VERBS and len(leaf[0]) > 3:
        return SemType.NAME, leaf[0], Evidence.NAME  # a bare noun ("repo", "owner"): a name of that thing
    if leaf and jtype not in ("array", "object", None) and len("_".join(leaf)) > 3:
        return SemType.FIELD, "_".join(leaf), Evidence.NAME
    return None


def _verb_and_nouns(tool: ToolSpec, server_tokens: frozenset[str]) -> tuple[str | None, list[str]]:
    words = list(_tokens(tool.name))
    while len(words) > 1 and words[0] in server_tokens:  # "git_add": the server's prefix is no noun
        words.pop(0)
    # stemming folds "reads" / "lists" into verbs too; the verb is the first word when it is one
    if words and words[0] in _VERBS:
        return words[0], words[1:]
    return None, words


def profile_tool(tool: ToolSpec, server_tokens: frozenset[str] = frozenset()) -> ToolProfile:
    """Type a tool's parameters, outputs and effects from its docs (see the module docstring)."""
    server_tokens = server_tokens or frozenset(_tokens(tool.server)) | {"mcp", "server"}
    verb, nouns = _verb_and_nouns(tool, server_tokens)
    role = _VERBS.get(verb, Role.READ) if verb else _role_from_annotations(tool)
    noun = _cue_of(nouns)
    noun_subject = None if noun else ("_".join(nouns) or None)
    desc_tokens = _tokens(tool.description or "")[:40]
    prof = ToolProfile(tool=tool, verb=verb, role=role, noun=noun, noun_subject=noun_subject)
    prof.uses_stage = bool(_STAGE_WORDS & set(_tokens(tool.name)) or _STAGE_WORDS & set(desc_tokens)
                           or verb == "commit")

    # ---- parameters
    tool_desc_types = {t for w in desc_tokens if (t := cue_type(w)) is not None and t in _REFERENCE}
    for path, leaf, parent, desc, sub, required in walk_schema(tool.input_schema):
        typed = _type_field(leaf, parent, desc, sub, fallback=bool(desc))
        if (typed is None and not desc and set(leaf) <= _GENERIC_PARAMS and _schema_type(sub) in ("string", None)
                and 0 < len(tool_desc_types) <= 2):
            # an undocumented string parameter ("target"): what the tool's description is about
            for t in sorted(tool_desc_types, key=_PRIORITY.__getitem__):
                prof.params.append(TypedField(path, t, None, Evidence.TOOL, required))
            continue
        if typed is None and not desc:
            typed = _type_field(leaf, parent, desc, sub)
        if typed is None:
            continue
        sem, subject, ev = typed
        new = role is Role.CREATE and _names_new_thing(sem, subject, leaf, parent, nouns, noun)
        if sem in (SemType.PATH, SemType.NAME) and (_NEW_TARGET.search(desc) or "destination" in leaf):
            new = True  # "Name of the output file", a move's destination: where a new thing goes
        prof.params.append(TypedField(path, sem, subject, ev, required, new))

    # ---- effects (order edges): what a create / modify tool makes exist or changes
    if role in (Role.CREATE, Role.MODIFY):
        for p in prof.params:
            leaf = _tokens(p.path.rsplit(".", 1)[-1])
            if p.sem not in _REFERENCE and p.sem is not SemType.OBSERVATION:
                continue  # only things that can be named again later
            if p.new or (role is Role.MODIFY and noun is not None and p.sem is noun and "source" not in leaf
                         and "from" not in leaf and "old" not in leaf):
                prof.effects.append(TypedField(p.path, p.sem, p.subject, Evidence.NAME))
        if verb in _VERB_PRODUCES:
            prof.effects.append(TypedField("result", _VERB_PRODUCES[verb], None, Evidence.TOOL))
        if role is Role.CREATE and noun is None and noun_subject:
            prof.effects.append(TypedField("result", SemType.ID, noun_subject, Evidence.TOOL))  # the new thing's id
        if verb in ("add", "stage") and prof.uses_stage:
            prof.effects.append(TypedField("(staging area)", SemType.STAGED, None, Evidence.LIFECYCLE))

    # ---- outputs (data edges): what a read tool returns
    if role is Role.READ:
        schema_fields = list(walk_schema(tool.output_schema)) if is_object(tool.output_schema) else []
        informative = False
        for path, leaf, parent, desc, sub, _req in schema_fields:
            if not parent and set(leaf) <= _GENERIC_OUTPUTS:
                continue
            typed = _type_field(leaf, parent, desc, sub)
            if typed is not None:
                informative = True
                prof.outputs.append(TypedField(path, typed[0], typed[1], Evidence.SCHEMA))
        if not informative:
            prof.outputs.extend(_outputs_from_docs(verb, nouns, noun, desc_tokens))
    return prof


def _role_from_annotations(tool: ToolSpec) -> Role:
    """The role of a tool whose name has no known verb: read-only by its annotations, else it changes things."""
    ann = tool.annotations or {}
    read_only = ann.get("readOnlyHint", ann.get("read_only_hint"))
    return Role.MODIFY if read_only is False else Role.READ


def _names_new_thing(sem: SemType, subject: str | None, leaf: tuple[str, ...], parent: tuple[str, ...],
                     nouns: list[str], noun: SemType | None) -> bool:
    """A create tool's parameter that names (or describes) the thing being created."""
    if noun is not None and sem is noun and set(leaf) <= set(nouns) | _NAME_WORDS | _ID_WORDS | {"path", noun.value}:
        return True
    if parent and (set(parent) & set(nouns)):
        # inside the created record (entities[].name, observations[].contents): new unless it points elsewhere
        return not (sem in _REFERENCE and sem is not noun)
    # the head noun is what gets made: add_issue_comment makes a comment, its issue_number points elsewhere
    return subject is not None and bool(nouns) and _same_subject(subject, "_".join(nouns)) \
        and subject.split("_")[-1] == nouns[-1]


def _outputs_from_docs(verb: str | None, nouns: list[str], noun: SemType | None, desc_tokens: tuple[str, ...]
                       ) -> list[TypedField]:
    """What a read tool without an informative output schema returns, from its name and description."""
    out: list[TypedField] = []
    seen: set[tuple[SemType, str | None]] = set()

    def add(sem: SemType, subject: str | None, ev: Evidence, path: str = "result") -> None:
        if (sem, subject) not in seen:
            seen.add((sem, subject))
            out.append(TypedField(path, sem, subject, ev))

    content_like = verb in _CONTENT_VERBS
    if content_like:
        # read_text_file, git_show "Shows the contents of ...": the subject's content
        if noun in (SemType.PATH, SemType.CONTENT) or {"content", "text", "body"} & set(desc_tokens):
            add(SemType.CONTENT, None, Evidence.TOOL if noun is None else Evidence.NAME)
        return out
    if {"info", "metadata", "stat", "detail"} & set(nouns):
        return out  # metadata about a thing, not the thing
    plain = [w for w in nouns if cue_type(w) is None]
    if plain:
        # plain nouns ("search_repositories", "list_pull_requests"): ids and names of that subject
        ev = Evidence.NAME if verb in _LIST_VERBS else Evidence.TOOL
        for subject in dict.fromkeys(["_".join(plain), plain[-1]]):
            add(SemType.ID, subject, ev)
            add(SemType.NAME, subject, ev)
    for w in nouns:
        t = cue_type(w)
        if t is None:
            continue
        elif t not in (SemType.QUERY, SemType.TEXT):
            add(t, None, Evidence.NAME)
    if verb is None or not nouns:
        # the name says too little ("git_log", "maps_geocode"): what the description names is returned
        for w in desc_tokens[:20]:
            t = cue_type(w)
            if t is not None and t in _REFERENCE | {SemType.TIME, SemType.TIMEZONE}:
                add(t, None, Evidence.DESCRIPTION)
    return out


# ----------------------------------------------------------------------------- candidates


class Candidate(BaseModel):
    """A candidate edge from the docs, before verification."""

    src: str
    dst: str
    score: float = Field(ge=0.0, le=1.0)
    kind: Literal["data", "order"] = "data"
    bindings: dict[str, str] = Field(default_factory=dict, description="dst param -> src output field")
    rationale: str = ""
    domain: str | None = None


_CROSS_SERVER = 0.85  # a link between servers needs more evidence than one inside a server


def _leaf_similarity(out: TypedField, param: TypedField) -> float:
    return _name_similarity(out.path, param.path)


@lru_cache(maxsize=65536)
def _name_similarity(a: str, b: str) -> float:
    return fuzz.ratio(a.rsplit(".", 1)[-1].lower(), b.rsplit(".", 1)[-1].lower())


def _server_tokens(server: ServerSpec) -> frozenset[str]:
    words = set(_tokens(server.name)) | {"mcp", "server"}
    return frozenset(words)


def profile_servers(servers: Sequence[ServerSpec]) -> list[ToolProfile]:
    out: list[ToolProfile] = []
    for server in servers:
        stoks = _server_tokens(server)
        for tool in server.tools:
            t = tool if tool.server == server.name else tool.model_copy(update={"server": server.name})
            out.append(profile_tool(t, stoks))
    return out


def generate_candidates(
    servers: Sequence[ServerSpec],
    *,
    cross_server: bool = True,
    min_score: float = 0.45,
    max_sources_per_tool: int = 8,
) -> tuple[list[Candidate], dict[str, Any]]:
    """Typed candidate edges from the docs, within servers and (portable types) across them.

    Blocking: produced values and consumed parameters are indexed by semantic type (and
    subject); a parameter looks only at producers of a type that can fill it, same-server
    producers first, then the best-evidenced producers of other servers (at most
    ``max_sources_per_tool`` per destination tool). Returns (candidates, stats).
    """
    profiles = profile_servers(servers)
    domain_of = {s.name: s.domain for s in servers}
    # producers by (type, subject) and by (server, type, subject), strongest evidence first
    produced: dict[tuple[SemType, str | None], list[tuple[float, int, TypedField, str]]] = defaultdict(list)
    by_server: dict[tuple[str, SemType, str | None], list[tuple[float, int, TypedField, str]]] = defaultdict(list)
    for i, prof in enumerate(profiles):
        for f in prof.outputs:
            entry = (f.weight, i, f, "data")
            produced[f.key].append(entry)
            by_server[(prof.tool.server, *f.key)].append(entry)
        for f in prof.effects:
            entry = (f.weight, i, f, "order")
            produced[f.key].append(entry)
            by_server[(prof.tool.server, *f.key)].append(entry)
    for lst in (*produced.values(), *by_server.values()):
        lst.sort(key=lambda e: (-e[0], e[1]))
    stats: dict[str, Any] = {"tools": len(profiles), "typed_params": 0, "typed_outputs": 0, "pairs_scored": 0}
    stats["typed_params"] = sum(len(p.params) for p in profiles)
    stats["typed_outputs"] = sum(len(p.outputs) + len(p.effects) for p in profiles)
    scan_limit = 2 * max_sources_per_tool + 4
    similar: dict[tuple[SemType, str], list[str]] = {}
    candidates: list[Candidate] = []
    for di, dst in enumerate(profiles):
        server = dst.tool.server
        hits: dict[int, dict[str, tuple[float, TypedField, TypedField]]] = {}
        consumes = [p for p in dst.params if not p.new]
        if dst.uses_stage and dst.verb not in ("add", "stage"):
            consumes.append(TypedField("(staging area)", SemType.STAGED, None, Evidence.LIFECYCLE))
        for param in consumes:
            for out_sem, factor in _fed_by(param.sem):
                keys = [(out_sem, param.subject)]
                if param.subject is not None and param.sem in (SemType.ID, SemType.NAME):
                    keys += [(out_sem, s) for s in _similar_subjects(param.subject, produced, out_sem, similar)]
                for key in keys:
                    local = by_server.get((server, *key), ())
                    remote = produced.get(key, ()) if cross_server and _portable(key) else ()
                    for source, same in ((local, True), (remote, False)):
                        taken = 0
                        for weight, si, out, kind in source:
                            if si == di or (not same and profiles[si].tool.server == server):
                                continue
                            taken += 1
                            if taken > scan_limit:
                                break
                            stats["pairs_scored"] += 1
                            src = profiles[si]
                            if kind == "order" and out.sem is not param.sem:
                                continue  # a write precedes a read of the very same kind of thing
                            if kind == "order" and src.role is Role.MODIFY and not dst.records_changes:
                                continue  # an edit is needed first only by what records changes (git_add)
                            if kind == "order" and not same and (out.sem is not SemType.PATH
                                                                 or out.evidence not in (Evidence.NAME, Evidence.TOOL)):
                                continue  # across servers only a path named as such is the same thing
                            if out.subject is None and param.subject is not None and not same:
                                continue
                            score = weight * param.weight * factor * (1.0 if same else _CROSS_SERVER)
                            if not param.required:
                                score *= 0.9
                            if src.role is Role.READ and dst.role is Role.READ and src.noun is not None \
                                    and src.noun is dst.noun and out.evidence is not Evidence.SCHEMA:
                                score *= 0.9  # two listings of the same thing rarely feed each other
                            if score < min_score - 1e-9:  # products of evidence weights land on the threshold
                                continue
                            fits = hits.get(si)
                            if fits is None:
                                fits = hits[si] = {}
                            prev = fits.get(param.path)
                            # per parameter the best fit; on a tie the output whose name is closest (latitude)
                            if prev is None or score > prev[0] + 1e-9 or (
                                    score > prev[0] - 1e-9 and _leaf_similarity(out, param)
                                    > _leaf_similarity(prev[1], param)):
                                fits[param.path] = (score, out, param)
        # a source's score: its best fit, +0.05 for each further parameter it fills
        scored = [(min(1.0, max(f[0] for f in fits.values()) + 0.05 * (len(fits) - 1)), si, fits)
                  for si, fits in hits.items()]
        scored.sort(key=lambda t: (-t[0], t[1]))
        for score, si, fits in scored[:max_sources_per_tool]:
            src = profiles[si]
            bindings = {p: f[1].path for p, f in fits.items() if not p.startswith("(")}
            why = "; ".join(f"{src.tool.name}.{out.describe()} -> {param.describe()}"
                            for _s, out, param in fits.values())
            kind = "order" if src.role in (Role.CREATE, Role.MODIFY) else "data"
            candidates.append(Candidate.model_construct(
                src=src.tool.qualified_name, dst=dst.tool.qualified_name, score=round(score, 4), kind=kind,
                bindings=bindings, rationale=why[:500], domain=domain_of.get(src.tool.server)))
    candidates.sort(key=lambda c: (c.src, c.dst))
    stats["candidates"] = len(candidates)
    stats["order_candidates"] = sum(1 for c in candidates if c.kind == "order")
    stats["cross_server_candidates"] = sum(1 for c in candidates if c.src.split("/", 1)[0] != c.dst.split("/", 1)[0])
    return candidates, stats


def _fed_by(param_sem: SemType) -> list[tuple[SemType, float]]:
    out = [(param_sem, 1.0)]
    for src_sem, targets in _FEEDS.items():
        for t, f in targets:
            if t is param_sem and src_sem is not param_sem:
                out.append((src_sem, f))
    return out


def _portable(key: tuple[SemType, str | None]) -> bool:
    sem, subject = key
    if sem in (SemType.ID, SemType.NAME, SemType.FIELD):
        return subject is not None
    return sem in _PORTABLE


def _similar_subjects(subject: str, produced: dict[tuple[SemType, str | None], list[Any]], sem: SemType,
                      cache: dict[tuple[SemType, str], list[str]]) -> list[str]:
    """Other spellings of a subject among produced keys ("stock_quote" ~ "stockquote"), by rapidfuzz."""
    hit = cache.get((sem, subject))
    if hit is None:
        vocab = [s for (t, s) in produced if t is sem and s is not None and s != subject]
        hit = [m for m, _score, _i in process.extract(subject, vocab, scorer=fuzz.ratio, score_cutoff=90, limit=3)]
        # "repo" names the same thing as "repository"
        hit += [v for v in vocab if v not in hit and _same_subject(subject, v)]
        cache[(sem, subject)] = hit
    return hit


def _same_subject(a: str, b: str) -> bool:
    """Word by word the same, a word may be shortened ("repo" ~ "repository"); "issue" is not "issue_comment"."""
    wa, wb = a.split("_"), b.split("_")
    if len(wa) != len(wb):
        return False
    return all(x == y or (min(len(x), len(y)) >= 4 and (x.startswith(y) or y.startswith(x)))
               for x, y in zip(wa, wb, strict=True))


def batch_candidates(candidates: Iterable[Candidate], batch_size: int) -> list[tuple[str, list[Candidate]]]:
    """Candidates grouped by source server, cut into batches of ``batch_size``; stable ids."""
    groups: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        groups[c.src.split("/", 1)[0]].append(c)
    batches: list[tuple[str, list[Candidate]]] = []
    for key in sorted(groups):
        items = groups[key]
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            batches.append((stable_id("edge-batch", [(c.src, c.dst) for c in chunk], prefix="eb-"), chunk))
    return batches


def server_pair_count(servers: Sequence[ServerSpec], cross_server: bool = True) -> int:
    """The baseline: one LLM call per ordered server pair (a server with itself included)."""
    n = len(servers)
    return n * n if cross_server else n
# ----------------------------------------------------------------------------- LLM side


class EdgeVerdict(BaseModel):
    index: int
    valid: bool
    score: float = Field(default=0.5, ge=0.0, le=1.0)
    bindings: dict[str, str] = Field(default_factory=dict)
    reason: str = ""


class EdgeVerdicts(BaseModel):
    items: list[EdgeVerdict]


EDGE_PROMPT_VERSION = "edges-v2"
EDGE_SYSTEM = (
    "You check dependencies between API tools. A data dependency A -> B holds when a value that A returns "
    "is a sensible argument of B in a real workflow; an order dependency A -> B holds when A must run first "
    "because it creates or changes what B then uses. Reply with JSON only."
)


def _tool_brief(tool: ToolSpec, *, outputs: bool) -> dict[str, Any]:
    brief: dict[str, Any] = {"name": tool.qualified_name, "description": (tool.description or "")[:300]}
    props = tool.input_schema.get("properties", {})
    brief["parameters"] = {k: (v.get("type") if is_object(v) else None) for k, v in list(props.items())[:12]}
    if outputs:
        prof = profile_tool(tool)
        brief["returns"] = [f.describe() for f in prof.outputs][:8] or None
        if prof.effects:
            brief["creates_or_changes"] = [f.describe() for f in prof.effects][:8]
    return brief


def edge_prompt(batch: Sequence[Candidate], tools: dict[str, ToolSpec]) -> str:
    lines = []
    for i, c in enumerate(batch):
        lines.append(json.dumps({
            "index": i,
            "kind": c.kind,
            "from": _tool_brief(tools[c.src], outputs=True),
            "to": _tool_brief(tools[c.dst], outputs=False),
            "proposed_bindings": c.bindings,
            "why_proposed": c.rationale[:300],
        }, ensure_ascii=False))
    return (
        "For each candidate dependency below decide whether it holds: for kind \"data\", whether the output of "
        "`from` can feed the parameters of `to`; for kind \"order\", whether `from` must run before `to`. Give the "
        "argument bindings as {\"<to parameter>\": \"<from output field>\"}, and a confidence score in [0, 1].\n\n"
        + "\n".join(lines) + "\n\n"
        'Reply as {"items": [{"index": 0, "valid": true, "score": 0.8, "bindings": {"param": "field"}, '
        '"reason": "..."}, ...]} with one item per candidate.'
    )


def verdicts_to_edges(
    batch: Sequence[Candidate], verdicts: EdgeVerdicts, tools: dict[str, ToolSpec], min_score: float
) -> tuple[list[GraphEdge], dict[str, int]]:
    """Accepted edges with bindings restricted to real parameters; counts of why others were not."""
    edges: list[GraphEdge] = []
    why: dict[str, int] = defaultdict(int)
    seen: set[int] = set()
    for v in verdicts.items:
        if not 0 <= v.index < len(batch) or v.index in seen:
            why["bad_index"] += 1
            continue
        seen.add(v.index)
        cand = batch[v.index]
        if not v.valid:
            why["rejected"] += 1
            continue
        if v.score < min_score:
            why["low_score"] += 1
            continue
        params = {path for path, *_ in walk_schema(tools[cand.dst].input_schema)}
        bindings = {p: str(f) for p, f in v.bindings.items() if p in params} or cand.bindings
        rationale = "; ".join(x for x in (v.reason[:300], f"candidate: {cand.rationale[:180]}") if x) or None
        edges.append(GraphEdge(src=cand.src, dst=cand.dst, kind=cand.kind, bindings=bindings,
                               score=round(v.score, 4), provenance="llm", rationale=rationale))
    why["unanswered"] += len(batch) - len(seen)
    return edges, {k: n for k, n in why.items() if n}


# The original ASTRA's graph step (trajectory_synthesis/src/1_graph_build): one call per server
# with the server's info and its tool list; the model answers a list of detections, each
# "yes" / "no" / "not sure" with a chain of tool names and the task the chain solves. Only
# "yes" chains become edges, between consecutive tools of the chain; a name that is not a tool
# of the server is skipped and the chain goes on from the last known tool, as in the original.

CHAIN_PROMPT_VERSION = "server-chains-astra-v1"


class ChainDetection(BaseModel):
    tool_graph_detect: Literal["yes", "no", "not sure"]
    tool_graph_detect_chain: list[str] = Field(default_factory=list)
    tool_graph_detect_task: str = ""


class ChainDetections(BaseModel):
    items: list[ChainDetection]


def chain_prompt(server: ServerSpec, max_tools: int = 60) -> str:
    """The per-server dependency-detection prompt (same inputs and reply shape as the original)."""
    group = {"server_name": server.name, "server_title": server.title or server.name,
             "server_description": (server.description or "")[:600]}
    tool_lines = []
    for t in server.tools[:max_tools]:
        props = t.input_schema.get("properties", {})
        params = {k: {"type": v.get("type"), "description": (v.get("description") or "")[:160]}
                  for k, v in list(props.items())[:12] if is_object(v)}
        tool_lines.append(json.dumps({"name": t.name, "description": (t.description or "")[:400], "parameters": params},
                                     ensure_ascii=False))
    return (
        "Detect the dependency relationships between the tools of one server. Two tools are related when tool1 "
        "must be called before tool2, for example tool1 gets data that tool2 then processes. Tools that can each "
        "be called directly are not related. Do not guess: when unsure, answer \"not sure\" with an empty chain. "
        "A server may support several tasks; give one chain per task.\n\n"
        f"<GroupInfo>{json.dumps(group, ensure_ascii=False)}</GroupInfo>\n"
        "<ToolList>\n" + "\n".join(tool_lines) + "\n</ToolList>\n\n"
        'Reply with a JSON list; each item has "tool_graph_detect" ("yes", "no" or "not sure"), '
        '"tool_graph_detect_chain" (tool names in calling order) and "tool_graph_detect_task" (the task the chain '
        'solves). Example: [{"tool_graph_detect": "yes", "tool_graph_detect_chain": ["login_account", '
        '"check_balance", "buy_stock"], "tool_graph_detect_task": "buy 1000 shares of NVDA"}]'
    )


class ChainOutcome(BaseModel):
    """What one server's detections gave: counts per answer, names that are not tools, edges made."""

    yes: int = 0
    no: int = 0
    not_sure: int = 0
    unknown_tools: list[str] = Field(default_factory=list)
    tasks: list[tuple[list[str], str]] = Field(default_factory=list, description="(chain, task) of each yes")


def chains_to_edges(server: ServerSpec, detected: ChainDetections, score: float = 0.6
                    ) -> tuple[list[GraphEdge], ChainOutcome]:
    short = {t.name: f"{server.name}/{t.name}" for t in server.tools}
    names = set(short.values())
    edges: dict[tuple[str, str], GraphEdge] = {}
    outcome = ChainOutcome()
    for item in detected.items:
        if item.tool_graph_detect != "yes":
            if item.tool_graph_detect == "no":
                outcome.no += 1
            else:
                outcome.not_sure += 1
            continue
        outcome.yes += 1
        resolved: list[str] = []
        for name in item.tool_graph_detect_chain:
            q = name if name in names else short.get(name)
            if q is None:
                outcome.unknown_tools.append(name)
            else:
                resolved.append(q)
        outcome.tasks.append((resolved, item.tool_graph_detect_task[:300]))
        for a, b in zip(resolved, resolved[1:], strict=False):
            if a != b and (a, b) not in edges:
                edges[(a, b)] = GraphEdge(src=a, dst=b, kind="order", score=score, provenance="llm",
                                          rationale=f"server chain for: {item.tool_graph_detect_task[:300]}")
    return list(edges.values()), outcome


# ----------------------------------------------------------------------------- merging and measuring

_PROVENANCE_RANK = {"manual": 3, "trace": 2, "llm": 1, "schema": 0}


def merge_edges(edges: Iterable[GraphEdge]) -> list[GraphEdge]:
    """One edge per (src, dst), keeping what every source said.

    A data edge beats an order edge; the strongest provenance (manual > trace > llm > schema)
    names the edge, the highest score wins, bindings are united (the named source's first),
    and the rationale lists each source as ``provenance: why``.
    """
    groups: dict[tuple[str, str], list[GraphEdge]] = defaultdict(list)
    for e in edges:
        groups[(e.src, e.dst)].append(e)
    out: list[GraphEdge] = []
    for key in sorted(groups):
        group = groups[key]
        if len(group) == 1:
            out.append(group[0])
            continue
        lead = max(group, key=lambda e: (_PROVENANCE_RANK[e.provenance], e.kind == "data", e.score))
        bindings: dict[str, str] = {}
        for e in sorted(group, key=lambda e: e is not lead):
            for p, f in e.bindings.items():
                bindings.setdefault(p, f)
        reasons = list(dict.fromkeys(f"{e.provenance}: {e.rationale}" if e.rationale else e.provenance
                                     for e in sorted(group, key=lambda e: -_PROVENANCE_RANK[e.provenance])))
        kind = "data" if any(e.kind == "data" for e in group) else "order"
        out.append(GraphEdge(src=lead.src, dst=lead.dst, kind=kind,
                             bindings=bindings, score=max(e.score for e in group), provenance=lead.provenance,
                             rationale=" | ".join(reasons)[:1000]))
    return out


class EdgeMetrics(BaseModel):
    """Recall and precision of predicted (src, dst) pairs against labelled true dependencies."""

    method: str
    predicted: int
    true: int
    hits: int
    kind_agreement: float | None = Field(default=None, description="share of hits whose kind matches the label")

    @property
    def precision(self) -> float:
        return self.hits / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.hits / self.true if self.true else 0.0

    def summary(self) -> str:
        kind = f", kind agrees on {self.kind_agreement:.0%} of hits" if self.kind_agreement is not None else ""
        return (f"{self.method}: recall {self.recall:.3f} ({self.hits}/{self.true}), precision {self.precision:.3f} "
                f"({self.hits}/{self.predicted}){kind}")


def measure_edges(method: str, predicted: Iterable[tuple[str, str, str | None]],
                  truth: dict[tuple[str, str], str]) -> EdgeMetrics:
    """``predicted``: (src, dst, kind or None); ``truth``: (src, dst) -> kind."""
    pred: dict[tuple[str, str], str | None] = {}
    for src, dst, kind in predicted:
        pred.setdefault((src, dst), kind)
    hits = [k for k in pred if k in truth]
    kinds = [pred[k] == truth[k] for k in hits if pred[k] is not None]
    return EdgeMetrics(method=method, predicted=len(pred), true=len(truth), hits=len(hits),
                       kind_agreement=(sum(kinds) / len(kinds)) if kinds else None)
