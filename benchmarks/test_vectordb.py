"""Vector search benchmark: Chroma, Milvus or FAISS, one test per client and load level.

    pytest benchmarks/test_vectordb.py --recipe recipes/vectordb.yaml

The test is the package's (`pytest_aifactory.benchmarks.test_vectordb`), imported here so the
repository's commands and test ids stay what they were.
"""

from __future__ import annotations

from pytest_aifactory.benchmarks.test_vectordb import test_vectordb as test_vectordb
