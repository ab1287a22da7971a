"""Secrets become `***` in text, data, collected logs and saved parts; everything else stays."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pytest_aifactory.cluster.rundir import RunDir
from pytest_aifactory.recipe import load_recipe
from pytest_aifactory.redact import (
    MASK,
    Redactor,
    looks_secret,
    run_redactor,
    secrets_from_args,
    secrets_from_env,
    worth_hiding,
)
from pytest_aifactory.report.run_store import save_part
from tests.helpers import write_recipe

# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "OPENAI_API_KEY",
        "api_key",
        "apiKey",
        "APIKey",
        "--api-key",
        "--hf-token",
        "--token",
        "--password",
        "--secret",
        "AWS_SECRET_ACCESS_KEY",
        "DB_PASSWORD",
        "db_passwd",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "Password",
        "hftoken",
        "PGPASSWORD",
        "MYSQL_PWD",
        "DB_PASS",
        "SLURM_JWT",
        "--db-pass",
    ],
)
def test_secret_names(name: str) -> None:
    assert looks_secret(name)


@pytest.mark.parametrize(
    "name",
    [
        "max_tokens",
        "input_tokens",
        "tokens_estimated",
        "tokenizer",
        "eos_token_id",
        "num_key_value_heads",
        "monkey",
        "PWD",
        "KEYTIMEOUT",
        "keyboard",
        "--port",
        "SSH_AUTH_SOCK",
        "OLDPWD",
        "bypass",
        "num_passes",
        "pass",
        "",
    ],
)
def test_names_that_are_no_secret(name: str) -> None:
    assert not looks_secret(name)


# -- known values -----------------------------------------------------------------------------


def test_known_values_are_hidden_anywhere() -> None:
    redactor = Redactor(["hf_abcdef123456"])
    text = "loaded model with hf_abcdef123456, url https://x/?t=hf_abcdef123456#a"
    assert redactor.text(text) == "loaded model with ***, url https://x/?t=***#a"


def test_known_value_added_later_is_hidden() -> None:
    redactor = Redactor()
    assert redactor.text("seed s3cr3t-value") == "seed s3cr3t-value"
    redactor.add("s3cr3t-value")
    assert redactor.text("seed s3cr3t-value") == "seed ***"


def test_longer_secret_containing_a_shorter_one_is_hidden_whole() -> None:
    redactor = Redactor(["abcd", "abcdefgh"])
    assert redactor.text("x abcdefgh y abcd") == "x *** y ***"


@pytest.mark.parametrize("value", ["", "abc", "  ab ", "true", "None", "8000", "3.14", MASK, None])
def test_short_or_harmless_known_values_are_ignored(value: str | None) -> None:
    redactor = Redactor()
    redactor.add(value)
    assert redactor.secrets == frozenset()
    assert redactor.text("port 8000 true abc None") == "port 8000 true abc None"


@given(
    secret=st.text(alphabet="abcdefXYZ0123456789_-", min_size=4, max_size=12),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
)
def test_a_known_value_never_survives(secret: str, before: str, after: str) -> None:
    assume(worth_hiding(secret))
    redactor = Redactor([secret])
    assert secret not in redactor.text(before + secret + after)


# -- patterns ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server --api-key sk-123 --port 80", "server --api-key *** --port 80"),
        ("server --api-key=sk-123 --port 80", "server --api-key=*** --port 80"),
        ("vllm serve m --token hf_xyz", "vllm serve m --token ***"),
        ("--hf-token=hf_xyz", "--hf-token=***"),
        ("--password 'two words'", "--password '***'"),
        ("--secret s0meth1ng", "--secret ***"),
        ("--verbose --api-key sk-1", "--verbose --api-key ***"),
        ("Authorization: Bearer eyJhbGc.xyz", "Authorization: Bearer ***"),
        ("authorization: basic dXNlcjpwYXNz==", "authorization: basic ***"),
        ("{'Authorization': 'Bearer abc'}", "{'Authorization': 'Bearer ***'}"),
        ("curl -H 'Authorization: tok123'", "curl -H 'Authorization: ***'"),
        ("sending bearer abc.def-ghi", "sending bearer ***"),
        ("HF_TOKEN=hf_abc other=1", "HF_TOKEN=*** other=1"),
        ("env: HF_TOKEN=hf_abc", "env: HF_TOKEN=***"),
        ("api_key = sk-1", "api_key = ***"),
        ("password: hunter2", "password: ***"),
        ('{"api_key": "sk-1", "max_tokens": 64}', '{"api_key": "***", "max_tokens": 64}'),
        ("{'password': 'a b c'}", "{'password': '***'}"),
        ('DB_PASSWORD="x=y"', 'DB_PASSWORD="***"'),
        ("GET /v1?api_key=sk-1&n=2", "GET /v1?api_key=***&n=2"),
        ("postgres://bench:hunter2@db:5432/x", "postgres://bench:***@db:5432/x"),
        ("s3 https://AKIA:wJalr%2Fx@host/b", "s3 https://AKIA:***@host/b"),
    ],
)
def test_patterns_hide_unknown_secrets(text: str, expected: str) -> None:
    assert Redactor().text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "max_tokens=64 input_tokens: 128",
        "print_info: EOS token        = 2 '<|endoftext|>'",
        "llama_model_loader: - kv   0: tokenizer.ggml.model str = gpt2",
        "num_key_value_heads=8 key_len=128",
        "--api-key --port 80",
        "--no-api-key --host 127.0.0.1",
        "api_key=true token: 5 password: None",
        "http://127.0.0.1:8000/v1/completions",
        "INFO:     Uvicorn running on http://0.0.0.0:8000 (Press CTRL+C to quit)",
        "ClientConnectorError: Cannot connect to host 127.0.0.1:41234",
        'credentials: {"user": 1}',
        "a == b; x=1, y: 2",
        "",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert Redactor(["unrelated-secret"]).text(text) == text


def test_lines() -> None:
    assert Redactor(["k3y-value"]).lines(["a k3y-value", "HF_TOKEN=x1", "plain"]) == [
        "a ***",
        "HF_TOKEN=***",
        "plain",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "a" * 200_000 + "=",
        "a." * 100_000,
        "--x " * 50_000,
        "--token=" * 25_000,
        "key=" * 50_000,
        "api_key=" * 25_000,
        "x:" * 100_000,
        "authorization:" * 15_000,
        "http://" + "u" * 200_000,
        "'" * 200_000,
        "Bearer " * 30_000,
    ],
)
def test_large_adversarial_text_takes_linear_time(text: str) -> None:
    redactor = Redactor(["known-secret"])
    start = time.perf_counter()
    redactor.text(text)
    assert time.perf_counter() - start < 2.0


# -- data -------------------------------------------------------------------------------------


def test_data_masks_secret_keys_and_redacts_strings_recursively() -> None:
    document = {
        "services": {
            "llm": {
                "env": {"HF_TOKEN": "hf_abc", "OMP_NUM_THREADS": "4", "API_KEY": ""},
                "args": ["--api-key", "sk-1", "--port", "8000", "--token=t0k"],
                "command": "server --password hunter2",
                "credentials": {"user": "me", "pairs": [["a", "b"]], "n": 3},
            }
        },
        "tests": [{"notes": ["died: Authorization: Bearer abc"], "max_tokens": 64}],
        "counts": (1, 2.5, None, True),
        "mine": "known-value-1",
    }
    original = json.loads(json.dumps(document))
    redacted = Redactor(["known-value-1"]).data(document)
    assert redacted == {
        "services": {
            "llm": {
                # an env's values are masked wholesale: credentials hide under any name
                "env": {"HF_TOKEN": "***", "OMP_NUM_THREADS": "***", "API_KEY": ""},
                "args": ["--api-key", "***", "--port", "8000", "--token=***"],
                "command": "server --password ***",
                "credentials": {"user": "***", "pairs": [["***", "***"]], "n": 3},
            }
        },
        "tests": [{"notes": ["died: Authorization: Bearer ***"], "max_tokens": 64}],
        "counts": [1, 2.5, None, True],
        "mine": "***",
    }
    assert json.loads(json.dumps(document)) == original  # the input is left as it was


def test_data_leaves_a_summary_without_secrets_unchanged() -> None:
    summary = {
        "counts": {"sent": 10, "completed": 9, "failed": 1, "good": 9},
        "per_request": {"ttft_ms": {"p50": 12.0, "p99": 30.5}},
        "per_level": {"output_throughput": 88.1, "error_rate": 0.1},
        "errors": {"ConnectionError": 1},
        "tokens_estimated": False,
        "recipe": {"clients": {"c": {"dataset": {"input_tokens": 8, "output_tokens": 4}}}},
    }
    assert Redactor(["some-secret"]).data(summary) == summary


# -- where secrets come from ------------------------------------------------------------------


def test_secrets_from_env() -> None:
    env = {
        "HF_TOKEN": "hf_abcdef",
        "DB_PASSWORD": "pw-12345",
        "SHORT_KEY": "abc",
        "SOME_KEY": "true",
        "PWD": "/home/user",
        "PATH": "/usr/bin",
        "MAX_TOKENS": "hf_not_secret",
    }
    assert sorted(secrets_from_env(env)) == ["hf_abcdef", "pw-12345"]


def test_secrets_from_args() -> None:
    args = ["--api-key", "sk-1234", "--port", "80", "--token=t0k3n", "--password", "--x", "-v"]
    assert secrets_from_args(args) == ["sk-1234", "t0k3n"]


def test_run_redactor_collects_the_recipe_and_driver_secrets(tmp_path: Path) -> None:
    document = {
        "name": "secrets",
        "services": {
            "llm": {
                "kind": "command",
                "command": "server --hf-token 'hf_from_command' --port {port}",
                "args": ["--api-key", "sk-from-args", "--threads", "4000"],
                "env": {"OPENAI_API_KEY": "sk-from-env", "OMP_NUM_THREADS": "8000"},
            }
        },
        "clients": {"chat": {"kind": "openai", "service": "llm"}},
    }
    recipe = load_recipe(write_recipe(tmp_path / "recipe.yaml", document))
    redactor = run_redactor(recipe, env={"HF_TOKEN": "hf_driver", "HOME": "/root"})
    assert redactor.secrets == {"hf_from_command", "sk-from-args", "sk-from-env", "hf_driver"}
    line = "hf_driver sk-from-env sk-from-args hf_from_command /root 8000 4000"
    assert redactor.text(line) == "*** *** *** *** /root 8000 4000"


# -- applied to what a run writes -------------------------------------------------------------


def test_collect_logs_writes_redacted_copies(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "run-1")
    job = run.jobs_dir / "service-llm"
    job.mkdir()
    (job / "123_0_log.err").write_bytes(
        b"starting server --api-key sk-unknown-1 --port 8000\r\n"
        b"loaded with token known-secret-9\n"
        b"binary \xff\xfe junk\n"
        b"ready max_tokens=64"
    )
    (job / "123_0_log.out").write_text("HF_TOKEN=hf_x1 ok\n")
    run.redactor = Redactor(["known-secret-9"])

    copied = run.collect_logs()

    assert sorted(p.name for p in copied) == ["123_0_log.err", "123_0_log.out"]
    err = run.root / "logs" / "service-llm" / "123_0_log.err"
    assert err.read_bytes() == (
        b"starting server --api-key *** --port 8000\r\n"
        b"loaded with token ***\n"
        b"binary \xef\xbf\xbd\xef\xbf\xbd junk\n"
        b"ready max_tokens=64"
    )
    assert (run.root / "logs" / "service-llm" / "123_0_log.out").read_text() == "HF_TOKEN=*** ok\n"
    assert stat.S_IMODE(err.stat().st_mode) == 0o600
    assert b"sk-unknown-1" in (job / "123_0_log.err").read_bytes()  # the job's own log is kept


def test_collect_logs_without_a_redactor_uses_patterns(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "run-2")
    (run.jobs_dir / "client-a").mkdir()
    (run.jobs_dir / "client-a" / "1_0_log.out").write_text("--token abc12345 and known-secret-9\n")
    (copy,) = run.collect_logs()
    assert copy.read_text() == "--token *** and known-secret-9\n"


def test_saved_parts_are_redacted(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "run-3")
    run.redactor = Redactor(["known-secret-9"])
    tests: list[Any] = [  # a part's entries, only the fields redaction is about
        {
            "test_id": "t1",
            "passed": False,
            "notes": ["service died\nstarted with --api-key sk-9 and known-secret-9"],
            "counts": {"sent": 3},
        }
    ]
    save_part(run, "gw0", tests, pd.DataFrame())
    written = json.loads((run.root / "parts" / "gw0.json").read_text())
    assert written[0]["notes"] == ["service died\nstarted with --api-key *** and ***"]
    assert written[0]["counts"] == {"sent": 3}


def test_a_bare_key_is_a_lookup_key_not_a_secret() -> None:
    assert not looks_secret("key")
    assert Redactor().data({"key": "ttft_ms.p99", "api_key": "sk-abcdef"}) == {
        "key": "ttft_ms.p99",
        "api_key": "***",
    }


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("PGPASSWORD=pg-pass-1 pgbench -c 4", "pg-pass-1"),
        ("export MYSQL_PWD=my-pwd-22", "my-pwd-22"),
        ("DB_PASS: 'db-pass-333'", "db-pass-333"),
        ("SLURM_JWT=eyJhbGciOi.eyJzdWIi.sig", "eyJhbGciOi.eyJzdWIi.sig"),
        ("loader --db-pass hunter2222 --port 5432", "hunter2222"),
    ],
)
def test_database_and_scheduler_credentials_are_masked(line: str, secret: str) -> None:
    assert secret not in Redactor().text(line)
    assert MASK in Redactor().text(line)


def test_recipe_env_values_are_masked_wholesale_in_what_a_run_saves(tmp_path: Path) -> None:
    """A credential under a name nobody foresaw (`APP_CONN`) is still in a service's `env`:
    recipe.json keeps the names, never the values."""
    path = write_recipe(
        tmp_path / "recipe.yaml",
        {
            "name": "env-masking",
            "services": {
                "app": {
                    "kind": "command",
                    "command": "python3 -m http.server {port}",
                    "env": {"APP_CONN": "postgres://u@db/x?sslkey=abc", "MODE": "fast"},
                }
            },
        },
    )
    recipe = load_recipe(path)
    saved = run_redactor(recipe, env={}).data(recipe.model_dump(mode="json"))
    assert saved["services"]["app"]["env"] == {"APP_CONN": MASK, "MODE": MASK}
    assert "sslkey=abc" not in json.dumps(saved)
