"""The other account the security tests act as really is another account."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_aifactory.testing.other_user import OtherUser

pytestmark = pytest.mark.requires("other-user")


def test_other_user_cannot_read_a_private_file(other_user: OtherUser, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    attempt = other_user.python(f"print(open({str(secret)!r}).read())")
    assert attempt.returncode != 0
    assert "Permission denied" in attempt.stderr
    assert other_user.uid != os.geteuid()
