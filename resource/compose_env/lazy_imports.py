"""docker-py and requests imported while dockerd starts, not before the put can begin.

Importing them takes 0.2-0.3 s of CPU (most of it requests and urllib3), about as long as the
inner dockerd takes to answer, and nothing before dockerd's start needs them. So a put or a task
defers them (`defer`) before it imports its flow: `import docker` then binds a module whose code
runs on its first use, and `load` runs it at the moment it costs least: right after dockerd is
spawned, while the main thread would only wait. Whatever uses them earlier (a remote
`docker_host`) just runs the import there. check and in import neither.

This is the standard library's `importlib.util.LazyLoader` with two differences:
- reading a module's `__spec__`, which every `import` statement does, does not load it (with
  LazyLoader, the first `import docker` anywhere would);
- the first use of either loads both, requests first: docker-py's own `import requests.adapters`
  then finds it loaded (a submodule imported through a package that is still deferred would run
  twice). For the same reason the package imports only `docker` and `requests` themselves,
  never a submodule of them (tests/unit/test_import_rules.py).

Load them from one thread, before any other uses them: the put does (nothing else runs then).
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from typing import Any

#: In the order they load: docker-py imports requests.
DEFERRED = ("requests", "docker")

_lock = threading.RLock()


class DeferredModule(types.ModuleType):
    """A module whose code runs on the first access to any attribute but `__spec__`."""

    def __getattribute__(self, name: str) -> Any:
        if name == "__spec__":
            return types.ModuleType.__getattribute__(self, name)
        load()
        return getattr(self, name)


def defer() -> None:
    """Make each of DEFERRED run on first use; one imported already (or not installed) is left as it is."""
    for name in DEFERRED:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        module.__class__ = DeferredModule
        sys.modules[name] = module


def load() -> None:
    """Run the deferred imports now, in DEFERRED's order (a no-op for those that ran).

    A module is a plain one while its code runs (its own code uses it); if that fails (or a
    SIGTERM interrupts it), it is deferred again, so that its next use tries again rather than
    finding it half-made.
    """
    with _lock:
        for name in DEFERRED:
            module = sys.modules.get(name)
            if type(module) is not DeferredModule:
                continue
            spec = module.__spec__
            assert spec is not None and spec.loader is not None, "defer() made it from a spec with a loader"
            object.__setattr__(module, "__class__", types.ModuleType)
            try:
                spec.loader.exec_module(module)
            except BaseException:
                object.__setattr__(module, "__class__", DeferredModule)
                raise
