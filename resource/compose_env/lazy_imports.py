"""docker-py and requests imported while dockerd starts, not before the put can begin.

Importing them takes 0.2-0.3 s of CPU (most of it requests and urllib3), about as long as the
inner dockerd takes to answer, and nothing before dockerd's start needs them. So a put or a task
defers them (`defer`) before it imports its flow: `import docker` then binds a module whose code
runs on its first use, and `load` runs it at the moment it costs least: right after dockerd is
spawned, while the main thread would only wait. Whatever uses them earlier (a remote
`docker_host`) just runs the import there. check and in import neither.

This is the standard library's `importlib.util.LazyLoader` with one difference: reading the
module's `__spec__`, which every `import` statement does, does not load it (with LazyLoader,
the first `import docker` anywhere would).
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from typing import Any

DEFERRED = ("requests", "docker")


class DeferredModule(types.ModuleType):
    """A module whose code runs on the first access to any attribute but `__spec__`."""

    _lock = threading.RLock()

    def __getattribute__(self, name: str) -> Any:
        spec = types.ModuleType.__getattribute__(self, "__spec__")
        if name == "__spec__":
            return spec
        with DeferredModule._lock:
            if type(self) is DeferredModule:  # the first access: from now on (and during its load) a plain module
                object.__setattr__(self, "__class__", types.ModuleType)
                spec.loader.exec_module(self)
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
    """Run the deferred imports now (a no-op for those that ran)."""
    for name in DEFERRED:
        module = sys.modules.get(name)
        if type(module) is DeferredModule:
            module.__name__  # noqa: B018 - any attribute but __spec__ runs it
