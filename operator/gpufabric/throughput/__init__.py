"""Throughput: tokens/s from serving engines' counters — rates, learned per-device throughput, the
tokens/s autoscaler and capacity planning. Pure: readings and times in, numbers out."""

from gpufabric.throughput.autoscale import Autoscaler, Inputs, Recommendation
from gpufabric.throughput.capacity import CapacityRow, best_total, free_capacity
from gpufabric.throughput.exposition import Reading, ScrapeProblem, read
from gpufabric.throughput.learning import LearnedThroughput, size_class
from gpufabric.throughput.tracker import ScrapeTarget, TokenReport, TokenTracker, TokenView

__all__ = [
    "Autoscaler",
    "CapacityRow",
    "Inputs",
    "LearnedThroughput",
    "Reading",
    "Recommendation",
    "ScrapeProblem",
    "ScrapeTarget",
    "TokenReport",
    "TokenTracker",
    "TokenView",
    "best_total",
    "free_capacity",
    "read",
    "size_class",
]
