"""Where each monitoring program comes from, and which of them ran.

On a cluster's login and compute nodes a user has no root and no package manager, so the
distribution's binaries on the PATH are often missing. Each program (Prometheus, the
pushgateway, the node exporter, the DCGM exporter) may instead come from a binary at a path (a
release archive unpacked in the project's folder) or from an Apptainer image. It is looked up
in this order, the first that names it wins:

1. the recipe, `monitor.components.<name>: {path: ...}` or `{image: ...}`;
2. the environment, `AIFACTORY_<NAME>`: a path, or an image when it ends in `.sif`/`.simg` or
   names one by URI (`docker://...`); empty turns the program off;
3. the PATH, under the names distributions and upstream give it.

Prometheus and the pushgateway are located by the driver, which starts them as jobs; the node
and DCGM exporters by each service and client job, on its own node. Either way the outcome
(ran, from where, or why not) is kept, said at the start and at the end of the session, and
written to the summary: monitoring that silently does less than asked hides why a report lacks
server or node series.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_aifactory.monitor.layout import monitor_dir, write_json_atomic

if TYPE_CHECKING:
    from pytest_aifactory.recipe import MonitorComponent

PROMETHEUS = "prometheus"
PUSHGATEWAY = "pushgateway"
NODE_EXPORTER = "node_exporter"
DCGM_EXPORTER = "dcgm_exporter"


@dataclass(frozen=True)
class ComponentInfo:
    """What is known of one program beforehand."""

    name: str
    title: str
    binaries: tuple[str, ...]
    """Names on the PATH, the distribution's first."""
    command: str
    """The program inside its upstream image (`prom/prometheus` has `/bin/prometheus`)."""

    @property
    def env(self) -> str:
        return f"AIFACTORY_{self.name.upper()}"


COMPONENTS: dict[str, ComponentInfo] = {
    info.name: info
    for info in (
        ComponentInfo(PROMETHEUS, "Prometheus", ("prometheus",), "prometheus"),
        ComponentInfo(
            PUSHGATEWAY, "pushgateway", ("prometheus-pushgateway", "pushgateway"), "pushgateway"
        ),
        ComponentInfo(
            NODE_EXPORTER,
            "node exporter",
            ("prometheus-node-exporter", "node_exporter"),
            "node_exporter",
        ),
        ComponentInfo(DCGM_EXPORTER, "DCGM exporter", ("dcgm-exporter",), "dcgm-exporter"),
    )
}
IMAGE_SUFFIXES = (".sif", ".simg")


@dataclass(frozen=True)
class ComponentSource:
    """Where one program was named (picklable: node-side programs travel to the jobs)."""

    name: str
    origin: str
    """`monitor.components.<name>`, `AIFACTORY_<NAME>` or `PATH`."""
    path: str | None = None
    image: str | None = None
    runtime: str = "apptainer"
    binds: tuple[str, ...] = ()
    command: str | None = None
    off: bool = False
    """The environment turned the program off (an empty `AIFACTORY_<NAME>`)."""

    @property
    def info(self) -> ComponentInfo:
        return COMPONENTS[self.name]


@dataclass(frozen=True)
class Program:
    """A program found where it is to run: the command line's start, and where it came from."""

    prefix: tuple[str, ...]
    source: str
    """For people: `/usr/bin/prometheus (PATH)`, `image /x/prometheus.sif (AIFACTORY_...)`."""
    image: bool = False
    runtime: str = ""
    binds: tuple[str, ...] = ()

    def argv(self, args: Sequence[str], binds: Sequence[str] = (), gpu: bool = False) -> list[str]:
        """The full command line. `binds`: folders the program must see inside an image (its
        configuration, its data); `gpu`: the host's GPU driver inside the image (`--nv`)."""
        if not self.image:
            return [*self.prefix, *args]
        runtime, image, command = self.prefix
        flags = ["--nv"] if gpu else []
        for bind in [*self.binds, *binds]:
            flags += ["--bind", bind]
        return [runtime, "exec", *flags, image, command, *args]


@dataclass(frozen=True)
class Missing:
    """Why a program cannot run here."""

    why: str


def looks_like_image(value: str) -> bool:
    return value.endswith(IMAGE_SUFFIXES) or "://" in value


def choose_source(
    name: str, given: MonitorComponent | None, environ: Mapping[str, str]
) -> ComponentSource:
    """Where `name` comes from: the recipe's `given`, else the environment, else the PATH."""
    info = COMPONENTS[name]
    if given is not None:
        return ComponentSource(
            name,
            f"monitor.components.{name}",
            path=given.path,
            image=given.image,
            runtime=given.runtime,
            binds=tuple(given.binds),
            command=given.command,
        )
    value = environ.get(info.env)
    if value is None:
        return ComponentSource(name, "PATH")
    value = value.strip()
    if not value:
        return ComponentSource(name, info.env, off=True)
    if looks_like_image(value):
        return ComponentSource(name, info.env, image=value)
    return ComponentSource(name, info.env, path=os.path.expanduser(value))


def locate(source: ComponentSource, check_runtime: bool = False) -> Program | Missing:
    """The program of `source` as this host sees it. `check_runtime`: an image also needs
    Apptainer on this host's PATH (checked in jobs, where the recipe's setup lines have run;
    the driver cannot tell what a compute node will have)."""
    info = source.info
    if source.off:
        return Missing(f"turned off: {info.env} is empty")
    if source.image is not None:
        image = source.image
        if "://" not in image and not Path(image).is_file():
            return Missing(f"image {image} ({source.origin}): no such file")
        if check_runtime and shutil.which(source.runtime) is None:
            return Missing(f"image {image} ({source.origin}): {source.runtime} is not on the PATH")
        command = source.command or info.command
        return Program(
            (source.runtime, image, command),
            f"image {image} ({source.origin})",
            image=True,
            runtime=source.runtime,
            binds=source.binds,
        )
    if source.path is not None:
        path = source.path
        if not Path(path).is_file():
            return Missing(f"{path} ({source.origin}): no such file")
        if not os.access(path, os.X_OK):
            return Missing(f"{path} ({source.origin}): not executable")
        return Program((path,), f"{path} ({source.origin})")
    for binary in info.binaries:
        found = shutil.which(binary)
        if found:
            return Program((found,), f"{found} (PATH)")
    return Missing(
        f"not on the PATH (looked for {', '.join(info.binaries)}); name it with "
        f"monitor.components.{info.name} or {info.env}"
    )


# -- what ran -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentStatus:
    """One program's outcome, in the driver (Prometheus, pushgateway) or on one node."""

    name: str
    ran: bool
    source: str | None = None
    why_not: str = ""
    node: str | None = None


def status_dir(run_root: Path, name: str) -> Path:
    return monitor_dir(run_root) / "components" / name


def write_node_status(run_root: Path, status: ComponentStatus) -> None:
    """A job's word on a program of its node (one file per node: no lock, no shared writes)."""
    node = status.node or "node"
    write_json_atomic(status_dir(run_root, status.name) / f"{node}.json", asdict(status))


def read_node_statuses(run_root: Path, name: str) -> list[ComponentStatus]:
    found = []
    for path in sorted(status_dir(run_root, name).glob("*.json")):
        try:
            data = json.loads(path.read_text())
            found.append(ComponentStatus(**data))
        except (OSError, ValueError, TypeError):
            continue
    return found


@dataclass
class ComponentReport:
    """A program's line in the summary: where it ran and, where it did not, why."""

    ran: bool = False
    source: str | None = None
    nodes: list[str] = field(default_factory=list)
    why_not: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def report(statuses: Sequence[ComponentStatus], when_none: str) -> ComponentReport:
    """Statuses of one program (the driver's, or one per node) as one summary entry.
    `when_none`: what to say when nothing reported (no job ran on any node)."""
    if not statuses:
        return ComponentReport(why_not=when_none)
    ran = [s for s in statuses if s.ran]
    nodes_by_why: dict[str, list[str]] = {}
    for status in statuses:
        if not status.ran:
            nodes_by_why.setdefault(status.why_not, []).append(status.node or "")
    why = "; ".join(
        f"{', '.join(sorted(nodes))}: {text}" if all(nodes) else text
        for text, nodes in nodes_by_why.items()
    )
    return ComponentReport(
        ran=bool(ran),
        source=ran[0].source if ran else None,
        nodes=sorted({s.node for s in ran if s.node}),
        why_not=why,
    )


def describe(name: str, entry: ComponentReport) -> str:
    """`node exporter ran on n1, n2 (not on n3: ...)`, for the terminal."""
    title = COMPONENTS[name].title
    if not entry.ran:
        return f"{title} did not run: {entry.why_not}"
    where = f" on {', '.join(entry.nodes)}" if entry.nodes else ""
    text = f"{title} ran{where}: {entry.source}"
    return text + (f" (not on {entry.why_not})" if entry.why_not else "")
