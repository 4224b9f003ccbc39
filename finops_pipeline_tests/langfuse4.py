"""The Langfuse SDK 4.x's models of the legacy public API, beside the 5.x SDK the project depends on.

5.x dropped the models of GET /api/public/observations, /api/public/traces and the v1 /api/public/metrics;
4.x has them (`legacy.observations_v1.ObservationsViews`, `trace.Traces`, `legacy.metrics_v1.MetricsResponse`).
`make test` installs 4.x into .venv/langfuse4 (pinned by hash in langfuse4.txt); its `langfuse.api` package
uses only relative imports, so it is loaded here under another name, `langfuse4_api`, without ever being
on the path where it would shadow the 5.x `langfuse`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / ".venv" / "langfuse4" / "langfuse" / "api"
NAME = "langfuse4_api"


def load():
    """The 4.x `langfuse.api` package, as `langfuse4_api`."""
    if NAME in sys.modules:
        return sys.modules[NAME]
    if not (ROOT / "__init__.py").exists():
        raise RuntimeError(f"The Langfuse 4.x SDK's models are not installed at {ROOT}: run `make test`, which "
                           "installs them from finops_pipeline_tests/langfuse4.txt.")
    spec = importlib.util.spec_from_file_location(NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
    return module
