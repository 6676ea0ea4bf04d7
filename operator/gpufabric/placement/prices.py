"""Shadow prices of node classes during a placement pass, kept current as replicas decide.

Every pending replica asks for one class (its best option that exists) with a regret: the value per
device it would lose by taking its best option on another class instead. On each class, asks are ranked
by regret; while the asks that remain claim more than the class has free, the price is the midpoint
between the regret of the last ask that fits and the first that does not — any price in between clears
the class, and the midpoint makes the first excluded ask strictly prefer its alternative. When a replica
decides, its ask is withdrawn; when devices are allocated, supply shrinks; the price follows, so a class
stops being expensive as soon as the remaining demand fits (no herding of identical replicas away).

Each class keeps a Fenwick tree of claims in ranked order: price, withdraw and take are O(log n).
"""

from __future__ import annotations

from dataclasses import dataclass


class _Fenwick:
    def __init__(self, values: list[int]) -> None:
        self.size = len(values)
        self.tree = [0] * (self.size + 1)
        for index, value in enumerate(values):
            self.add(index, value)

    def add(self, index: int, delta: int) -> None:
        position = index + 1
        while position <= self.size:
            self.tree[position] += delta
            position += position & -position

    def prefix(self, index: int) -> int:
        """Sum of values[0..index]."""
        total = 0
        position = index + 1
        while position > 0:
            total += self.tree[position]
            position -= position & -position
        return total

    def first_reaching(self, target: int) -> int:
        """The smallest index whose prefix sum is at least `target` (target >= 1, reachable)."""
        position = 0
        remaining = target
        step = 1 << self.size.bit_length()
        while step:
            nxt = position + step
            if nxt <= self.size and self.tree[nxt] < remaining:
                position = nxt
                remaining -= self.tree[nxt]
            step >>= 1
        return position


@dataclass(frozen=True)
class Ask:
    class_id: int
    regret: float
    claim: int


class Market:
    """Prices of the node classes for one pass. Asks are identified by the caller's request index."""

    def __init__(self, supply: list[int], asks: dict[int, Ask]) -> None:
        self.supply = list(supply)
        by_class: dict[int, list[tuple[float, int, Ask]]] = {}
        for request, ask in asks.items():
            by_class.setdefault(ask.class_id, []).append((-ask.regret, request, ask))
        self._regrets: dict[int, list[float]] = {}
        self._claims: dict[int, list[int]] = {}
        self._trees: dict[int, _Fenwick] = {}
        self._where: dict[int, tuple[int, int]] = {}
        for class_id, entries in by_class.items():
            entries.sort(key=lambda entry: (entry[0], entry[1]))
            self._regrets[class_id] = [ask.regret for _, _, ask in entries]
            self._claims[class_id] = [ask.claim for _, _, ask in entries]
            self._trees[class_id] = _Fenwick(self._claims[class_id])
            for position, (_, request, _) in enumerate(entries):
                self._where[request] = (class_id, position)

    def price(self, class_id: int) -> float:
        tree = self._trees.get(class_id)
        if tree is None:
            return 0.0
        supply = max(self.supply[class_id], 0)
        if tree.prefix(tree.size - 1) <= supply:
            return 0.0
        regrets = self._regrets[class_id]
        first_out = tree.first_reaching(supply + 1)
        fitting = tree.prefix(first_out) - self._claims[class_id][first_out]
        if fitting <= 0:
            return regrets[first_out]
        last_in = tree.first_reaching(fitting)
        return (regrets[last_in] + regrets[first_out]) / 2

    def withdraw(self, request: int) -> None:
        """The request has decided (placed anywhere, or refused): its ask leaves the market."""
        where = self._where.pop(request, None)
        if where is None:
            return
        class_id, position = where
        claim = self._claims[class_id][position]
        self._claims[class_id][position] = 0
        self._trees[class_id].add(position, -claim)

    def take(self, class_id: int, devices: int) -> None:
        self.supply[class_id] -= devices
