"""Recipe values never go through a shell: a model name or argument holding `;`, `$(...)` or
backticks reaches the server as the literal text, locally and in Slurm jobs alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_benchmark, write_recipe

pytestmark = pytest.mark.slow

SERVER = """\
import http.server, json, os, sys
with open(os.environ["ARGV_FILE"], "w") as fh:
    json.dump(sys.argv[3:], fh)
server = http.server.ThreadingHTTPServer((sys.argv[2], int(sys.argv[1])),
                                         http.server.SimpleHTTPRequestHandler)
server.serve_forever()
"""


def hostile(tmp_path: Path) -> list[str]:
    marker = tmp_path / "pwned"
    return [
        f"x; touch {marker}-semicolon",
        f"$(touch {marker}-dollar)",
        f"`touch {marker}-backtick`",
        f"a && touch {marker}-and | cat > {marker}-pipe",
        "quote ' and \" and \\ and $HOME",
    ]


@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_arguments_reach_the_server_literally(
    tmp_path: Path, executor: str, request: pytest.FixtureRequest
) -> None:
    if executor == "slurm":
        request.getfixturevalue("slurm_cluster")
    script = tmp_path / "serve.py"
    script.write_text(SERVER)
    argv_file = tmp_path / "argv.json"
    args = hostile(tmp_path)
    document = {
        "name": "quoting",
        "services": {
            "svc": {
                "kind": "command",
                "command": f"python3 {script} {{port}} {{host}}",
                "args": args,
                "env": {"ARGV_FILE": str(argv_file), "NOTE": "$(touch /nonexistent)"},
                "health": {"http": "/"},
                "health_timeout_s": 60,
            }
        },
        # the load fails (not an LLM server): only the server's command line matters here
        "clients": {"c": {"kind": "openai", "service": "svc", "load": {"requests": 1}}},
        "monitor": {"prometheus": False},
    }
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
    session = run_benchmark(tmp_path, recipe, "--executor", executor, timeout=300)
    assert argv_file.exists(), session.output
    assert json.loads(argv_file.read_text()) == args
    assert not list(tmp_path.glob("pwned*")), "a recipe value was run by a shell"
    assert "Traceback" not in session.output


def test_a_hostile_model_name_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned-model"
    document = {
        "name": "quoting-model",
        "services": {"llm": {"kind": "llamacpp", "model": f"smollm2; touch {marker}"}},
        "clients": {"c": {"kind": "openai", "service": "llm", "load": {"requests": 1}}},
        "monitor": {"prometheus": False},
    }
    recipe = write_recipe(tmp_path / "recipe.yaml", document)
    session = run_benchmark(tmp_path, recipe, timeout=120)
    assert session.returncode == 1, session.output
    assert "service 'llm'" in session.stdout
    assert not marker.exists()
    assert "Traceback" not in session.output
