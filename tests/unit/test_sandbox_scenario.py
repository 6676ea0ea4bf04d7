"""The sandbox's scenario file: the packaged default runs against the examples, and every mistake a person can
make in one is a single line naming the file, the key as they wrote it, and what is wrong."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from gpufabric.manifests import load
from gpufabric.sandbox.scenario import (
    DEFAULT_SCENARIO,
    AddNodes,
    Apply,
    EndForeignJob,
    Event,
    FailNode,
    RecoverNode,
    Scale,
    Scenario,
    ScenarioError,
    StartForeignJob,
    Surge,
    check_references,
    load_scenario,
)

REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLES = REPOSITORY / "examples"
PACKAGE = REPOSITORY / "operator" / "gpufabric"

# A small fleet for the reference checks: names one typo away from each other, as in real fleets.
NODES = frozenset({"gpu-a-h100-01", "gpu-a-h100-02", "npu-b-910b-01"})
WORKLOADS = frozenset({"agents/support-agent", "agents/code-agent"})


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_loading(path: Path) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    return caught.value.problems


def example_names() -> tuple[list[str], list[str]]:
    fleet = load([EXAMPLES / "fleet", EXAMPLES / "workloads"])
    nodes = [node.metadata.name for node in fleet.nodes]
    workloads = [f"{workload.metadata.namespace}/{workload.metadata.name}" for workload in fleet.workloads]
    return nodes, workloads


# --- the packaged default ------------------------------------------------------------------------------------


def test_the_default_scenario_runs_against_the_examples() -> None:
    nodes, workloads = example_names()
    scenario = load_scenario(DEFAULT_SCENARIO)
    assert check_references(scenario, nodes=nodes, workloads=workloads, where=str(DEFAULT_SCENARIO)) == []


def test_the_default_scenario_surges_fails_adds_recovers_and_scales_in_that_order() -> None:
    scenario = load_scenario(DEFAULT_SCENARIO)
    assert [type(event.action) for event in scenario.events] == [
        Surge,
        StartForeignJob,
        FailNode,
        AddNodes,
        RecoverNode,
        Scale,
        EndForeignJob,
    ]
    surge, job, fail, add, recover, scale, job_end = (event.action for event in scenario.events)
    assert isinstance(surge, Surge)
    assert isinstance(job, StartForeignJob)
    assert isinstance(fail, FailNode)
    assert isinstance(add, AddNodes)
    assert isinstance(recover, RecoverNode)
    assert isinstance(scale, Scale)
    assert isinstance(job_end, EndForeignJob)
    # Someone else's job holds an H100 node while the failed node's replica has to move, and ends before the
    # 60 s a short run lasts, so both are seen.
    assert job_end.name == job.name
    assert job.node != fail.node
    assert scenario.events[1].at < scenario.events[2].at
    assert scenario.events[-1].at < 60
    # The only example workload the autoscaler acts on, surged long enough for it to react before the end.
    assert surge.workload == "agents/support-agent"
    assert surge.factor > 1
    assert scenario.events[0].at + surge.for_seconds < scenario.duration
    assert recover.node == fail.node
    assert add.names == ("npu-b-910b-01-new-1", "npu-b-910b-01-new-2")


def test_the_default_scenario_shows_every_key_a_scenario_accepts() -> None:
    """It is the reference users read: a key added to the models must be described there too."""
    text = DEFAULT_SCENARIO.read_text()
    models: list[type[BaseModel]] = [
        *(Scenario, Event, Surge, FailNode, RecoverNode, AddNodes, Scale, Apply),
        *(StartForeignJob, EndForeignJob),
    ]
    keys = {field.alias or name for model in models for name, field in model.model_fields.items()}
    assert {key for key in keys if not re.search(rf"\b{key}:", text)} == set()


def test_the_default_scenario_is_package_data() -> None:
    assert DEFAULT_SCENARIO.parent == PACKAGE / "sandbox"
    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["gpufabric"]
    relative = DEFAULT_SCENARIO.relative_to(PACKAGE).as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in shipped)


# --- what loads ----------------------------------------------------------------------------------------------


def test_a_minimal_scenario_takes_the_defaults(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, "duration: 30\n"))
    assert (scenario.duration, scenario.demand, scenario.noise, scenario.events) == (30, {}, 0.05, [])


def test_events_run_in_time_order_and_keep_their_place_in_the_file(tmp_path: Path) -> None:
    text = """\
duration: 90
demand: {agents/support-agent: 12000}
noise: 0
events:
  - {at: 40, failNode: {node: b}}
  - {at: 10, scale: {workload: agents/code-agent, replicas: 4}}
  - {at: 40, recoverNode: {node: c}}
  - {at: 0, surge: {workload: agents/support-agent, factor: 0.5, for: 2.5}}
"""
    scenario = load_scenario(write(tmp_path, text))
    assert [(event.at, event.file_index, event.action_key) for event in scenario.events] == [
        (0, 3, "surge"),
        (10, 1, "scale"),
        (40, 0, "failNode"),
        (40, 2, "recoverNode"),
    ]
    assert scenario.events[0].action == Surge.model_validate(
        {"workload": "agents/support-agent", "factor": 0.5, "for": 2.5}
    )
    assert scenario.demand == {"agents/support-agent": 12000.0}
    assert scenario.noise == 0


def test_nodes_added_from_the_same_node_are_numbered_on_in_time_order(tmp_path: Path) -> None:
    text = """\
duration: 90
events:
  - {at: 20, addNodes: {like: a, count: 1}}
  - {at: 10, addNodes: {like: a, count: 2}}
  - {at: 30, addNodes: {like: b, count: 1}}
"""
    scenario = load_scenario(write(tmp_path, text))
    names = [event.action.names for event in scenario.events if isinstance(event.action, AddNodes)]
    assert names == [("a-new-1", "a-new-2"), ("a-new-3",), ("b-new-1",)]


def test_an_applied_file_is_found_next_to_the_scenario(tmp_path: Path) -> None:
    text = (
        "duration: 9\nevents:\n  - {at: 1, apply: {file: more/workloads.yaml}}\n  - {at: 2, apply: {file: /abs.yaml}}\n"
    )
    scenario_file = write(tmp_path, text)
    first, second = (event.action for event in load_scenario(scenario_file).events)
    assert isinstance(first, Apply)
    assert isinstance(second, Apply)
    assert first.resolved(scenario_file) == tmp_path / "more" / "workloads.yaml"
    assert second.resolved(scenario_file) == Path("/abs.yaml")


def test_the_duration_can_be_overridden_within_its_bounds(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, "duration: 30\nevents: [{at: 20, failNode: {node: gpu-a-h100-01}}]\n"))
    shorter = scenario.with_duration(10)
    assert (shorter.duration, scenario.duration) == (10, 30)
    assert check_references(shorter, nodes=NODES, workloads=WORKLOADS, where="s") == [
        "s: events[0].at: must be before the end of the run, duration 10 s (got 20)"
    ]
    for seconds in (0, -1, 86_401):
        with pytest.raises(ValueError, match="at most 86400 seconds"):
            scenario.with_duration(seconds)


# --- what does not load --------------------------------------------------------------------------------------

EVENT = "duration: 90\nevents:\n  - {at: 10, "
REFUSED = {
    "unknown key, with the key meant": (
        EVENT + "failnode: {node: a}}\n",
        "events[0].failnode: unknown field (did you mean failNode?)",
    ),
    "snake_case is not camelCase": (
        EVENT + "fail_node: {node: a}}\n",
        "events[0].fail_node: unknown field (did you mean failNode?)",
    ),
    "unknown top-level key": ("duration: 90\nnoize: 0.1\n", "noize: unknown field (did you mean noise?)"),
    "unknown key inside an action": (
        EVENT + "addNodes: {like: a, count: 1, cpunt: 2}}\n",
        "events[0].addNodes.cpunt: unknown field (did you mean count?)",
    ),
    "an event with no action": (
        EVENT + "}\n",
        "events[0]: needs an action: one of surge, failNode, recoverNode, addNodes, scale, apply, startForeignJob, "
        "endForeignJob",
    ),
    "an event with two actions": (
        EVENT + "failNode: {node: a}, scale: {workload: a/b, replicas: 1}}\n",
        "events[0]: has 2 actions (failNode, scale): an event does one thing, so give each action its own event",
    ),
    "an action with nothing in it": (
        EVENT + "failNode: }\n",
        "events[0].failNode: must be a mapping of the action's settings (got None)",
    ),
    "a negative factor": (
        EVENT + "surge: {workload: a/b, factor: -1, for: 30}}\n",
        "events[0].surge.factor: must be greater than 0 (got -1)",
    ),
    "`at` not a number": (
        "duration: 90\nevents:\n  - {at: soon, failNode: {node: a}}\n",
        "events[0].at: must be a number (got 'soon')",
    ),
    "a negative `at`": (
        "duration: 90\nevents:\n  - {at: -5, failNode: {node: a}}\n",
        "events[0].at: must be at least 0 (got -5)",
    ),
    "a quoted number is text": (
        EVENT + "surge: {workload: a/b, factor: 2, for: '30'}}\n",
        "events[0].surge.for: must be a number, without quotes (got '30')",
    ),
    "a quoted whole number is text": (
        EVENT + 'scale: {workload: a/b, replicas: "4"}}\n',
        "events[0].scale.replicas: must be a whole number, without quotes (got '4')",
    ),
    "replicas are whole": (
        EVENT + "scale: {workload: a/b, replicas: 2.5}}\n",
        "events[0].scale.replicas: must be a whole number (got 2.5)",
    ),
    "true is not a number": ("duration: true\n", "duration: must be a number (got True)"),
    "infinity is not a duration": ("duration: .inf\n", "duration: must be a finite number (got inf)"),
    "no duration": ("noise: 0.1\n", "duration: Required value"),
    "a duration over a day": ("duration: 90000\n", "duration: must be at most 86400 (got 90000)"),
    "too much noise": ("duration: 9\nnoise: 0.6\n", "noise: must be at most 0.5 (got 0.6)"),
    "too many new nodes": (
        EVENT + "addNodes: {like: a, count: 101}}\n",
        "events[0].addNodes.count: must be at most 100 (got 101)",
    ),
    "a workload without its namespace": (
        EVENT + "scale: {workload: code-agent, replicas: 1}}\n",
        "events[0].scale.workload: must be namespace/name, such as agents/support-agent (got 'code-agent')",
    ),
    "a demand key without its namespace": (
        "duration: 9\ndemand: {support-agent: 100}\n",
        "demand: key 'support-agent': must be namespace/name, such as agents/support-agent (got 'support-agent')",
    ),
    "a node name Kubernetes refuses": (
        EVENT + "failNode: {node: GPU_1}}\n",
        "events[0].failNode.node: must be a DNS subdomain: lowercase letters, digits, '-' and '.', starting and "
        "ending with a letter or digit (got 'GPU_1')",
    ),
    "an empty file name": (EVENT + "apply: {file: ''}}\n", "events[0].apply.file: must not be empty"),
    "a foreign job without a node": (
        EVENT + "startForeignJob: {name: training}}\n",
        "events[0].startForeignJob.node: Required value",
    ),
    "a foreign job's name Kubernetes refuses": (
        EVENT + "startForeignJob: {name: Nightly_Training, node: a}}\n",
        "events[0].startForeignJob.name: must be a DNS subdomain: lowercase letters, digits, '-' and '.', starting "
        "and ending with a letter or digit (got 'Nightly_Training')",
    ),
    "a foreign job's end names the job, not its node": (
        EVENT + "endForeignJob: {name: training, node: a}}\n",
        "events[0].endForeignJob.node: unknown field",
    ),
    "events not a list": ("duration: 9\nevents: {at: 1}\n", "events: must be a list (got {'at': 1})"),
    "an event not a mapping": ("duration: 9\nevents: [10]\n", "events[0]: must be a mapping (got 10)"),
    "a key given twice": (
        "duration: 90\nevents:\n  - at: 10\n    at: 20\n    failNode: {node: a}\n",
        "key 'at' is given twice, on lines 3 and 4",
    ),
    "not a mapping": ("- at: 10\n", "expected a mapping with duration, demand, noise and events, found list"),
    "empty": ("# nothing yet\n", "expected a mapping with duration, demand, noise and events, found nothing"),
    "bad YAML": (
        "duration: 90\nevents: [\n",
        "not valid YAML: line 3, column 1: did not find expected node content (while parsing a flow node)",
    ),
    "two documents": ("duration: 1\n---\nduration: 2\n", "holds 2 YAML documents; a scenario is one"),
}


@pytest.mark.parametrize(("text", "expected"), REFUSED.values(), ids=REFUSED.keys())
def test_a_bad_scenario_is_one_line_naming_file_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert problems_loading(path) == [f"{path}: {expected}"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = """\
duration: 0
events:
  - {at: x, failNode: {node: a}}
  - {at: 1, surge: {workload: a/b, factor: 0, for: 1}}
"""
    path = write(tmp_path, text)
    assert problems_loading(path) == [
        f"{path}: duration: must be greater than 0 (got 0)",
        f"{path}: events[0].at: must be a number (got 'x')",
        f"{path}: events[1].surge.factor: must be greater than 0 (got 0)",
    ]
    assert str(ScenarioError(["a", "b"])) == "a\nb"


def test_a_file_that_cannot_be_read_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert problems_loading(missing) == [f"{missing}: cannot read: No such file or directory"]
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"duration: 9\nnoise: \xff\n")
    assert problems_loading(binary) == [f"{binary}: not UTF-8 text: line 2 has the byte 0xff"]


# --- names against the fleet ---------------------------------------------------------------------------------

HEAD = "duration: 90\nevents:\n"
UNRESOLVED = {
    "an unknown node, with the name meant": (
        HEAD + "  - {at: 10, failNode: {node: gpu-a-h100-1}}\n",
        "events[0].failNode.node: no ComputeNode gpu-a-h100-1; did you mean gpu-a-h100-01?",
    ),
    "an unknown node like nothing known": (
        HEAD + "  - {at: 10, addNodes: {like: zzz, count: 1}}\n",
        "events[0].addNodes.like: no ComputeNode zzz; known: gpu-a-h100-01, gpu-a-h100-02, npu-b-910b-01",
    ),
    "an unknown workload, with the name meant": (
        HEAD + "  - {at: 10, surge: {workload: agents/suport-agent, factor: 2, for: 5}}\n",
        "events[0].surge.workload: no AgentWorkload agents/suport-agent; did you mean agents/support-agent?",
    ),
    "an unknown workload in demand": (
        "duration: 90\ndemand: {agents/code-agnet: 10}\n",
        "demand.agents/code-agnet: no AgentWorkload agents/code-agnet; did you mean agents/code-agent?",
    ),
    "a recovery before the failure, whatever the order in the file": (
        HEAD + "  - {at: 20, failNode: {node: gpu-a-h100-01}}\n  - {at: 10, recoverNode: {node: gpu-a-h100-01}}\n",
        "events[1].recoverNode.node: gpu-a-h100-01 has not failed before this event: recoverNode needs an earlier "
        "failNode of it",
    ),
    "a node failed twice": (
        HEAD + "  - {at: 10, failNode: {node: gpu-a-h100-01}}\n  - {at: 20, failNode: {node: gpu-a-h100-01}}\n",
        "events[1].failNode.node: gpu-a-h100-01 has already failed, at 10 s (events[0])",
    ),
    "a node named before it is added": (
        HEAD
        + "  - {at: 30, addNodes: {like: gpu-a-h100-01, count: 2}}\n"
        + "  - {at: 20, failNode: {node: gpu-a-h100-01-new-2}}\n",
        "events[1].failNode.node: gpu-a-h100-01-new-2 does not exist yet: it is added later, at 30 s (events[0])",
    ),
    "a foreign job on an unknown node, with the name meant": (
        HEAD + "  - {at: 10, startForeignJob: {name: training, node: gpu-a-h100-2}}\n",
        "events[0].startForeignJob.node: no ComputeNode gpu-a-h100-2; did you mean gpu-a-h100-02?",
    ),
    "a foreign job on a node added later": (
        HEAD
        + "  - {at: 30, addNodes: {like: gpu-a-h100-01, count: 1}}\n"
        + "  - {at: 20, startForeignJob: {name: training, node: gpu-a-h100-01-new-1}}\n",
        "events[1].startForeignJob.node: gpu-a-h100-01-new-1 does not exist yet: it is added later, at 30 s "
        "(events[0])",
    ),
    "a foreign job that ends before it starts, whatever the order in the file": (
        HEAD
        + "  - {at: 20, startForeignJob: {name: training, node: gpu-a-h100-01}}\n"
        + "  - {at: 10, endForeignJob: {name: training}}\n",
        "events[1].endForeignJob.name: no foreign job training runs before this event: endForeignJob needs an "
        "earlier startForeignJob of it",
    ),
    "a foreign job started twice while it runs": (
        HEAD
        + "  - {at: 10, startForeignJob: {name: training, node: gpu-a-h100-01}}\n"
        + "  - {at: 20, startForeignJob: {name: training, node: gpu-a-h100-02}}\n",
        "events[1].startForeignJob.name: foreign job training runs already, since 10 s (events[0])",
    ),
    "a foreign job's name used again": (
        HEAD
        + "  - {at: 10, startForeignJob: {name: training, node: gpu-a-h100-01}}\n"
        + "  - {at: 20, endForeignJob: {name: training}}\n"
        + "  - {at: 30, startForeignJob: {name: training, node: gpu-a-h100-02}}\n",
        "events[2].startForeignJob.name: foreign job training ran already, from 10 s (events[0]): give each job its "
        "own name",
    ),
    "a foreign job ended twice": (
        HEAD
        + "  - {at: 10, startForeignJob: {name: training, node: gpu-a-h100-01}}\n"
        + "  - {at: 20, endForeignJob: {name: training}}\n"
        + "  - {at: 30, endForeignJob: {name: training}}\n",
        "events[2].endForeignJob.name: foreign job training has ended already, at 20 s (events[1])",
    ),
    "an event at the end": (
        HEAD + "  - {at: 90, scale: {workload: agents/code-agent, replicas: 1}}\n",
        "events[0].at: must be before the end of the run, duration 90 s (got 90)",
    ),
    "an event after the end": (
        HEAD + "  - {at: 120.5, scale: {workload: agents/code-agent, replicas: 1}}\n",
        "events[0].at: must be before the end of the run, duration 90 s (got 120.5)",
    ),
}


@pytest.mark.parametrize(("text", "expected"), UNRESOLVED.values(), ids=UNRESOLVED.keys())
def test_a_name_the_fleet_does_not_have_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    scenario = load_scenario(path)
    assert check_references(scenario, nodes=NODES, workloads=WORKLOADS, where=str(path)) == [f"{path}: {expected}"]


def test_nodes_added_earlier_and_recovered_failures_are_known(tmp_path: Path) -> None:
    text = """\
duration: 90
demand: {agents/code-agent: 100}
events:
  - {at: 10, addNodes: {like: npu-b-910b-01, count: 2}}
  - {at: 20, failNode: {node: npu-b-910b-01-new-2}}
  - {at: 30, recoverNode: {node: npu-b-910b-01-new-2}}
  - {at: 40, failNode: {node: npu-b-910b-01-new-2}}
  - {at: 50, addNodes: {like: npu-b-910b-01-new-1, count: 1}}
  - {at: 60, apply: {file: more.yaml}}
  - {at: 61, startForeignJob: {name: training, node: npu-b-910b-01-new-1}}
  - {at: 62, endForeignJob: {name: training}}
  - {at: 63, startForeignJob: {name: inference-eval, node: gpu-a-h100-01}}
"""
    scenario = load_scenario(write(tmp_path, text))
    assert check_references(scenario, nodes=NODES, workloads=WORKLOADS, where="s") == []
    start, end = (event.action for event in scenario.events[-3:-1])
    assert start == StartForeignJob(name="training", node="npu-b-910b-01-new-1")
    assert end == EndForeignJob(name="training")


def test_new_nodes_may_not_take_an_existing_name(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, HEAD + "  - {at: 10, addNodes: {like: gpu-a-h100-01, count: 2}}\n"))
    taken = NODES | {"gpu-a-h100-01-new-2"}
    assert check_references(scenario, nodes=taken, workloads=WORKLOADS, where="s") == [
        "s: events[0].addNodes.like: the new nodes would take names that exist already: gpu-a-h100-01-new-2"
    ]
