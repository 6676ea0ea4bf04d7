"""Reading manifests from files: every problem in every file is reported at once, with its place, and a
bad input loads nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gpufabric.cli import main
from gpufabric.manifests import ManifestError, load

NODE = """apiVersion: gpufabric.io/v1alpha1
kind: ComputeNode
metadata:
  name: {name}
spec:
  nodeName: {node}
  vendor: nvidia
  accelerator: H100-SXM5-80GB
  devices: 8
"""
WORKLOAD = """apiVersion: gpufabric.io/v1alpha1
kind: AgentWorkload
metadata:
  name: chat
  namespace: agents
spec:
  model: {name: m, parametersBillions: 8}
  replicas: REPLICAS
  runtimes:
    nvidia: {image: vllm}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(*paths: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load(paths)
    return caught.value.problems


def test_a_directory_loads_in_file_order_and_skips_other_kinds(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", NODE.format(name="b", node="b"))
    write(
        tmp_path,
        "a.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: agents}\n---\n" + NODE.format(name="a", node="a"),
    )
    write(tmp_path, "notes.txt", "not a manifest")
    fleet = load([tmp_path])
    assert [n.name for n in fleet.nodes] == ["a", "b"]


def test_a_list_object_is_unpacked(tmp_path: Path) -> None:
    items = "\n".join(
        "  - " + line if i == 0 else "    " + line
        for i, line in enumerate(NODE.format(name="x", node="x").splitlines())
    )
    path = write(tmp_path, "list.yaml", f"apiVersion: v1\nkind: List\nitems:\n{items}\n")
    assert [n.name for n in load([path]).nodes] == ["x"]


def test_every_problem_in_every_file_is_reported(tmp_path: Path) -> None:
    bad_yaml = write(tmp_path, "broken.yaml", "kind: [unclosed\n")
    bad_object = write(tmp_path, "chat.yaml", WORKLOAD.replace("REPLICAS", "-2"))
    scalar = write(tmp_path, "scalar.yaml", "just a string\n")
    problems = problems_of(bad_yaml, bad_object, scalar)
    assert len(problems) == 3
    assert problems[0].startswith(f"{bad_yaml}: not valid YAML:")
    assert problems[1] == (
        f"{bad_object}: AgentWorkload agents/chat: spec.replicas: Input should be greater than or equal to 0"
    )
    assert problems[2] == f"{scalar}: expected a Kubernetes object, found str"


def test_a_bad_document_is_located_within_its_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "two.yaml",
        NODE.format(name="ok", node="ok")
        + "---\n"
        + NODE.format(name="bad", node="bad").replace("devices: 8", "devices: 0"),
    )
    assert problems_of(path) == [
        f"{path} (document 2): ComputeNode bad: spec.devices: Input should be greater than or equal to 1"
    ]


def test_an_object_declared_twice_is_an_error(tmp_path: Path) -> None:
    first = write(tmp_path, "1.yaml", WORKLOAD.replace("REPLICAS", "1"))
    second = write(tmp_path, "2.yaml", WORKLOAD.replace("REPLICAS", "2"))
    assert problems_of(first, second) == [f"{second}: AgentWorkload agents/chat is already declared in {first}"]


def test_one_node_described_twice_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "nodes.yaml",
        NODE.format(name="cn-1", node="gpu-1") + "---\n" + NODE.format(name="cn-2", node="gpu-1"),
    )
    assert problems_of(path) == [
        f"{path} (document 2): ComputeNode cn-2: spec.nodeName: Node gpu-1 is already described by ComputeNode cn-1"
    ]


def test_a_missing_path_is_named(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: no such file or directory"]


def test_validate_command_exits_2_and_lists_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "chat.yaml", WORKLOAD.replace("REPLICAS", '"many"'))
    assert main(["validate", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert "invalid input (1 problem):" in err
    assert "spec.replicas: Input should be a valid integer (got 'many')" in err


def test_validate_command_summarises_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    assert main(["validate", "-f", str(examples)]) == 0
    assert capsys.readouterr().out == "valid: 20 ComputeNodes (160 devices), 5 AgentWorkloads\n"


def test_other_kinds_are_counted_and_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mixed.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n"
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\n"
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n---\n" + NODE.format(name="n", node="n"),
    )
    fleet = load([path])
    assert fleet.skipped == ("Namespace", "Secret", "Namespace")
    assert fleet.skipped_summary() == "skipped 3 objects of other kinds (Namespace, Secret)"


def test_no_object_is_an_error_unless_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.yaml", "# nothing yet\n")
    assert problems_of(path) == [
        f"{path}: no ComputeNode or AgentWorkload found; pass --allow-empty if that is expected"
    ]
    assert load([path], allow_empty=True).nodes == ()


def test_a_null_the_crd_does_not_allow_means_the_default(tmp_path: Path) -> None:
    """The API server prunes such nulls before defaulting (seen on v1.36); so do we."""
    path = write(tmp_path, "chat.yaml", WORKLOAD.replace("REPLICAS", "null") + "  vendorPreference: null\n")
    (workload,) = load([path]).workloads
    assert workload.spec.replicas == 1
    assert workload.spec.vendor_preference is None


def test_a_file_over_the_size_bound_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "big.yaml", NODE.format(name="n", node="n"))
    monkeypatch.setattr("gpufabric.manifests.MAX_FILE_BYTES", 100)
    assert problems_of(path) == [f"{path}: larger than 0 MiB: split it into several files"]


def test_stdin_is_read_for_a_dash() -> None:
    fleet = load(["-"], stdin=io.StringIO(NODE.format(name="n", node="n")))
    assert [n.name for n in fleet.nodes] == ["n"]


def test_progress_is_reported_while_a_long_read_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "nodes.yaml", "---\n".join(NODE.format(name=f"n{i}", node=f"n{i}") for i in range(5)))
    clock = iter(float(second) for second in range(0, 100, 2))
    monkeypatch.setattr("gpufabric.manifests.time.monotonic", lambda: next(clock))
    lines: list[str] = []
    load([path], progress=lines.append)
    assert lines
    assert lines[-1].startswith("reading file 1/1: ")
    assert "ComputeNodes" in lines[-1]


def test_placements_beyond_a_node_are_reported_with_every_claim(tmp_path: Path) -> None:
    placement = (
        "status:\n  placements:\n    - {replica: 0, vendor: nvidia, accelerator: H100-SXM5-80GB, precision: BF16, "
        "devicesPerNode: 6, nodes: [gpu-1]}\n"
    )
    path = write(
        tmp_path,
        "fleet.yaml",
        NODE.format(name="gpu-1", node="gpu-1")
        + "---\n"
        + WORKLOAD.replace("REPLICAS", "1")
        + placement
        + "---\n"
        + WORKLOAD.replace("REPLICAS", "1").replace("name: chat", "name: chat-2")
        + placement,
    )
    assert problems_of(path) == [
        "ComputeNode gpu-1 has 8 devices, but status.placements claim 12 of them "
        "(AgentWorkload agents/chat replica 0: 6; AgentWorkload agents/chat-2 replica 0: 6)"
    ]
