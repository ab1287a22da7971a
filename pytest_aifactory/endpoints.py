"""Where a running service answers: made by the service manager, read by the driver, the run's
monitoring and the job registry.

Kept apart from the service manager so that its readers need not import the machinery that
starts services.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_aifactory.cluster.base import JobHandle
    from pytest_aifactory.cluster.run_control import KeptService
    from pytest_aifactory.cluster.run_records import PlanFingerprint
    from pytest_aifactory.services.base import HealthCheck


@dataclass
class Endpoint:
    """Where a running service answers."""

    name: str
    kind: str
    host: str
    port: int
    url: str
    served_model: str | None
    metrics_url: str | None
    node: str = ""
    job: JobHandle | None = None
    started_s: float = 0.0
    nodes: list[str] = field(default_factory=list)
    health: HealthCheck | None = None
    reused_from: KeptService | None = None
    """Set when another run kept this service and this run only uses it."""
    submitted_at: float | None = None
    """Wall-clock time just before the service's job was submitted."""
    job_started_at: float | None = None
    """When the job began running the service (written by the job, on its node's clock)."""
    launched_at: float | None = None
    """When the job spawned the server process (on a multi-node service: its last rank's)."""
    healthy_at: float | None = None
    """When the health check first passed."""
    client_env: dict[str, str] = field(default_factory=dict)
    metrics_basic_auth: bool = False
    """Its metrics come from an exporter locked with the run's monitoring password (PostgreSQL's),
    not from the server, which would take the run's API key."""
    """What clients of this service must be told (credentials, bucket, database name)."""
    plan: PlanFingerprint | None = None
    """What the run started (`services/fingerprint.py`), kept with the service for reuse."""
    replica: int = 0
    """Which of the service's servers this is (0: the first, or its only one)."""
    replica_urls: list[str] = field(default_factory=list)
    """Every server's base URL, this one first, when the service has several; empty: one."""
    more_replicas: list[Endpoint] = field(default_factory=list)
    """The service's other servers (replica 1 on), each with its own job, log and metrics;
    the service's endpoint is its first server's."""

    @property
    def urls(self) -> list[str]:
        """The base URL of each of the service's servers, the one clients spread over."""
        return self.replica_urls or [self.url]

    @property
    def replicated(self) -> bool:
        """Whether this is one of several servers of its service."""
        return self.replica > 0 or len(self.replica_urls) > 1

    def all_replicas(self) -> list[Endpoint]:
        return [self, *self.more_replicas]

    def server_alive(self) -> bool:
        """Whether this one server still runs."""
        return self.job is None or not self.job.finished()

    def alive(self) -> bool:
        """Whether every server of the service still runs: requests sent to a dead replica
        fail, so its death is the service's."""
        return all(e.server_alive() for e in self.all_replicas())

    def timings(self) -> dict[str, float | None]:
        """Where the time to a usable service went: the four instants (epoch seconds) and the
        spans between them; a span is None when either end does not apply (an external or a
        reused service was never submitted or launched by this run)."""

        def span(start: float | None, end: float | None) -> float | None:
            return None if start is None or end is None else end - start

        return {
            "submitted_at": self.submitted_at,
            "job_started_at": self.job_started_at,
            "launched_at": self.launched_at,
            "healthy_at": self.healthy_at,
            "queue_s": span(self.submitted_at, self.job_started_at),
            "startup_s": span(self.job_started_at, self.launched_at),
            "health_wait_s": span(self.launched_at, self.healthy_at),
        }
