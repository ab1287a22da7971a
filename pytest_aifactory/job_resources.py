"""What the job of a service or a client asks the scheduler for, from the recipe's keys.

Services and clients share their resource keys (`recipe.JobResourceKeys`: partition, CPUs,
memory, GPUs or another gres, constraint, exclusive); the executor turns `JobResources` into
its own terms (sbatch options on Slurm; the local executor honours only the time limit).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from pytest_aifactory.cluster.base import JobResources
from pytest_aifactory.job_time import client_job_minutes

if TYPE_CHECKING:
    from pytest_aifactory.cases import LoadCase
    from pytest_aifactory.recipe import Client, JobResourceKeys, Service


def requested(
    keys: JobResourceKeys, nodes: int, tasks_per_node: int = 1, time_limit_min: int | None = None
) -> JobResources:
    return JobResources(
        nodes=nodes,
        tasks_per_node=tasks_per_node,
        gpus_per_node=keys.gpus_per_node,
        gres=keys.gres,
        cpus_per_task=keys.cpus_per_task,
        memory=keys.memory,
        constraint=keys.constraint,
        exclusive=keys.exclusive,
        partition=keys.partition,
        time_limit_min=time_limit_min,
    )


def service_resources(service: Service) -> JobResources:
    """One task per node. No time limit of its own here: a service lasts the session, which
    the executor bounds (`slurm.for_cluster`)."""
    return requested(service, service.nodes)


def client_resources(client: Client, cases: Iterable[LoadCase]) -> JobResources:
    """One task per load process, for as long as running `cases` may take."""
    return requested(
        client,
        client.nodes,
        client.processes_per_node,
        time_limit_min=client_job_minutes(client, cases),
    )
