"""The project's tests, laid out like the package they test.

- `cli/`, `cluster/`, `loadgen/`, `metrics/`, `monitor/`, `recipe/`, `report/`, `services/`:
  one folder per part of `pytest_aifactory`, a test file per module or behaviour; the tests of
  the package's top-level modules (`atomic`, `numbers`, `redact`...) sit here at the top.
- `plugin/`: benchmark sessions as a user runs them, with stand-in servers (what pytest and the
  plugin do with a session, not what a real server does).
- `e2e/`: whole benchmark sessions against real servers (llama-server, vLLM, Triton,
  PostgreSQL, Chroma, Milvus, nanio, fio).
- `slurm/`: what needs a running Slurm cluster (`slurm_cluster`).

Shared pieces: `helpers.py` (running sessions and servers), `factories.py` (recipes),
`components.py` and `markers.py` (what a test needs, and what runs by default), and the
stand-in servers in `pytest_aifactory.testing`. `conftest.py` exposes them as fixtures.
"""
