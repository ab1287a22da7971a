"""LLM serving benchmark: one test per client and load level of the recipe.

    pytest benchmarks/test_inference.py --recipe recipes/llamacpp-smollm2.yaml

The test is the package's (`pytest_aifactory.benchmarks.test_inference`), imported here so the
repository's commands and test ids (`benchmarks/test_inference.py::test_serving[...]`) stay
what they were.
"""

from __future__ import annotations

from pytest_aifactory.benchmarks.test_inference import test_serving as test_serving
