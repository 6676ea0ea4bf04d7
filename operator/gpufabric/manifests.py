"""Read ComputeNode and AgentWorkload manifests from files, directories and stdin, as the API server would.

All problems in all files are collected before anything is reported, so one run shows every mistake;
nothing is half-loaded: either every document is valid, or the caller gets the full list of errors.

What the API server refuses is refused here too, never dropped or coerced:
- an object whose kind is ours but whose apiVersion is not (`gpufabrc.io/v1alpha1`, `v1alpha1`, none) is an
  error naming the one supported value — it would otherwise vanish and change every total silently;
- a key given twice in one mapping is an error naming both lines (YAML parsers keep the last one);
- scalars keep their YAML type (the models are strict: `"70"` is not a number, `"yes"` not a boolean);
- a null the CRD does not allow is dropped before validation, as the API server prunes it (the default
  applies);
- depth and size are bounded, aliases included, so a small file cannot expand into gigabytes;
- `status.placements` are checked like the operator's ledger: a replica claiming devices a node does not
  have, an accelerator the node is not, or devices another replica holds, is reported with both claims.
Objects of other kinds (Namespaces, Secrets, …) are skipped and counted. No object at all is an error
unless the caller allows it.
"""

from __future__ import annotations

import difflib
import io
import itertools
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from gpufabric import yamlload
from gpufabric.api.agentworkload import AgentWorkload
from gpufabric.api.common import API_GROUP
from gpufabric.api.computenode import ComputeNode
from gpufabric.api.objects import KINDS, InvalidObjectError, describe, parse

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"
# Bounds on one object (a List's items each count on their own). Real manifests are far inside them:
# the examples' largest object has under 200 values and is 6 levels deep.
MAX_DEPTH = 64
MAX_VALUES = 100_000
MAX_LIST_ITEMS = 1_000_000
# One file; 20,000 ComputeNodes as `kubectl get -o yaml` prints them are 35-50 MB.
MAX_FILE_BYTES = 512 << 20


@dataclass(frozen=True)
class Fleet:
    """The objects the manifests declare, in file order, and the kinds of those skipped."""

    nodes: tuple[ComputeNode, ...]
    workloads: tuple[AgentWorkload, ...]
    skipped: tuple[str, ...] = ()

    def skipped_summary(self) -> str | None:
        """`skipped 3 objects of other kinds (Namespace, Secret)`, or None."""
        if not self.skipped:
            return None
        kinds = ", ".join(sorted(Counter(self.skipped)))
        count = len(self.skipped)
        return f"skipped {count} object{'s' if count != 1 else ''} of other kinds ({kinds})"


class ManifestError(Exception):
    """Invalid input files. `problems` holds one line per problem, each naming file and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def manifest_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and the manifest files directories hold (recursively, sorted for a stable order).
    `-` is standard input."""
    files: list[Path] = []
    missing: list[str] = []
    for raw in paths:
        if str(raw) == STDIN:
            files.append(Path(STDIN))
            continue
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


def _open(path: Path, stdin: IO[str] | None) -> IO[bytes]:
    """The file as a byte stream: libyaml reads it in chunks and decodes it itself, so a large fleet's text
    is never held whole (a 20,000-node file is 35 MB, twice that as text and its UTF-8 copy); more than
    MAX_FILE_BYTES is refused before reading. Standard input is read up to the bound."""
    if str(path) == STDIN:
        source = stdin or sys.stdin
        buffer = getattr(source, "buffer", None)
        data = buffer.read(MAX_FILE_BYTES + 1) if buffer is not None else source.read(MAX_FILE_BYTES + 1).encode()
        if len(data) > MAX_FILE_BYTES:
            raise _TooLargeError
        return io.BytesIO(data)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise _TooLargeError
    return path.open("rb")


def _unreadable_text(data: bytes, position: int, reason: str) -> str:
    """`not UTF-8 text: line 4 has the byte 0xff` from libyaml's byte position in `data`."""
    line = data[:position].count(b"\n") + 1
    if "UTF-8" in reason and position < len(data):
        return f"not UTF-8 text: line {line} has the byte 0x{data[position]:02x}"
    return f"line {line}: {reason}"


def _head(path: Path, size: int) -> bytes:
    with path.open("rb") as file:
        return file.read(size)


class _TooLargeError(Exception):
    pass


def _documents(path: Path, stdin: IO[str] | None) -> Iterator[tuple[str, yamlload.Loaded]]:
    """(where, document) for each YAML document in the file, read one at a time; `kind: List` is unpacked.
    A file that stops being readable part-way raises ManifestError after the documents before it."""
    name = "<stdin>" if str(path) == STDIN else str(path)
    stdin_bytes: bytes | None = None
    try:
        with _open(path, stdin) as raw:
            if isinstance(raw, io.BytesIO):
                stdin_bytes = raw.getvalue()
            stream = yamlload.load_all(raw, max_depth=MAX_DEPTH)
            # One document ahead, to know whether to number them.
            ahead = list(itertools.islice(stream, 2))
            several = len(ahead) > 1
            for index, loaded in enumerate(itertools.chain(ahead, stream), start=1):
                where = f"{name} (document {index})" if several else name
                for item_where, item in _unpacked(where, loaded.document):
                    yield item_where, loaded._replace(document=item)
    except OSError as error:
        raise ManifestError([f"{name}: cannot read: {error.strerror or error}"]) from None
    except yaml.reader.ReaderError as error:
        # Bytes libyaml does not accept as text (not UTF-8, control characters): say on which line. The
        # stream is gone; a file is read again up to the position (this error only), stdin kept its bytes.
        data = stdin_bytes if stdin_bytes is not None else _head(path, error.position + 1)
        raise ManifestError([f"{name}: {_unreadable_text(data, error.position, error.reason)}"]) from None
    except _TooLargeError:
        raise ManifestError([f"{name}: larger than {MAX_FILE_BYTES >> 20} MiB: split it into several files"]) from None
    except yaml.YAMLError as error:
        raise ManifestError([f"{name}: {yamlload.problem(error)}"]) from None
    except RecursionError:  # the pure-Python parser, when libyaml is missing
        raise ManifestError([f"{name}: not valid YAML: nested deeper than the YAML parser allows"]) from None


def _unpacked(where: str, document: Any) -> Iterator[tuple[str, Any]]:
    if document is None:
        return
    if isinstance(document, Mapping) and document.get("kind") == "List" and isinstance(document.get("items"), list):
        items = document["items"]
        if len(items) > MAX_LIST_ITEMS:
            raise ManifestError([f"{where}: a List of more than {MAX_LIST_ITEMS:,} items"])
        for item_index, item in enumerate(items, start=1):
            yield f"{where} item {item_index}", item
    else:
        yield where, document


def too_big(document: Any) -> str | None:
    """Why an object is out of bounds (too deep, or too many values once aliases are expanded), or None.
    Iterative, so no input can exhaust the stack; it stops as soon as a bound is passed."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return f"more than {MAX_VALUES:,} values once YAML aliases are expanded"
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, Mapping):
            stack.extend((child, depth + 1) for child in value.values())
        elif isinstance(value, list):
            stack.extend((child, depth + 1) for child in value)
    return None


def _is_ours(document: Mapping[str, Any]) -> bool:
    """Our kind, or our API group: either way a mistake in the other half is an error, not another kind.
    A group one typo away (`gpufabrc.io`) counts as ours too."""
    api_version = document.get("apiVersion")
    group = api_version.split("/", 1)[0] if isinstance(api_version, str) else ""
    kind = document.get("kind")
    ours = isinstance(kind, str) and kind in KINDS
    return ours or bool(difflib.get_close_matches(group, [API_GROUP], n=1, cutoff=0.8))


class _Collector:
    """Objects and problems of one `load`, document by document."""

    def __init__(self) -> None:
        self.nodes: list[ComputeNode] = []
        self.workloads: list[AgentWorkload] = []
        self.skipped: list[str] = []
        self.problems: list[str] = []
        self._declared: dict[tuple[str, str], str] = {}
        self._described_nodes: dict[str, str] = {}

    def summary(self) -> str:
        return (
            f"{len(self.nodes):,} ComputeNodes, {len(self.workloads):,} AgentWorkloads, {len(self.problems):,} problems"
        )

    def add(self, where: str, loaded: yamlload.Loaded) -> None:
        document = loaded.document
        parsed = self._parse(where, loaded)
        if parsed is None:
            return
        key = (parsed.kind, parsed.key if isinstance(parsed, AgentWorkload) else parsed.name)
        if key in self._declared:
            self.problems.append(f"{where}: {describe(document)} is already declared in {self._declared[key]}")
            return
        self._declared[key] = where
        if isinstance(parsed, AgentWorkload):
            self.workloads.append(parsed)
            return
        node_name = parsed.spec.node_name
        if node_name in self._described_nodes:
            self.problems.append(
                f"{where}: {describe(document)}: spec.nodeName: Node {node_name} is already described "
                f"by {self._described_nodes[node_name]}"
            )
            return
        self._described_nodes[node_name] = f"ComputeNode {parsed.name}"
        self.nodes.append(parsed)

    def _parse(self, where: str, loaded: yamlload.Loaded) -> ComputeNode | AgentWorkload | None:
        """The object, or None with the reason recorded (a problem, or a skipped kind). Without aliases a
        document is no bigger or deeper than its text, which the loader bounds."""
        document = loaded.document
        if not isinstance(document, Mapping):
            self.problems.append(f"{where}: expected a Kubernetes object, found {type(document).__name__}")
            return None
        shape = too_big(document) if loaded.aliased else None
        if shape is not None:
            self.problems.append(f"{where}: {describe(document)}: {shape}")
            return None
        if not _is_ours(document):
            kind = document.get("kind")
            if isinstance(kind, str) and kind and document.get("apiVersion"):
                self.skipped.append(kind)
            else:
                self.problems.append(f"{where}: not a Kubernetes object: it needs apiVersion and kind")
            return None
        try:
            return parse(document, nulls=loaded.nulls)
        except InvalidObjectError as error:
            self.problems.extend(f"{where}: {error.what}: {problem}" for problem in error.problems)
            return None


def load(
    paths: Iterable[str | Path],
    *,
    allow_empty: bool = False,
    stdin: IO[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Fleet:
    """Parse every gpufabric.io object in `paths`; other kinds are skipped (and counted).

    Raises ManifestError listing every problem: invalid YAML, invalid objects, objects declared twice (the
    same name, or two ComputeNodes describing one Node, which would count its devices twice), placements
    no node can hold, and — unless `allow_empty` — no object at all. `progress` hears a line now and then
    when reading takes more than a second."""
    paths = list(paths)
    files = manifest_files(paths)
    collector = _Collector()
    started = last_report = time.monotonic()
    for number, path in enumerate(files, start=1):
        try:
            for where, loaded in _documents(path, stdin):
                collector.add(where, loaded)
                now = time.monotonic()
                if progress is not None and now - started > 1.0 and now - last_report > 1.0:
                    last_report = now
                    progress(f"reading file {number}/{len(files)}: {collector.summary()}")
        except ManifestError as error:
            collector.problems.extend(error.problems)
    problems = collector.problems + placement_problems(collector.nodes, collector.workloads)
    fleet = Fleet(nodes=tuple(collector.nodes), workloads=tuple(collector.workloads), skipped=tuple(collector.skipped))
    if not problems and not fleet.nodes and not fleet.workloads and not allow_empty:
        named = ", ".join(str(p) for p in paths) or "(no files)"
        skipped = fleet.skipped_summary()
        problems.append(
            f"{named}: no ComputeNode or AgentWorkload found"
            + (f" ({skipped})" if skipped else "")
            + "; pass --allow-empty if that is expected"
        )
    if problems:
        raise ManifestError(problems)
    return fleet


def placement_problems(nodes: Iterable[ComputeNode], workloads: Iterable[AgentWorkload]) -> list[str]:
    """status.placements checked like the operator's ledger: each replica's devices on each of its nodes
    must exist there, on that accelerator, and not be claimed by another replica too."""
    by_name = {node.name: node for node in nodes}
    claims: dict[str, list[tuple[str, int]]] = defaultdict(list)
    problems: list[str] = []
    for workload in workloads:
        wanted = workload.spec.replicas
        for placement in workload.status.placements if workload.status else []:
            if placement.replica >= wanted:
                continue  # scaled away: `gpufabric plan` does not count it
            who = f"AgentWorkload {workload.key} replica {placement.replica}"
            for name in placement.nodes:
                node = by_name.get(name)
                if node is None:
                    continue  # an orphan: plan reports it and places the replica again
                if node.spec.accelerator != placement.accelerator:
                    problems.append(
                        f"{who}: status.placements: runs on {placement.accelerator}, but ComputeNode {name} "
                        f"has {node.spec.accelerator}"
                    )
                elif placement.devices_per_node > node.spec.devices:
                    problems.append(
                        f"{who}: status.placements: claims {placement.devices_per_node} devices of ComputeNode "
                        f"{name}, which has {node.spec.devices}"
                    )
                else:
                    claims[name].append((who, placement.devices_per_node))
    for name, held in claims.items():
        devices = by_name[name].spec.devices
        if sum(count for _, count in held) > devices:
            listed = "; ".join(f"{who}: {count}" for who, count in held)
            problems.append(
                f"ComputeNode {name} has {devices} devices, but status.placements claim "
                f"{sum(count for _, count in held)} of them ({listed})"
            )
    return problems
