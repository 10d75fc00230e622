"""The segment container: a sans-I/O state machine over a durable log.

Reading order: operations (the log record format) → segment (state + read index) →
container (requests in, effects out; group-commit frames; recovery by replay).
"""

from streamvault.dataplane.container.container import Container, ReadPlan
from streamvault.dataplane.container.segment import Piece, Segment

__all__ = ["Container", "Piece", "ReadPlan", "Segment"]
