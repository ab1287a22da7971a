"""Spreading one client process's requests over the servers of a service (its replicas).

Each client process balances on its own, knowing only its own requests: that is what a client
library in front of several servers does, and it needs no coordination between processes or
nodes. `round_robin` sends to each server in turn; `least_outstanding` to the server with the
fewest of this process's requests still in flight (ties to the first listed), which sends more
to a server that answers faster. A conversation picks its server at its first turn and keeps it
(session affinity): its later turns find their history in that server's prefix cache.
"""

from __future__ import annotations

from collections.abc import Sequence

from pytest_aifactory.loadgen.spec import LoadSpec
from pytest_aifactory.services.replicas import replica_address

BALANCE_POLICIES: tuple[str, ...] = ("round_robin", "least_outstanding")


def replica_bases(spec: LoadSpec) -> list[str]:
    """The base URL of every server the spec's requests may go to (one without replicas)."""
    return list(spec.replica_urls) or [spec.base_url]


class ReplicaBalancer:
    """Picks the server of each request; `release` when the request has ended. Runs on one
    event loop: picking and releasing never interleave."""

    def __init__(self, bases: Sequence[str], policy: str = "round_robin") -> None:
        if not bases:
            raise ValueError("no servers to send requests to")
        if policy not in BALANCE_POLICIES:
            raise ValueError(
                f"unknown balance '{policy}' (expected one of {', '.join(BALANCE_POLICIES)})"
            )
        self.addresses = [replica_address(base) for base in bases]
        self.policy = policy
        self.in_flight = [0] * len(bases)
        self._turn = 0

    @classmethod
    def of(cls, spec: LoadSpec) -> ReplicaBalancer:
        return cls(replica_bases(spec), str(spec.options.get("balance") or "round_robin"))

    def acquire(self, keep: int | None = None) -> int:
        """The index of the server the next request goes to, counted as in flight; `keep`:
        that server, whatever the policy (a conversation stays where its history is cached)."""
        count = len(self.in_flight)
        if keep is not None:
            index = keep
        elif count == 1:
            index = 0
        elif self.policy == "round_robin":
            index = self._turn
            self._turn = (self._turn + 1) % count
        else:
            index = min(range(count), key=self.in_flight.__getitem__)
        self.in_flight[index] += 1
        return index

    def release(self, index: int) -> None:
        self.in_flight[index] -= 1
