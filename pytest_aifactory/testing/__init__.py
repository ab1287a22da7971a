"""Stand-ins for the servers a benchmark talks to, with behaviour that is known in advance.

They ship inside the package, as pytest ships `_pytest.pytester`, because two kinds of users
need the same doubles: the project's tests, and the scripts under `benchmarks/` that measure
the load generator itself (its timing fidelity, its overhead, its ceiling), which a user runs
on their own machine to check a setup before trusting its numbers. A module under `tests/`
could not be imported from an installed package, and one under `benchmarks/` is no package at
all; here both import the same code from the one place.

- `token_server`: an OpenAI-compatible streaming server in a child process whose events leave
  at configured instants and which reports when each one left (the ground truth for timing).
- `streaming_server`: an OpenAI-compatible streaming server in a thread, with chosen faults.
- `dying_server`: the streaming server as a service command that exits after some requests.
- `dcgm_exporter`: NVIDIA's dcgm-exporter format, for machines without a GPU.

Nothing here is imported by the package's own modules: these are test doubles, not features.
"""
