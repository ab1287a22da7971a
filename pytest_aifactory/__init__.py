"""pytest-aifactory: AI Factory benchmarks as pytest suites.

The names in `__all__` are the public API: what benchmark modules and scripts
(`benchmarks/`) import, always from this package, never from its modules. Importing the package
stays cheap, because the `aifactory` command, pytest's plugin loading and every job process
import it first: each name is imported from its module on first use (a module `__getattr__`,
PEP 562), and the imports under `TYPE_CHECKING` give type checkers the same names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # benchmark tests: a load case, what it measured, its verdict
    "CaseResult": "pytest_aifactory.results",
    "LoadCase": "pytest_aifactory.cases",
    "assert_slos": "pytest_aifactory.driver",
    # one load process run directly, as benchmark scripts do
    "DatasetSpec": "pytest_aifactory.loadgen.spec",
    "LoadSpec": "pytest_aifactory.loadgen.spec",
    "client_stats_path": "pytest_aifactory.loadgen.selfcheck",
    "read_client_stats": "pytest_aifactory.loadgen.selfcheck",
    "read_records": "pytest_aifactory.loadgen.records",
    "run_load": "pytest_aifactory.loadgen.runner",
    "TokenServer": "pytest_aifactory.testing.token_server",
    "load_spec": "pytest_aifactory.testing.load_specs",
    "sharegpt_sample_dataset": "pytest_aifactory.testing.sharegpt_sample",
    "write_sharegpt_sample": "pytest_aifactory.testing.sharegpt_sample",
    # a client kind of one's own (docs/adding-a-kind.md)
    "ClientKind": "pytest_aifactory.loadgen.kind",
    "KindOptions": "pytest_aifactory.loadgen.kind",
    "LoadDriver": "pytest_aifactory.loadgen.runner",
    "Headline": "pytest_aifactory.metrics.catalog",
    "metric": "pytest_aifactory.metrics.catalog",
    # statistics and objectives
    "SloObjective": "pytest_aifactory.metrics.catalog",
    "evaluate": "pytest_aifactory.metrics.slo",
    "client_health": "pytest_aifactory.metrics.stats",
    "describe": "pytest_aifactory.metrics.stats",
    "distribution": "pytest_aifactory.metrics.stats",
    "json_safe": "pytest_aifactory.metrics.stats",
    "measured": "pytest_aifactory.metrics.stats",
    "succeeded": "pytest_aifactory.metrics.stats",
    "summarize_llm": "pytest_aifactory.metrics.stats",
    "normalize": "pytest_aifactory.monitor.samples",
    # reports
    "build_report": "pytest_aifactory.report.build",
    "build_index": "pytest_aifactory.report.index_html",
    "write_manifest": "pytest_aifactory.report.manifest",
    # the regression gate's rule, one metric at a time
    "judge_change": "pytest_aifactory.report.compare",
    "regressed": "pytest_aifactory.report.compare",
    "change_interval": "pytest_aifactory.report.noise",
    "vega_bundle": "pytest_aifactory.report.html_report",
    # servers and models installed on this machine
    "find_llama_server": "pytest_aifactory.services.kinds.llamacpp",
    "hf_model_dir": "pytest_aifactory.services.models",
    "resolve_gguf": "pytest_aifactory.services.models",
    "installed_python": "pytest_aifactory.services.kinds.vllm",
}
"""Public name -> the module that defines it."""

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # `X as X`: re-exported, for type checkers
    from pytest_aifactory.cases import LoadCase as LoadCase
    from pytest_aifactory.driver import assert_slos as assert_slos
    from pytest_aifactory.loadgen.kind import ClientKind as ClientKind
    from pytest_aifactory.loadgen.kind import KindOptions as KindOptions
    from pytest_aifactory.loadgen.records import read_records as read_records
    from pytest_aifactory.loadgen.runner import LoadDriver as LoadDriver
    from pytest_aifactory.loadgen.runner import run_load as run_load
    from pytest_aifactory.loadgen.selfcheck import client_stats_path as client_stats_path
    from pytest_aifactory.loadgen.selfcheck import read_client_stats as read_client_stats
    from pytest_aifactory.loadgen.spec import DatasetSpec as DatasetSpec
    from pytest_aifactory.loadgen.spec import LoadSpec as LoadSpec
    from pytest_aifactory.metrics.catalog import Headline as Headline
    from pytest_aifactory.metrics.catalog import SloObjective as SloObjective
    from pytest_aifactory.metrics.catalog import metric as metric
    from pytest_aifactory.metrics.slo import evaluate as evaluate
    from pytest_aifactory.metrics.stats import client_health as client_health
    from pytest_aifactory.metrics.stats import describe as describe
    from pytest_aifactory.metrics.stats import distribution as distribution
    from pytest_aifactory.metrics.stats import json_safe as json_safe
    from pytest_aifactory.metrics.stats import measured as measured
    from pytest_aifactory.metrics.stats import succeeded as succeeded
    from pytest_aifactory.metrics.stats import summarize_llm as summarize_llm
    from pytest_aifactory.monitor.samples import normalize as normalize
    from pytest_aifactory.report.build import build_report as build_report
    from pytest_aifactory.report.compare import judge_change as judge_change
    from pytest_aifactory.report.compare import regressed as regressed
    from pytest_aifactory.report.html_report import vega_bundle as vega_bundle
    from pytest_aifactory.report.index_html import build_index as build_index
    from pytest_aifactory.report.manifest import write_manifest as write_manifest
    from pytest_aifactory.report.noise import change_interval as change_interval
    from pytest_aifactory.results import CaseResult as CaseResult
    from pytest_aifactory.services.kinds.llamacpp import find_llama_server as find_llama_server
    from pytest_aifactory.services.kinds.vllm import installed_python as installed_python
    from pytest_aifactory.services.models import hf_model_dir as hf_model_dir
    from pytest_aifactory.services.models import resolve_gguf as resolve_gguf
    from pytest_aifactory.testing.load_specs import load_spec as load_spec
    from pytest_aifactory.testing.sharegpt_sample import (
        sharegpt_sample_dataset as sharegpt_sample_dataset,
    )
    from pytest_aifactory.testing.sharegpt_sample import (
        write_sharegpt_sample as write_sharegpt_sample,
    )
    from pytest_aifactory.testing.token_server import TokenServer as TokenServer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
