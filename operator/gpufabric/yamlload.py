"""YAML documents as plain Python values, strictly and fast: PyYAML's safe loader on libyaml's parser.

Strict: a key given twice in one mapping is an error naming both lines (PyYAML would keep the last one and
plan 600 replicas where the first line said 6). A key that overrides a `<<: *defaults` merge is allowed,
as YAML intends.

Fast, because a fleet file holds millions of nodes and PyYAML spends most of its time per node in Python:
- libyaml (CSafeLoader) parses and composes, where PyYAML was built with it;
- plain scalars' tags are resolved once per distinct short text (`name`, `8`, `true` recur on every
  object), not by trying every implicit resolver's regular expression on each;
- documents are built from the node tree by one small recursive function for the core tags (str, map,
  seq), and by PyYAML's own constructors for everything else (int, float, bool, null, timestamps, merge
  keys, binary), so the values are exactly PyYAML's.
Together these read a 20,000-ComputeNode file several times faster than CSafeLoader alone
(benchmarks/manifests.py measures it).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from typing import IO, Any, NamedTuple

import yaml

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# libyaml's parser when PyYAML was built with it; the pure-Python one otherwise (correct, ~10x slower).
WITH_LIBYAML = _BaseLoader is not yaml.SafeLoader

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_NULL = "tag:yaml.org,2002:null"
# Tags of recently seen scalars: keys and small values repeat on every object of a fleet.
_RESOLVED_MAX_ENTRIES = 65_536
_RESOLVER = yaml.resolver.Resolver()
_INTERNED_MAX_LENGTH = 64
assert not _RESOLVER.yaml_path_resolvers, "tags would depend on the path: the cache below would be wrong"


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(f"key {key!r} is given twice, on lines {first} and {again}")


class TooDeepError(yaml.MarkedYAMLError):
    def __init__(self, limit: int, mark: yaml.Mark) -> None:
        super().__init__(problem=f"nested deeper than {limit} levels", problem_mark=mark)


class StrictLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """PyYAML's safe loader that refuses duplicate keys and builds documents quickly."""

    # The composer asks for every node's tag; answers depend only on (kind, text, implicit) since no path
    # resolvers are registered, so one C-level cache serves every loader.
    resolve = staticmethod(functools.lru_cache(maxsize=_RESOLVED_MAX_ENTRIES)(_RESOLVER.resolve))

    max_depth = 64
    aliased = False  # whether the last document used an alias: its expanded size may exceed its text's
    nulls = False  # whether the last document holds a null

    def construct_document(self, node: yaml.Node) -> Any:
        self.aliased = self.nulls = False
        try:
            return self._build(node, {}, 1)
        finally:
            # What PyYAML's construct_document resets after each document.
            self.constructed_objects: dict[Any, Any] = {}
            self.recursive_objects: dict[Any, Any] = {}
            self.state_generators: list[Any] = []
            self.deep_construct = False

    def _build(self, node: yaml.Node, built: dict[int, Any], depth: int) -> Any:
        """The value of `node`; `built` holds maps and lists by node, so an alias shares its anchor's value
        (as PyYAML does) and a recursive structure terminates."""
        tag = node.tag
        if isinstance(node, yaml.ScalarNode):
            if tag == _NULL:
                self.nulls = True
                return None
            if tag == _STR:
                # Short texts (interface names, accelerators, domains, label values) recur on every object
                # of a fleet; one copy each keeps a 20,000-node fleet's models tens of MB smaller.
                value = node.value
                return sys.intern(value) if len(value) <= _INTERNED_MAX_LENGTH else value
            scalar = _SCALARS.get(tag)
            if scalar is not None:
                return scalar(self, node)
        if id(node) in built:
            self.aliased = True
            return built[id(node)]
        if depth > self.max_depth:
            raise TooDeepError(self.max_depth, node.start_mark)
        if tag == _MAP and isinstance(node, yaml.MappingNode) and not _has_merge(node):
            return self._build_mapping(node, built, depth)
        if tag == _SEQ and isinstance(node, yaml.SequenceNode):
            sequence: list[Any] = []
            built[id(node)] = sequence
            for item in node.value:
                sequence.append(self._build(item, built, depth + 1))
            return sequence
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicates(node)  # before PyYAML flattens the merge into the node
            self.aliased = True  # a merge key brings in an anchor's map, built by PyYAML without `built`
        value = self.construct_object(node, deep=True)
        built[id(node)] = value
        return value

    def _build_mapping(self, node: yaml.MappingNode, built: dict[int, Any], depth: int) -> dict[Any, Any]:
        mapping: dict[Any, Any] = {}
        built[id(node)] = mapping
        _refuse_duplicates(node)
        for key_node, value_node in node.value:
            key = self._build(key_node, built, depth + 1)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
                ) from None
            mapping[key] = self._build(value_node, built, depth + 1)
        return mapping


_SCALARS: dict[str, Any] = {
    "tag:yaml.org,2002:int": yaml.constructor.SafeConstructor.construct_yaml_int,
    "tag:yaml.org,2002:float": yaml.constructor.SafeConstructor.construct_yaml_float,
    "tag:yaml.org,2002:bool": yaml.constructor.SafeConstructor.construct_yaml_bool,
}


def _has_merge(node: yaml.MappingNode) -> bool:
    return any(key_node.tag == _MERGE for key_node, _ in node.value)


def _refuse_duplicates(node: yaml.MappingNode) -> None:
    """Keys compared as resolved scalars: `1` and `"1"` differ, as they do for the API server."""
    if len(node.value) < 2:
        return
    lines: dict[tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
            continue
        key = (key_node.tag, key_node.value)
        if key in lines:
            raise DuplicateKeyError(key_node.value, lines[key], key_node.start_mark.line + 1)
        lines[key] = key_node.start_mark.line + 1


class Loaded(NamedTuple):
    document: Any
    aliased: bool  # it used an alias (or a merge): its expanded size may exceed its text's
    nulls: bool  # it holds a null somewhere


def load_all(text: str | bytes | IO[str] | IO[bytes], *, max_depth: int = StrictLoader.max_depth) -> Iterator[Loaded]:
    """Each document of `text` (text, bytes, or a stream read in chunks), one at a time. Raises
    yaml.YAMLError: DuplicateKeyError, TooDeepError past `max_depth` levels of maps and lists."""
    loader = StrictLoader(text)
    loader.max_depth = max_depth
    try:
        while loader.check_data():
            document = loader.get_data()
            yield Loaded(document, loader.aliased, loader.nulls)
    finally:
        loader.dispose()


def problem(error: yaml.YAMLError) -> str:
    """One line for a YAML error, as manifests and scenario files both word it: a key given twice names both
    lines, nesting too deep its line, anything else is `not valid YAML: line 3, column 7: found duplicate
    anchor` rather than PyYAML's report over several lines."""
    if isinstance(error, DuplicateKeyError):
        return str(error)
    if isinstance(error, TooDeepError):
        return _marked(error)
    return f"not valid YAML: {_marked(error)}"


def _marked(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        what = error.problem or "syntax error"
        context = f" ({error.context})" if error.context else ""
        if "exceeded maximum nesting depth" in what:
            what, context = "nested deeper than the YAML parser allows", ""
        return f"line {mark.line + 1}, column {mark.column + 1}: {what}{context}"
    return str(error).replace("\n", " ")
