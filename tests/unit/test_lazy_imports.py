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
        "import compose_env.protocol\n"
        "print('docker' in sys.modules, 'requests' in sys.modules)\n"  # check and in never import them
        "from compose_env import lazy_imports\n"
        "lazy_imports.defer()\n"
        "import docker, requests\n"
        "import compose_env.run.put, compose_env.run.task\n"
        "print('docker.api' in sys.modules, 'urllib3' in sys.modules, type(docker).__name__)\n"
        "lazy_imports.load()\n"
        "print('docker.api' in sys.modules, type(docker).__name__, docker.APIClient.__name__, "
        "issubclass(docker.errors.APIError, requests.HTTPError))\n"
    )

    assert printed.splitlines() == ["False False", "False False DeferredModule", "True module APIClient True"]


def test_the_first_use_of_either_loads_both_requests_first_each_module_once() -> None:
    printed = run_fresh(
        "import sys\n"
        "from compose_env import lazy_imports\n"
        "lazy_imports.defer()\n"
        "import docker, requests\n"
        "print(docker.errors.NotFound.__name__, type(docker).__name__, type(requests).__name__)\n"
        # one requests.adapters: the one docker-py's transport uses is the one requests registered
        "import docker.transport.unixconn as unixconn\n"
        "print(unixconn.requests.adapters is sys.modules['requests.adapters'] is requests.adapters)\n"
        "lazy_imports.defer()\n"
        "import docker as again\n"
        "print(again is docker)\n"
    )

    assert printed.splitlines() == ["NotFound module module", "True", "True"]


def test_an_import_that_fails_is_deferred_again_and_tried_again() -> None:
    printed = run_fresh(
        "import sys, types, importlib.util\n"
        "from compose_env import lazy_imports\n"
        "lazy_imports.defer()\n"
        "import requests\n"
        "loader = requests.__spec__.loader\n"
        "real = loader.exec_module\n"
        "def failing(module):\n"
        "    raise KeyboardInterrupt('interrupted while loading')\n"
        "loader.exec_module = failing\n"
        "try:\n"
        "    lazy_imports.load()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', type(sys.modules['requests']).__name__)\n"
        "loader.exec_module = real\n"
        "print(requests.Session.__name__, type(requests).__name__)\n"
    )

    assert printed.splitlines() == ["interrupted DeferredModule", "Session module"]
