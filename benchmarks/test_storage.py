"""Storage benchmark: object storage (S3 API), file systems (fio) and relational databases
(PostgreSQL), one test per client and load level of the recipe.

    pytest benchmarks/test_storage.py --recipe recipes/s3.yaml
    pytest benchmarks/test_storage.py --recipe recipes/fio.yaml
    pytest benchmarks/test_storage.py --recipe recipes/postgres.yaml

The test is the package's (`pytest_aifactory.benchmarks.test_storage`), imported here so the
repository's commands and test ids stay what they were.
"""

from __future__ import annotations

from pytest_aifactory.benchmarks.test_storage import test_storage as test_storage
