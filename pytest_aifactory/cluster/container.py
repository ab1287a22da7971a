"""Running a service's command inside an Apptainer/Singularity image.

HPC sites ship inference engines as SIF images; the service's own command line stays the same
and is only prefixed. The result is an argument list for `subprocess`, never a shell string, so
no value (an image path with spaces, a JSON argument) is ever re-split or interpreted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Container


def wrap_command(argv: list[str], container: Container, gpus: bool) -> list[str]:
    """`apptainer exec [--nv] [--bind SRC:DST ...] IMAGE ARGV...`.

    `--nv` (the host's NVIDIA driver inside the image) when the service asks for GPUs or the
    recipe sets `container.gpu`.
    """
    if not argv:
        raise ValueError("no command to run in the container")
    wrapped = [container.runtime, "exec"]
    if gpus or container.gpu:
        wrapped.append("--nv")
    for bind in container.binds:
        wrapped += ["--bind", bind]
    return [*wrapped, container.image, *argv]
