"""Read ComputeNode and AgentWorkload manifests from files and directories, as `kubectl apply -f` would.

All problems in all files are collected before anything is reported, so one run shows every mistake;
nothing is half-loaded: either every document is valid, or the caller gets the full list of errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.api.computenode import ComputeNode
from gpufabric.api.objects import InvalidObjectError, describe, is_ours, parse

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Fleet:
    """The objects the manifests declare, in file order."""

    nodes: tuple[ComputeNode, ...]
    workloads: tuple[AgentWorkload, ...]


class ManifestError(Exception):
    """Invalid input files. `problems` holds one line per problem, each naming file and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def manifest_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and the manifest files directories hold (recursively, sorted for a stable order)."""
    files: list[Path] = []
    missing: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(f"{path}: no such file or directory")
    if missing:
        raise ManifestError(missing)
    return files


def _documents(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, document) for each YAML document in the file; `kind: List` is unpacked."""
    try:
        text = path.read_text(encoding="utf-8")
        loaded = list(yaml.safe_load_all(text))
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError([f"{path}: cannot read: {error}"]) from None
    except yaml.YAMLError as error:
        raise ManifestError([f"{path}: not valid YAML: {error}".replace("\n", " ")]) from None
    for index, document in enumerate(loaded, start=1):
        where = f"{path} (document {index})" if len(loaded) > 1 else str(path)
        if document is None:
            continue
        if isinstance(document, Mapping) and document.get("kind") == "List":
            for item_index, item in enumerate(document.get("items") or [], start=1):
                yield f"{where} item {item_index}", item
        else:
            yield where, document


def load(paths: Iterable[str | Path]) -> Fleet:
    """Parse every gpufabric.io object in `paths`; other kinds (Namespaces, Secrets…) are skipped.

    Raises ManifestError listing every problem: invalid YAML, invalid objects, and objects declared twice
    (the same name, or two ComputeNodes describing one Node, which would count its devices twice)."""
    nodes: list[ComputeNode] = []
    workloads: list[AgentWorkload] = []
    problems: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    described_nodes: dict[str, str] = {}

    for path in manifest_files(paths):
        try:
            documents = list(_documents(path))
        except ManifestError as error:
            problems.extend(error.problems)
            continue
        for where, document in documents:
            if not isinstance(document, Mapping):
                problems.append(f"{where}: expected a Kubernetes object, found {type(document).__name__}")
                continue
            if not is_ours(document):
                continue
            try:
                parsed = parse(document)
            except InvalidObjectError as error:
                problems.extend(f"{where}: {error.what}: {problem}" for problem in error.problems)
                continue
            key = (parsed.kind, parsed.key if isinstance(parsed, AgentWorkload) else parsed.name)
            if key in seen:
                problems.append(f"{where}: {describe(document)} is already declared in {seen[key]}")
                continue
            seen[key] = where
            if isinstance(parsed, ComputeNode):
                node_name = parsed.spec.node_name
                if node_name in described_nodes:
                    problems.append(
                        f"{where}: {describe(document)}: spec.nodeName: Node {node_name} is already described "
                        f"by {described_nodes[node_name]}"
                    )
                    continue
                described_nodes[node_name] = f"ComputeNode {parsed.name}"
                nodes.append(parsed)
            else:
                workloads.append(parsed)
    if problems:
        raise ManifestError(problems)
    return Fleet(nodes=tuple(nodes), workloads=tuple(workloads))
