"""The one cleanup for every ending of a put (success, failure, error, SIGTERM), bounded in time (engine/budget.py)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable

from compose_env.console import Console
from compose_env.engine.budget import BUDGET, TeardownBudget
from compose_env.engine.daemon import InnerDaemon
from compose_env.engine.handle import DOCKER_CONFIG_DIR, TLS_DIR, RunningEngine
from compose_env.run.project import ComposeProject
from compose_env.signals import AbortOnSignal


def teardown(
    project: ComposeProject,
    engine: RunningEngine | None,
    starting: InnerDaemon | None,
    console: Console,
    grace: int,
    aborted: bool,
    abort: AbortOnSignal,
    secrets_dirs: tuple[str, ...] = (DOCKER_CONFIG_DIR, TLS_DIR),
    budget: TeardownBudget = BUDGET,
) -> None:
    """`compose down --volumes --remove-orphans` where the engine says it matters, within its deadline; then the
    engine's stop.

    After SIGTERM the down must fit in Concourse's grace with room for the rest. Then the running
    engine stops: containers still there get `grace` seconds all at once (with none they are
    killed), a kept data root is left as compose down leaves it, the daemons stop, what is left in
    our cgroups is killed, our mounts are undone. A start that never got to run is abandoned: there
    is no project to take down. `aborted`: the put was; `abort` tells of a SIGTERM that comes during
    the teardown itself (it shortens the waits).
    """
    project.kill()
    down_done = False
    if engine is not None and project.started and engine.compose_down_matters(grace, aborted):
        down_done = _compose_down(project, engine, console, grace, aborted, abort, budget)
    if engine is not None:
        problems = engine.stop(0 if aborted or abort.received else grace, down_done=down_done)
    elif starting is not None:
        problems = starting.abandon()
    else:
        problems = []
    # Registry logins and TLS keys must not outlive the put (`fly intercept` could read them).
    for directory in secrets_dirs:
        shutil.rmtree(directory, ignore_errors=True)
    for problem in problems:
        console.warn(f"teardown: {problem}")


def _compose_down(
    project: ComposeProject,
    engine: RunningEngine,
    console: Console,
    grace: int,
    aborted: bool,
    abort: AbortOnSignal,
    budget: TeardownBudget,
) -> bool:
    """Whether compose down finished (a down past its deadline is left to finish alone; the engine's stop does the
    rest)."""
    after_abort = budget.down_after_abort(remote=engine.remote)
    seconds = budget.compose_down(remote=engine.remote, aborted=aborted, grace=grace)
    started = time.monotonic()
    problem = within(seconds, lambda: project.down(0 if aborted else grace), after_abort, abort)
    if problem is None:
        console.warn(f"compose down did not finish within {seconds:g}s: stopping the engine's containers directly")
        return False
    if problem:
        console.warn(f"compose down: {problem}")
        return False
    console.info(f"compose down --volumes --remove-orphans: {time.monotonic() - started:.2f}s")
    return True


def within(seconds: float, function: Callable[[], str], abort_seconds: float, abort: AbortOnSignal) -> str | None:
    """function()'s result, or None when it takes longer than `seconds` (it is left to finish alone).

    A SIGTERM that arrives meanwhile (deferred during teardown) shortens the wait to
    `abort_seconds` from the start, so the rest of the cleanup still fits before SIGKILL.
    Joining a thread is safe here because the signal is deferred: no handler's exception can
    interrupt the join (see concurrency.py for what that does before Python 3.13).
    """
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(function()), daemon=True)
    started = time.monotonic()
    worker.start()
    while worker.is_alive():
        limit = started + (min(seconds, abort_seconds) if abort.received else seconds)
        left = limit - time.monotonic()
        if left <= 0:
            break
        worker.join(min(left, 0.1))
    return result[0] if result else None
