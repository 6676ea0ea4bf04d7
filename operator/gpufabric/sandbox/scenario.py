"""The scenario file of `gpufabric sandbox`: how long the run lasts, what the simulated clients ask for, and
the events scripted over time (surges, node failures and recoveries, new nodes, scaling, more objects, and
jobs of others that take a node's devices).

`load_scenario` reads and validates one file; `check_references` then holds its names against the fleet the
sandbox will load. Every problem is one line, `<file>: <field path>: <problem>`, the path spelt with the keys
the user wrote (`events[2].surge.factor`), so a mistake is found without reading any code.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeAlias, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, PydanticCustomError

from gpufabric import yamlload
from gpufabric.api.common import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    MAX_NAME_LENGTH,
    PATTERN_MEANINGS,
    Name,
    camel_path,
)
from gpufabric.api.objects import shown

DEFAULT_SCENARIO = Path(__file__).with_name("default-scenario.yaml")

# A day: long enough for any soak the sandbox is meant for, short enough that a typo in the unit (90000 for
# 90) is caught rather than left running.
MAX_DURATION_SECONDS = 86_400
MAX_NOISE = 0.5
MAX_ADDED_PER_EVENT = 100
MAX_REPLICAS = 1000
# A scenario is a page of YAML; the bound keeps a wrong path (a fleet dump, a binary) from being parsed whole.
MAX_FILE_BYTES = 1 << 20
# Root, events, an event, its action, a value: anything deeper is a mistake, refused before validation.
MAX_DEPTH = 16
ADDED_NODE_INFIX = "-new-"


class ScenarioError(Exception):
    """A scenario that cannot run. `problems` holds one `<file>: <field path>: <problem>` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _ScenarioModel(BaseModel):
    """camelCase keys only (a snake_case spelling is an unknown key, not a synonym), unknown keys refused,
    and strict types: `"30"` is text, not thirty seconds, so a quoted number is reported instead of guessed."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=False,
        validate_by_alias=True,
        extra="forbid",
        frozen=True,
        strict=True,
        # YAML's .inf and .nan would turn every bound below into a silent pass.
        allow_inf_nan=False,
    )


def _namespaced(value: str) -> str:
    namespace, _, name = value.partition("/")
    if not (re.fullmatch(DNS_LABEL_PATTERN, namespace) and re.fullmatch(DNS_SUBDOMAIN_PATTERN, name)):
        raise PydanticCustomError(
            "workload_key",
            "must be namespace/name, such as agents/support-agent (got {got})",
            {"got": shown(value)},
        )
    return value


# An AgentWorkload as `namespace/name`, the way `gpufabric plan` and the sandbox's view name it.
WorkloadKey = Annotated[str, Field(max_length=63 + 1 + MAX_NAME_LENGTH), AfterValidator(_namespaced)]


class Surge(_ScenarioModel):
    """The workload's clients ask `factor` times their baseline for `for_seconds`; below 1 it is a lull."""

    workload: WorkloadKey
    factor: Annotated[float, Field(gt=0)]
    # `for` is the YAML key; it is a Python keyword, hence the field's own name.
    for_seconds: Annotated[float, Field(gt=0, alias="for")]


class FailNode(_ScenarioModel):
    """The Kubernetes Node stops: NotReady, and the pods on it are lost."""

    node: Name


class RecoverNode(_ScenarioModel):
    """A failed Node comes back Ready."""

    node: Name


class AddNodes(_ScenarioModel):
    """`count` new Nodes and ComputeNodes, cloned from the ComputeNode `like`."""

    like: Name
    count: Annotated[int, Field(ge=1, le=MAX_ADDED_PER_EVENT)]
    # Numbering continues across events that clone the same node, so two of them never make one name twice.
    _first_number: int = PrivateAttr(default=1)

    @property
    def names(self) -> tuple[str, ...]:
        """The new nodes' names: `<like>-new-1`, `-new-2`, ... (after those earlier events added)."""
        return tuple(
            f"{self.like}{ADDED_NODE_INFIX}{number}"
            for number in range(self._first_number, self._first_number + self.count)
        )


class Scale(_ScenarioModel):
    """Set the workload's spec.replicas, as a person with kubectl would (the autoscaler may change it again)."""

    workload: WorkloadKey
    replicas: Annotated[int, Field(ge=0, le=MAX_REPLICAS)]


class Apply(_ScenarioModel):
    """Create or update the AgentWorkloads and ComputeNodes in a manifest file."""

    file: Annotated[str, Field(min_length=1)]

    def resolved(self, scenario_file: Path) -> Path:
        """The file to read: a relative path is relative to the scenario file, not to the working directory,
        so a scenario and its manifests move together (`~` is the home directory)."""
        return scenario_file.parent / Path(self.file).expanduser()


class StartForeignJob(_ScenarioModel):
    """Someone else's job starts on a node: a pod the operator does not manage (not labelled as its own), bound
    to the ComputeNode's Node (`spec.nodeName`, as kube-scheduler binds) and asking for every device the
    ComputeNode declares. The operator counts them as held by others and places around them; on a node whose
    devices are in use already, the kubelet rejects the pod, as a real kubelet's admission does."""

    name: Name  # the pod's name (in the namespace FOREIGN_NAMESPACE), which endForeignJob names
    node: Name


class EndForeignJob(_ScenarioModel):
    """A job startForeignJob started finishes: its pod Succeeded, and the devices it held are free again."""

    name: Name


# Where foreign jobs' pods run: a namespace of their own, as another team's would be.
FOREIGN_NAMESPACE = "batch"

Action: TypeAlias = Surge | FailNode | RecoverNode | AddNodes | Scale | Apply | StartForeignJob | EndForeignJob


def _given_not_null(value: Any) -> Any:
    # `failNode:` with nothing after it is YAML's null; without this it would read as "no action here" and the
    # error would be about the event instead of the empty key.
    if value is None:
        raise PydanticCustomError("action_null", "must be a mapping of the action's settings (got None)")
    return value


NOT_NULL = BeforeValidator(_given_not_null)


class Event(_ScenarioModel):
    """At `at` seconds since the start, one action: exactly one of the keys below is given."""

    at: Annotated[float, Field(ge=0)]
    surge: Annotated[Surge | None, NOT_NULL] = None
    fail_node: Annotated[FailNode | None, NOT_NULL] = None
    recover_node: Annotated[RecoverNode | None, NOT_NULL] = None
    add_nodes: Annotated[AddNodes | None, NOT_NULL] = None
    scale: Annotated[Scale | None, NOT_NULL] = None
    apply: Annotated[Apply | None, NOT_NULL] = None
    start_foreign_job: Annotated[StartForeignJob | None, NOT_NULL] = None
    end_foreign_job: Annotated[EndForeignJob | None, NOT_NULL] = None
    # Where the event was in the file's list: events are kept in time order, messages name them as written.
    _file_index: int = PrivateAttr(default=0)

    def _given_actions(self) -> list[tuple[str, Action]]:
        given = []
        for field_name in ACTION_FIELDS:
            action = getattr(self, field_name)
            if action is not None:
                given.append((_alias(field_name), action))
        return given

    @model_validator(mode="after")
    def _one_action(self) -> Event:
        given = self._given_actions()
        if not given:
            raise PydanticCustomError("no_action", "needs an action: one of {keys}", {"keys": _ACTION_KEYS_IN_WORDS})
        if len(given) > 1:
            raise PydanticCustomError(
                "several_actions",
                "has {count} actions ({keys}): an event does one thing, so give each action its own event",
                {"count": len(given), "keys": ", ".join(key for key, _ in given)},
            )
        return self

    @property
    def action(self) -> Action:
        return self._given_actions()[0][1]

    @property
    def action_key(self) -> str:
        """The action's YAML key, e.g. `failNode`."""
        return self._given_actions()[0][0]

    @property
    def file_index(self) -> int:
        """The event's index in the file's `events` list (0-based), as messages name it: `events[2]`."""
        return self._file_index


ACTION_FIELDS = (
    "surge",
    "fail_node",
    "recover_node",
    "add_nodes",
    "scale",
    "apply",
    "start_foreign_job",
    "end_foreign_job",
)


def _alias(field_name: str) -> str:
    return Event.model_fields[field_name].alias or field_name


_ACTION_KEYS_IN_WORDS = ", ".join(_alias(name) for name in ACTION_FIELDS)


def _in_time_order(events: list[Event]) -> list[Event]:
    """Sorted by `at`; events at the same time keep the file's order (sorted() is stable)."""
    for index, event in enumerate(events):
        event._file_index = index
    ordered = sorted(events, key=lambda event: event.at)
    next_number: dict[str, int] = {}
    for event in ordered:
        action = event.action
        if isinstance(action, AddNodes):
            action._first_number = next_number.get(action.like, 1)
            next_number[action.like] = action._first_number + action.count
    return ordered


class Scenario(_ScenarioModel):
    """A whole scenario file. `events` are in time order."""

    duration: Annotated[float, Field(gt=0, le=MAX_DURATION_SECONDS)]
    # Baseline generation tokens/s per workload; one not listed asks for 60 % of what its replicas can serve.
    demand: dict[WorkloadKey, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    # Each engine's rate is jittered by up to this fraction, so the autoscaler sees real-looking samples.
    noise: Annotated[float, Field(ge=0, le=MAX_NOISE)] = 0.05
    events: Annotated[list[Event], AfterValidator(_in_time_order)] = Field(default_factory=list)

    def with_duration(self, seconds: float) -> Scenario:
        """The scenario run for `seconds` instead (the --duration flag); events are checked against it by
        `check_references`, so call that on the result."""
        if not 0 < seconds <= MAX_DURATION_SECONDS:
            raise ValueError(f"a duration is more than 0 and at most {MAX_DURATION_SECONDS} seconds (got {seconds})")
        return self.model_copy(update={"duration": float(seconds)})


# --- reading a file --------------------------------------------------------------------------------------


def load_scenario(path: Path) -> Scenario:
    """The scenario in `path`, validated and with its events in time order. Raises ScenarioError, one line per
    problem, each naming the file: unreadable or invalid YAML (a key given twice included), a document that is
    not a mapping, unknown keys, values of the wrong type or out of bounds. Names are not checked against any
    fleet here: that is `check_references`."""
    where = str(path)
    document = _read_document(path, where)
    if not isinstance(document, dict):
        found = "nothing" if document is None else type(document).__name__
        raise ScenarioError([f"{where}: expected a mapping with duration, demand, noise and events, found {found}"])
    try:
        return Scenario.model_validate(document)
    except ValidationError as error:
        raise ScenarioError([f"{where}: {line}" for line in validation_problems(error)]) from None


def _read_document(path: Path, where: str) -> Any:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ScenarioError([f"{where}: cannot read: {error.strerror or error}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ScenarioError([f"{where}: larger than {MAX_FILE_BYTES >> 20} MiB: is this a scenario file?"])
    try:
        documents = [loaded.document for loaded in yamlload.load_all(data, max_depth=MAX_DEPTH)]
    except yaml.reader.ReaderError as error:
        raise ScenarioError([f"{where}: {_unreadable(data, error)}"]) from None
    except yaml.YAMLError as error:
        raise ScenarioError([f"{where}: {yamlload.problem(error)}"]) from None
    if len(documents) > 1:
        raise ScenarioError([f"{where}: holds {len(documents)} YAML documents; a scenario is one"])
    return documents[0] if documents else None


def _unreadable(data: bytes, error: yaml.reader.ReaderError) -> str:
    """Which line holds the byte that is not text; the two YAML parsers word it differently, so the words are
    ours."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as decoding:
        line = data[: decoding.start].count(b"\n") + 1
        return f"not UTF-8 text: line {line} has the byte 0x{data[decoding.start]:02x}"
    line = data[: error.position].count(b"\n") + 1
    return f"line {line}: {error.reason}"


# --- pydantic's errors in words ----------------------------------------------------------------------------

# How each bound reads; pydantic's own ("Input should be greater than 0") leaves out what was given.
_BOUNDS = {
    "greater_than": ("greater than", "gt"),
    "greater_than_equal": ("at least", "ge"),
    "less_than": ("less than", "lt"),
    "less_than_equal": ("at most", "le"),
}
_TYPES = {
    "float_type": "a number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "string_type": "text",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "list_type": "a list",
}


def validation_problems(error: ValidationError) -> list[str]:
    """`<field path>: <problem>` for each of pydantic's errors on a Scenario, paths in the file's keys."""
    return [_line(detail) for detail in error.errors(include_url=False)]


def _line(detail: ErrorDetails) -> str:
    loc = detail["loc"]
    if loc and loc[-1] == "[key]":
        # A map key is wrong, not its value: name the map and quote the key.
        *parent, key, _ = loc
        return f"{camel_path(tuple(parent)) or '<root>'}: key {shown(key)}: {_in_words(detail)}"
    if detail["type"] == "invalid_key":
        # A key YAML read as something other than text (`1:`, `true:`) where field names are expected.
        return f"{camel_path(loc[:-1]) or '<root>'}: key {shown(loc[-1])}: unknown field"
    path = camel_path(loc)
    message = _in_words(detail)
    if detail["type"] == "extra_forbidden":
        message += _did_you_mean(str(loc[-1]), _keys_at(loc[:-1]))
    return f"{path or '<root>'}: {message}"


def _in_words(detail: ErrorDetails) -> str:
    kind = detail["type"]
    got = shown(detail.get("input"))
    context = detail.get("ctx") or {}
    if kind == "missing":
        return "Required value"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in _BOUNDS:
        words, bound = _BOUNDS[kind]
        limit = context[bound]
        return f"must be {words} {_number(limit) if isinstance(limit, float) else limit} (got {got})"
    if kind in _TYPES:
        # A quoted number is the likely mistake; say what to do about it.
        quoted = kind in ("float_type", "int_type") and _is_number_text(detail.get("input"))
        return f"must be {_TYPES[kind]}{', without quotes' if quoted else ''} (got {got})"
    if kind == "finite_number":
        return f"must be a finite number (got {got})"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {context['max_length']} characters (got {len(str(detail.get('input')))})"
    if kind == "string_pattern_mismatch":
        pattern = str(context.get("pattern"))
        return f"must be {PATTERN_MEANINGS.get(pattern, f'text matching {pattern}')} (got {got})"
    # Our own PydanticCustomErrors already read as a problem; anything else is pydantic's words and the value.
    if kind in ("workload_key", "action_null", "no_action", "several_actions"):
        return detail["msg"]
    return f"{detail['msg']} (got {got})"


def _is_number_text(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model at `loc` accepts (for a misspelt key's hint), following fields and list items."""
    model: type[BaseModel] | None = Scenario
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if (f.alias or name) == part), None)
        model = _model_in(field.annotation) if field is not None else None
    return [field.alias or name for name, field in model.model_fields.items()] if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, through Optional, list and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _did_you_mean(given: str, known: Collection[str]) -> str:
    # Case matters in YAML keys but not to the person who wrote `failnode`.
    by_folded = {key.lower(): key for key in known}
    close = difflib.get_close_matches(given.lower(), list(by_folded), n=1, cutoff=0.6)
    return f" (did you mean {by_folded[close[0]]}?)" if close else ""


# --- names against the fleet -------------------------------------------------------------------------------


@dataclass
class _Timeline:
    """What exists at an event, as `check_references` follows the events in time order."""

    nodes: set[str]
    workloads: set[str]
    added_by: dict[str, Event]  # node name -> the addNodes event that adds it
    failed: dict[str, Event] = field(default_factory=dict)  # node -> its failNode, until recovered
    jobs: dict[str, Event] = field(default_factory=dict)  # foreign job -> its startForeignJob
    ended: dict[str, Event] = field(default_factory=dict)  # foreign job -> its endForeignJob


def check_references(
    scenario: Scenario, *, nodes: Collection[str], workloads: Collection[str], where: str
) -> list[str]:
    """Problems with the scenario's names and times, as `<where>: <field path>: <problem>` lines; empty when it
    can run. `nodes` are the ComputeNode names and `workloads` the AgentWorkloads' `namespace/name` the sandbox
    will start with; objects that `apply` events create are the caller's to add (their files are the caller's
    to read, via `Apply.resolved`). Events are followed in time order: a node must exist (or have been added by
    an earlier addNodes) when an event names it, a recoverNode needs an earlier failNode of that node, and an
    endForeignJob an earlier startForeignJob of that job (each job's name is used once). Events at or after
    `duration` would never happen, so they are problems too."""
    problems: list[str] = []
    timeline = _Timeline(
        nodes=set(nodes),
        workloads=set(workloads),
        added_by={
            name: event
            for event in scenario.events
            if isinstance(event.action, AddNodes)
            for name in event.action.names
        },
    )
    for key in scenario.demand:
        if key not in timeline.workloads:
            problems.append(f"{where}: demand.{key}: {_unknown('AgentWorkload', key, timeline.workloads)}")
    for event in scenario.events:
        event_path = f"events[{event.file_index}]"
        if event.at >= scenario.duration:
            problems.append(
                f"{where}: {event_path}.at: must be before the end of the run, duration {_number(scenario.duration)} s "
                f"(got {_number(event.at)})"
            )
        for field_name, problem in _event_problems(event, timeline):
            problems.append(f"{where}: {event_path}.{event.action_key}.{field_name}: {problem}")
    return problems


def _event_problems(event: Event, timeline: _Timeline) -> Iterator[tuple[str, str]]:
    """(field, problem) for one event, given the timeline so far; updates it with the event's effect."""
    match event.action:
        case Surge(workload=workload) | Scale(workload=workload):
            if workload not in timeline.workloads:
                yield "workload", _unknown("AgentWorkload", workload, timeline.workloads)
        case StartForeignJob() | EndForeignJob():
            yield from _job_problems(event, timeline)
        case Apply():
            pass  # the caller reads the file and checks its objects
        case _:
            yield from _node_problems(event, timeline)


def _node_problems(event: Event, timeline: _Timeline) -> Iterator[tuple[str, str]]:
    """A node fails once before it recovers, and exists (or was added earlier) when an event names it."""
    existing, failed = timeline.nodes, timeline.failed
    match event.action:
        case FailNode(node=node) | RecoverNode(node=node) if node not in existing:
            yield "node", _missing_node(node, existing, timeline.added_by)
        case FailNode(node=node):
            if node in failed:
                yield "node", f"{node} has already failed, at {_when(failed[node])}"
            else:
                failed[node] = event
        case RecoverNode(node=node):
            if failed.pop(node, None) is None:
                yield "node", f"{node} has not failed before this event: recoverNode needs an earlier failNode of it"
        case AddNodes(like=like) as adding:
            if like not in existing:
                yield "like", _missing_node(like, existing, timeline.added_by)
            taken = [name for name in adding.names if name in existing]
            if taken:
                yield "like", f"the new nodes would take names that exist already: {', '.join(taken)}"
            existing.update(adding.names)


def _job_problems(event: Event, timeline: _Timeline) -> Iterator[tuple[str, str]]:
    """A foreign job starts on a node that exists, under a name of its own (its pod's, as a Job's name is
    used once); it ends once, after it started."""
    jobs, ended = timeline.jobs, timeline.ended
    match event.action:
        case StartForeignJob(name=name, node=node):
            if node not in timeline.nodes:
                yield "node", _missing_node(node, timeline.nodes, timeline.added_by)
            if name in ended:
                yield "name", f"foreign job {name} ran already, from {_when(jobs[name])}: give each job its own name"
            elif name in jobs:
                yield "name", f"foreign job {name} runs already, since {_when(jobs[name])}"
            else:
                jobs[name] = event
        case EndForeignJob(name=name):
            if name in ended:
                yield "name", f"foreign job {name} has ended already, at {_when(ended[name])}"
            elif name not in jobs:
                yield (
                    "name",
                    f"no foreign job {name} runs before this event: endForeignJob needs an earlier startForeignJob "
                    "of it",
                )
            else:
                ended[name] = event


def _missing_node(node: str, existing: set[str], added_by: dict[str, Event]) -> str:
    later = added_by.get(node)
    if later is not None:
        return f"{node} does not exist yet: it is added later, at {_when(later)}"
    return _unknown("ComputeNode", node, existing)


def _unknown(kind: str, name: str, known: Collection[str]) -> str:
    close = _closest(name, known)
    if close:
        hint = f"did you mean {_one_of(close)}?"
    elif not known:
        hint = f"there is no {kind} at all"
    elif len(known) <= 8:
        hint = f"known: {', '.join(sorted(known))}"
    else:
        hint = f"none of the {len(known)} has a similar name"
    return f"no {kind} {name}; {hint}"


def _closest(name: str, known: Collection[str]) -> list[str]:
    """The known names nearest to `name`: the best match and any about as near (`gpu-a-h100-1` is nearest to
    gpu-a-h100-01, not to every H100), at most three, none when nothing is similar."""
    scored = sorted(
        ((difflib.SequenceMatcher(None, name, candidate).ratio(), candidate) for candidate in known),
        key=lambda pair: (-pair[0], pair[1]),
    )
    if not scored or scored[0][0] < 0.6:
        return []
    best = scored[0][0]
    return [candidate for ratio, candidate in scored[:3] if ratio >= best - 0.05]


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _when(event: Event) -> str:
    return f"{_number(event.at)} s (events[{event.file_index}])"


def _number(seconds: float) -> str:
    """30.0 as `30`, 12.5 as `12.5`: as the user would have written it."""
    return f"{seconds:g}"
