"""docker-py and requests deferred until dockerd starts: the put's and the task's flows import without running them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RESOURCE = Path(__file__).resolve().parents[2] / "resource"


def run_fresh(code: str) -> str:
    """`code` in a new interpreter (this one has docker-py imported already); its stdout."""
    result = subprocess.run([sys.executable, "-c", code], cwd=RESOURCE, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_flows_import_without_loading_docker_py_until_load_runs_it() -> None:
    printed = run_fresh(
        "import sys\n"
        "from compose_env import lazy_imports\n"
        "lazy_imports.defer()\n"
        "import docker, requests\n"
        "import compose_env.run.put, compose_env.run.task\n"
        "print('docker.api' in sys.modules, 'urllib3' in sys.modules, type(docker).__name__)\n"
        "lazy_imports.load()\n"
        "import docker.errors\n"
        "print('docker.api' in sys.modules, type(docker).__name__, docker.APIClient.__name__, issubclass(docker.errors.APIError, requests.HTTPError))\n"
    )

    assert printed.splitlines() == ["False False DeferredModule", "True module APIClient True"]


def test_first_use_loads_a_deferred_module_by_itself() -> None:
    printed = run_fresh(
        "from compose_env import lazy_imports\n"
        "lazy_imports.defer()\n"
        "import docker\n"
        "print(docker.errors.NotFound.__name__, type(docker).__name__)\n"
        "lazy_imports.load()\n"
        "lazy_imports.defer()\n"
        "import docker as again\n"
        "print(again is docker)\n"
    )

    assert printed.splitlines() == ["NotFound module", "True"]
