"""put.py's flow with a faked engine, images and compose project: the order of phases, the direct-write fallbacks,
teardown.

No Docker, no sleeps, no module patched: the fakes come in through `PutWorld` and `ImageOps`, the
doors the real collaborators use; they record what the flow asks of them, and whatever must happen
"meanwhile" (a SIGTERM during teardown, a compose down that hangs) is done by the fakes themselves.
"""

from __future__ import annotations

import io
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from compose_env.config.model import BuildMetadata, ImageEntry, PutConfig, parse_put_request
from compose_env.console import Console
from compose_env.engine.budget import BUDGET, TeardownBudget
from compose_env.engine.daemon import PreparedStore
from compose_env.engine.handle import DaemonHandle
from compose_env.errors import Aborted, DaemonStartFailure, RuntimeFailure, UserError
from compose_env.images import load as images_module
from compose_env.images.layerstore import NO_HOOKS, DirectImage, ImageWrite, StoreWrite
from compose_env.images.plan import ImagePlan
from compose_env.redaction import Redactor
from compose_env.report import RunResult, ServiceState
from compose_env.run import intake, put
from compose_env.run.command import analyse_command
from compose_env.run.teardown import within
from compose_env.signals import AbortOnSignal


class World:
    """The faked engine, images and project of one put, and the record of what the flow asked of them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.events: list[str] = []
        self.plans: list[ImagePlan] = []
        self.store_writable = True
        #: A data root that outlives the put (a task cache, source.dockerd.data_root).
        self.keeps_data_root = False
        self.launch_failure: RuntimeFailure | None = None
        #: What `compose config` rejects the project with (None: it accepts it).
        self.config_error: UserError | None = None
        #: What layerstore's write gives each image key: its problem (None: written) and whether it left entries.
        self.write_problems: dict[str, str | None] = {}
        self.left_entries: set[str] = set()
        self.damaged = ""
        #: Image IDs dockerd does not take as written, with why.
        self.refused: dict[str, str] = {}
        self.run: Callable[[], RunResult] = lambda: RunResult(
            ("up",), 0, "passed", [ServiceState("tests", "exited", 0)]
        )
        self.down: Callable[[int], str] = lambda grace: ""
        self.console_stream = io.StringIO()
        self.console = Console(self.console_stream)
        self.abort = AbortOnSignal()
        self.budget = BUDGET

    @property
    def log(self) -> str:
        return self.console_stream.getvalue()

    def aborted_run(self) -> RunResult:
        """A run a SIGTERM ends: what the handler does before it raises."""
        self.abort.received = True
        raise Aborted()

    def handle(self, name: str) -> DaemonHandle:
        return DaemonHandle(f"unix:///{name}.sock", {"DOCKER_HOST": f"unix:///{name}.sock"}, object(), object(), name)

    def plan(self, *, direct: bool = False) -> ImagePlan:
        """A planned input: docker load only, or also writable into the store."""
        index = len(self.plans)
        entry = ImageEntry(index, self.tmp_path / f"image{index}.tar", f"image{index}.tar")
        image = DirectImage(f'{{"n": {index}}}'.encode(), (f"sha256:layer{index}",), ())
        plan = ImagePlan(
            entry,
            "docker save archive",
            entry.path,
            2**20,
            (f"example/image{index}:ci",),
            stream=lambda _platform: iter(()),
            direct=(lambda _platform: image) if direct else None,
            prepare=lambda: self.events.append(f"prepare {index}"),
        )
        self.plans.append(plan)
        return plan

    def intake(self) -> intake.ImageIntake:
        """The put's image intake, with this world's fakes, its split chosen for a writable store."""
        made = intake.ImageIntake(self.plans, self.console, NO_HOOKS, self.image_ops())
        made.choose(FakePrepared(self))
        return made

    def image_ops(self) -> intake.ImageOps:
        """What the intake does to images and the store, faked: recorded, and failing as this world says."""

        def load_images(plans: list[ImagePlan], *_args: object, **_kwargs: object) -> list[images_module.LoadedImage]:
            self.events.append("docker load " + " ".join(str(plan.entry.index) for plan in plans))
            return [
                images_module.LoadedImage(plan.entry, f"sha256:loaded{plan.entry.index}", plan.names, 0.1, plan.size)
                for plan in plans
            ]

        def write_images(images: dict[str, Any], _data_root: str, _hooks: object) -> StoreWrite:
            self.events.append("write " + " ".join(images))
            results = {
                key: ImageWrite(
                    self.write_problems.get(key),
                    1,
                    2**20,
                    0.1,
                    f"sha256:written{key}",
                    image.diff_ids,
                    key in self.left_entries,
                )
                for key, image in images.items()
            }
            return StoreWrite(results, 0.2, self.damaged)

        def name_written_image(plan: ImagePlan, image_id: str, *_args: object) -> images_module.LoadedImage:
            return images_module.LoadedImage(plan.entry, image_id, plan.names, 0.1, plan.size)

        return intake.ImageOps(
            write_images=write_images,
            load_images=load_images,
            name_written_image=name_written_image,
            verify_written_image=lambda _client, image_id, _diff_ids: self.refused.get(image_id, ""),
            check_free_space=lambda plans, data_root: self.events.append(
                f"free space for {len(plans)} in {Path(data_root).name}"
            ),
            platform=lambda: ("linux", "amd64", ""),
            store_layout=lambda _data_root, _driver: FakeLayout(self),
        )

    def put_world(self) -> put.PutWorld:
        run = self.tmp_path / "run"
        return put.PutWorld(
            inner_daemon=lambda _source, _console: FakeInner(self),
            connect_remote=self.connect_remote,
            compose_project=lambda params, _console, _logs, _env: FakeProject(self, params),  # type: ignore[arg-type, return-value]
            plan_images=lambda _entries: self.plans,
            image_ops=self.image_ops(),
            run_dir=str(run),
            secrets_dirs=(str(run / "docker-config"), str(run / "tls")),
            budget=self.budget,
        )

    def connect_remote(self, _source: object, _console: object, _config_dir: str) -> FakeRemote:
        self.events.append("connect to the remote engine")
        return FakeRemote(self, self.handle("remote"))


class FakeInner:
    """InnerDaemon: its preparation recorded; a start that never ran is abandoned."""

    def __init__(self, world: World) -> None:
        self.world = world

    def prepare(self, _estimated: int, loads_images: bool) -> FakePrepared:
        self.world.events.append("prepare the store")
        return FakePrepared(self.world)

    def abandon(self) -> list[str]:
        self.world.events.append("stop dockerd (grace 0)")
        return []


class FakePrepared:
    """PreparedDaemon: launches fail as the world says."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.store = PreparedStore(str(world.tmp_path / "data-root"), "overlay2", world.store_writable)
        self.keeps_data_root = world.keeps_data_root

    def launch(self, _config_dir: str) -> FakeRunning:
        self.world.events.append("launch dockerd")
        if self.world.launch_failure is not None:
            raise self.world.launch_failure
        return FakeRunning(self.world)

    def restart_clean(self, _config_dir: str) -> FakeRunning:
        self.world.events.append("relaunch dockerd on an emptied data root")
        return FakeRunning(self.world)

    def empty_data_root(self) -> None:
        self.world.events.append("empty the data root")


class FakeRunning:
    """RunningDaemon: the same rule for compose down; its stop recorded."""

    remote = False

    def __init__(self, world: World) -> None:
        self.world = world
        self.handle = world.handle("dockerd")

    def compose_down_matters(self, grace: float, aborted: bool) -> bool:
        return not aborted and (self.world.keeps_data_root or grace > 0)

    def stop(self, grace: float, *, down_done: bool = False) -> list[str]:
        self.world.events.append(f"stop dockerd (grace {grace:g}{', project down' if down_done else ''})")
        return []


class FakeRemote:
    """RemoteEngine: compose down always matters; its stop recorded."""

    remote = True

    def __init__(self, world: World, handle: DaemonHandle) -> None:
        self.world = world
        self.handle = handle

    def compose_down_matters(self, grace: float, aborted: bool) -> bool:
        return True

    def stop(self, grace: float, *, down_done: bool = False) -> list[str]:
        self.world.events.append("stop remote")
        return []


class FakeLayout:
    """store_format.StoreLayout of the faked data root: empty, and its sweep recorded."""

    def __init__(self, world: World) -> None:
        self.world = world

    def has_images(self) -> bool:
        return False

    def holds(self, _image_id: str, _chain: list[str]) -> bool:
        return False

    def remove_partial_layers(self, _console: Console) -> None:
        self.world.events.append("remove half-written layers")


class FakeProject:
    """ComposeProject: the command's shape is real, the rest is recorded."""

    def __init__(self, world: World, params: Any) -> None:
        self.world = world
        self.params = params
        self.shape = analyse_command(params.command)
        self.started = False

    def start_config(self) -> None:
        self.world.events.append("compose config starts")

    def load_config(self) -> dict[str, Any]:
        self.world.events.append("compose config read")
        if self.world.config_error is not None:
            raise self.world.config_error
        return {}

    def check_command(self) -> Any:
        return self.shape

    def services(self) -> dict[str, Any]:
        return {"tests": {}}

    def all_services(self) -> dict[str, Any]:
        return {"tests": {}}

    def use_engine(self, engine_env: dict[str, str]) -> None:
        self.world.events.append(f"compose talks to {engine_env['DOCKER_HOST']}")

    def ensure_images(self, _client: object) -> None:
        self.world.events.append("ensure images")

    def run(self, _shape: object, _client: object) -> RunResult:
        self.started = True
        self.world.events.append("compose run")
        return self.world.run()

    def print_failure_details(self, _result: RunResult, _tail: int) -> None:
        self.world.events.append("failure details")

    def kill(self) -> None:
        self.world.events.append("kill compose")

    def down(self, grace: int) -> str:
        self.world.events.append(f"compose down (grace {grace})")
        return self.world.down(grace)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def config(tmp_path: Path, source: dict[str, Any] | None = None, **params: Any) -> PutConfig:
    (tmp_path / "docker-compose.yml").write_text("services: {tests: {image: busybox}}\n")
    request = {"source": source or {}, "params": {"compose_files": ["docker-compose.yml"], **params}}
    return parse_put_request(request, tmp_path, BuildMetadata())


def run_put(world: World, **params: Any) -> put.PutOutcome:
    source = params.pop("source", None)
    return put.run_put(
        config(world.tmp_path, source, **params),
        world.console,
        Redactor([]),
        {"PATH": "/bin"},
        world.abort,
        world=world.put_world(),
    )


def headers(log: str) -> list[str]:
    return [line.split("==> ", 1)[1].removesuffix("\x1b[0m") for line in log.splitlines() if "==> " in line]


# ---------------------------------------------------------------- the order of phases


def test_a_put_on_an_inner_daemon_writes_images_then_starts_dockerd_then_loads_the_rest_runs_and_tears_down(
    world: World,
) -> None:
    world.plan()  # docker load only
    world.plan(direct=True)

    outcome = run_put(world)

    assert world.events == [
        "compose config starts",
        "prepare the store",
        "prepare 0",  # the docker-load input starts its work before dockerd answers
        "compose config read",
        "free space for 2 in data-root",
        "write 1",
        "launch dockerd",
        "docker load 0",
        "compose talks to unix:///dockerd.sock",
        "ensure images",
        "compose run",
        "kill compose",
        "stop dockerd (grace 0)",
    ]
    assert headers(world.log) == [
        "Checking the configuration",
        "Starting the Docker daemon",
        "Checking the compose project",
        "Loading 2 images",
        "Running docker compose up --abort-on-container-exit",
        "Tearing down",
        "Timings",
    ]
    assert outcome.exit_code == 0 and outcome.result.status == "passed"
    assert outcome.images == ["example/image0:ci", "example/image1:ci"]  # in params.images order, however they came in
    assert set(outcome.timings) >= {"validate", "daemon", "load", "run", "teardown"}


def test_without_writable_images_dockerd_starts_in_the_daemon_phase_and_everything_goes_through_docker_load(
    world: World,
) -> None:
    world.plan(direct=True)
    world.plan()
    world.store_writable = False

    run_put(world)

    assert world.events[:8] == [
        "compose config starts",
        "prepare the store",
        "prepare 0",
        "prepare 1",
        "launch dockerd",
        "compose config read",
        "free space for 2 in data-root",  # checked, as when images are written first
        "docker load 0 1",
    ]


def test_a_put_on_a_remote_engine_prepares_the_loads_connects_and_takes_the_project_down_before_letting_go(
    world: World,
) -> None:
    world.plan()

    run_put(world, source={"docker_host": "tcp://engine:2375"}, stop_grace=3)

    assert world.events == [
        "compose config starts",
        "prepare 0",
        "connect to the remote engine",
        "compose config read",
        "docker load 0",
        "compose talks to unix:///remote.sock",
        "ensure images",
        "compose run",
        "kill compose",
        "compose down (grace 3)",
        "stop remote",
    ]


def test_a_failed_command_prints_its_details_and_fails_the_put_after_teardown(world: World) -> None:
    world.run = lambda: RunResult(("up",), 3, "failed", [ServiceState("tests", "exited", 3)], {}, ["tests"])

    outcome = run_put(world)

    assert world.events[-4:] == ["compose run", "failure details", "kill compose", "stop dockerd (grace 0)"]
    assert outcome.exit_code == 1 and outcome.result.exit_code == 3
    assert run_put(world, fail_on_error=False).exit_code == 0


def test_a_project_compose_rejects_is_told_after_the_daemon_phase_then_only_the_engine_is_stopped(world: World) -> None:
    """compose config runs while the daemon starts; nothing of the project ran, so there is nothing to take down."""
    world.plan()
    world.config_error = UserError("params.compose_files", "docker compose rejects the project", "fix it")

    with pytest.raises(UserError):
        run_put(world, stop_grace=5)

    assert world.events == [
        "compose config starts",
        "prepare the store",
        "prepare 0",
        "launch dockerd",
        "compose config read",
        "kill compose",
        "stop dockerd (grace 5)",
    ]
    assert "Loading" not in world.log and "Running docker compose" not in world.log


# ---------------------------------------------------------------- teardown


def test_an_error_during_the_run_still_tears_everything_down_and_removes_the_logins(world: World) -> None:
    logins = Path(world.put_world().secrets_dirs[0])
    logins.mkdir(parents=True)
    (logins / "config.json").write_text("{}")

    def fail() -> RunResult:
        raise RuntimeFailure("compose vanished")

    world.run = fail

    with pytest.raises(RuntimeFailure):
        run_put(world, stop_grace=2)

    assert world.events[-4:] == [
        "compose run",
        "kill compose",
        "compose down (grace 2)",
        "stop dockerd (grace 2, project down)",
    ]
    assert "Tearing down" in headers(world.log)
    assert not logins.exists()


def test_an_abort_during_the_run_tears_down_at_once_without_grace(world: World) -> None:
    world.run = world.aborted_run

    with pytest.raises(Aborted):
        run_put(world, stop_grace=5)

    # The inner daemon's stop kills the containers: no compose down, no grace.
    assert world.events[-3:] == ["compose run", "kill compose", "stop dockerd (grace 0)"]
    assert "aborted (SIGTERM): tearing down" in world.log


def test_a_sigterm_during_teardown_does_not_cut_it_short_and_is_raised_once_it_is_done(world: World) -> None:
    def down_meanwhile_signalled(_grace: int) -> str:
        world.abort._handle(signal.SIGTERM, None)  # deferred: remembered, not raised
        return ""

    world.down = down_meanwhile_signalled

    with pytest.raises(Aborted):
        run_put(world, stop_grace=5)

    # The rest of the teardown ran, and dockerd's containers got no grace once the signal came.
    assert world.events[-3:] == ["kill compose", "compose down (grace 5)", "stop dockerd (grace 0, project down)"]


def test_on_a_kept_data_root_compose_down_runs_and_the_daemon_stop_knows_it(world: World) -> None:
    world.keeps_data_root = True

    run_put(world)

    assert "remove half-written layers" in world.events[: world.events.index("launch dockerd")]
    assert world.events[-3:] == ["kill compose", "compose down (grace 0)", "stop dockerd (grace 0, project down)"]


def test_on_a_kept_data_root_a_compose_down_that_fails_leaves_the_removal_to_the_daemon_stop(world: World) -> None:
    world.keeps_data_root = True
    world.down = lambda _grace: "exit status 1: network busy"

    run_put(world)

    assert world.events[-2:] == ["compose down (grace 0)", "stop dockerd (grace 0)"]
    assert "compose down: exit status 1: network busy" in world.log


def test_on_a_kept_data_root_a_compose_down_past_its_deadline_leaves_the_removal_to_the_daemon_stop(
    world: World,
) -> None:
    world.keeps_data_root = True
    world.budget = TeardownBudget(down_normal=0.05)
    world.down = lambda _grace: (time.sleep(0.5), "")[1]

    run_put(world)

    assert world.events[-2:] == ["compose down (grace 0)", "stop dockerd (grace 0)"]
    assert "compose down did not finish within 0.05s" in world.log


def test_an_abort_on_a_kept_data_root_leaves_the_removal_to_the_daemon_stop_without_compose_down(world: World) -> None:
    world.keeps_data_root = True
    world.run = world.aborted_run

    with pytest.raises(Aborted):
        run_put(world)

    assert world.events[-3:] == ["compose run", "kill compose", "stop dockerd (grace 0)"]


def test_a_daemon_that_fails_to_start_is_stopped_and_the_failure_raised(world: World) -> None:
    world.launch_failure = DaemonStartFailure(
        "the inner Docker daemon did not start: dockerd exited with code 1 while starting"
    )

    with pytest.raises(DaemonStartFailure):
        run_put(world)

    assert world.events[-3:] == ["launch dockerd", "kill compose", "stop dockerd (grace 0)"]
    assert "compose run" not in world.events


# ---------------------------------------------------------------- direct writes and their fallbacks


def test_every_written_image_is_named_after_dockerd_starts(world: World) -> None:
    world.plan(direct=True)
    world.plan(direct=True)

    engine, written, _launch = world.intake()._write_then_launch(FakePrepared(world))  # type: ignore[arg-type]

    assert world.events == ["write 0 1", "launch dockerd"]
    assert {key: image.image_id for key, image in written.items()} == {"0": "sha256:written0", "1": "sha256:written1"}
    assert engine.handle.description == "dockerd"
    assert "2 images written in 0.20s in all" in world.log


def test_an_image_that_could_not_be_written_goes_to_docker_load_alone(world: World) -> None:
    world.plan(direct=True)
    world.plan(direct=True)
    world.write_problems["0"] = "a hard link to a missing file"

    _handle, written, _launch = world.intake()._write_then_launch(FakePrepared(world))  # type: ignore[arg-type]

    assert list(written) == ["1"]
    assert world.events == ["write 0 1", "prepare 0", "launch dockerd"]
    assert (
        "params.images[0] (image0.tar): not written into the store directly (a hard link to a missing file): loading "
        "it with docker load" in world.log
    )


def test_a_store_left_with_half_registered_entries_is_emptied_and_every_input_goes_through_docker_load(
    world: World,
) -> None:
    world.plan(direct=True)
    world.plan(direct=True)
    world.write_problems["1"] = "registering failed"
    world.left_entries.add("1")
    world.damaged = "registering params.images[1] failed part way"

    _handle, written, _launch = world.intake()._write_then_launch(FakePrepared(world))  # type: ignore[arg-type]

    assert written == {}
    assert world.events == ["write 0 1", "empty the data root", "prepare 0", "prepare 1", "launch dockerd"]
    assert (
        "direct writes given up: params.images[1] (image1.tar): the store may hold half-registered entries "
        "(registering params.images[1] failed part way); emptying the data root, then docker load for "
        "params.images[0], params.images[1]"
    ) in world.log
    assert "not written into the store directly" not in world.log  # one warning, not one per image


def test_a_dockerd_that_does_not_start_on_the_written_store_is_restarted_on_an_emptied_one(world: World) -> None:
    world.plan(direct=True)
    world.launch_failure = DaemonStartFailure(
        "the inner Docker daemon did not start: dockerd exited with code 1 while starting"
    )

    engine, written, _launch = world.intake()._write_then_launch(FakePrepared(world))  # type: ignore[arg-type]

    assert written == {} and engine.handle.description == "dockerd"
    assert world.events == ["write 0", "launch dockerd", "prepare 0", "relaunch dockerd on an emptied data root"]
    assert (
        "params.images[0] (image0.tar): dockerd did not start on the written store (dockerd exited with code 1 while "
        "starting)" in world.log
    )


def test_a_dockerd_that_does_not_start_with_nothing_written_is_a_failure_of_its_own(world: World) -> None:
    world.plan(direct=True)
    world.write_problems["0"] = "unsupported layer"
    world.launch_failure = DaemonStartFailure(
        "the inner Docker daemon did not start: dockerd exited with code 1 while starting"
    )

    with pytest.raises(DaemonStartFailure):
        world.intake()._write_then_launch(FakePrepared(world))  # type: ignore[arg-type]

    assert "relaunch dockerd on an emptied data root" not in world.events


def test_an_image_dockerd_does_not_take_as_written_sends_every_written_image_to_docker_load(world: World) -> None:
    world.plan(direct=True)
    world.plan(direct=True)
    world.refused["sha256:written1"] = "dockerd lists other layers"

    _handle, written, _launch = world.intake()._write_then_launch(FakePrepared(world))  # type: ignore[arg-type]

    assert written == {}
    assert world.events == [
        "write 0 1",
        "launch dockerd",
        "prepare 0",
        "prepare 1",
        "relaunch dockerd on an emptied data root",
    ]
    assert (
        "direct writes given up: params.images[1] (image1.tar): dockerd lists other layers; restarting dockerd on an "
        "emptied data root" in world.log
    )


# ---------------------------------------------------------------- within


def test_within_gives_the_result_of_a_function_that_finishes() -> None:
    assert within(5, lambda: "done", 1, AbortOnSignal()) == "done"


def test_within_gives_up_on_a_function_that_takes_too_long_and_leaves_it_running() -> None:
    release = threading.Event()
    try:
        assert within(0.05, lambda: "late" if release.wait() else "", 10, AbortOnSignal()) is None
    finally:
        release.set()


def test_a_sigterm_while_waiting_shortens_the_wait_to_the_abort_budget() -> None:
    abort = AbortOnSignal()
    release = threading.Event()

    def signalled_then_stuck() -> str:
        abort.received = True
        release.wait()
        return "late"

    started = time.monotonic()
    try:
        assert within(600, signalled_then_stuck, 0.05, abort) is None
    finally:
        release.set()
    assert time.monotonic() - started < 60  # not the 600 s of a normal wait


def test_a_failure_after_dockerd_launched_on_the_written_store_stops_the_running_engine(world: World) -> None:
    """A damaged input only docker load finds: dockerd runs, so it gets its stop (and the grace), not an abandon."""
    world.plan()  # docker load only
    world.plan(direct=True)

    def failing_load(*_args: object, **_kwargs: object) -> list[images_module.LoadedImage]:
        raise RuntimeFailure("params.images[0] (image0.tar): docker load failed: unexpected EOF")

    door = world.put_world()
    door = replace(door, image_ops=replace(door.image_ops, load_images=failing_load))

    with pytest.raises(RuntimeFailure):
        put.run_put(
            config(world.tmp_path, None, stop_grace=2), world.console, Redactor([]), {}, world.abort, world=door
        )

    assert world.events[-2:] == ["kill compose", "stop dockerd (grace 2)"]
