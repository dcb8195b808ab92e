"""The images into the engine (`ImageIntake`): written straight into its store where they can be, else `docker load`.

Direct writes happen before dockerd starts; whatever dockerd then refuses or does not list, and
every image a damaged or refused store held, falls back to `docker load` with a warning saying
why. Images a task cache kept are named, not loaded again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import docker

from compose_env.console import Console
from compose_env.engine.daemon import PreparedDaemon
from compose_env.engine.diagnosis import error_lines
from compose_env.engine.handle import DOCKER_CONFIG_DIR, DaemonHandle, RunningEngine
from compose_env.errors import RuntimeFailure
from compose_env.images import layerstore
from compose_env.images import load as images_module
from compose_env.images.layerstore import NO_HOOKS, DirectImage, RootfsImage, StoreHooks
from compose_env.images.oci import Platform
from compose_env.images.plan import ImagePlan, check_free_space, local_platform
from compose_env.images.store_format import StoreLayout

#: How layerstore wrote an image: from layer blobs (False) or from a rootfs directory (True).
HOW_WRITTEN = {
    False: "inflated, checked against the config's diff_ids, extracted",
    True: "archived and extracted by GNU tar, its config from the files beside it",
}
#: Inputs by their plan's key (its index in params.images, as a string: layerstore's keys too), with the image
#: layerstore writes.
Written = dict[str, tuple[ImagePlan, DirectImage | RootfsImage]]


@dataclass(frozen=True)
class ImageOps:
    """How the intake reaches the inputs, the store and the engine: the real functions; tests hand in fakes."""

    write_images: Callable[[dict[str, DirectImage | RootfsImage], str, StoreHooks], layerstore.StoreWrite] = (
        layerstore.write_images
    )
    load_images: Callable[..., list[images_module.LoadedImage]] = images_module.load_images
    name_written_image: Callable[..., images_module.LoadedImage | None] = images_module.name_written_image
    verify_written_image: Callable[[docker.APIClient, str, tuple[str, ...]], str] = images_module.verify_written_image
    check_free_space: Callable[[list[ImagePlan], str], None] = check_free_space
    platform: Callable[[], Platform] = local_platform
    store_layout: Callable[[str, str], StoreLayout] = StoreLayout


REAL_IMAGE_OPS = ImageOps()


@dataclass(frozen=True)
class Intake:
    """What getting the images in did: the engine running at its end, the images in plan order, and the
    seconds of it that were dockerd's start (a launch waited for the direct writes)."""

    engine: RunningEngine
    loaded: list[images_module.LoadedImage]
    launch_seconds: float = 0.0


class ImageIntake:
    """The planned images into the engine: the split between cached, direct writes and `docker load`, and
    the order direct writes need (written before dockerd starts, checked after)."""

    def __init__(
        self,
        plans: list[ImagePlan],
        console: Console,
        store_hooks: StoreHooks = NO_HOOKS,
        ops: ImageOps = REAL_IMAGE_OPS,
    ) -> None:
        self.plans = by_key(plans)
        self.console = console
        self.store_hooks = store_hooks
        self.ops = ops
        self._direct: Written = {}
        self._cached: Written = {}
        #: The engine this intake launched (direct writes first), as soon as it runs: a failure after
        #: the launch still leaves the put a running engine to stop.
        self.launched: RunningEngine | None = None

    def remote(self) -> None:
        """A remote engine: everything goes through docker load, whose work may start now."""
        prepare_loads(list(self.plans.values()))

    def choose(self, prepared: PreparedDaemon) -> bool:
        """Split the inputs for the prepared store; True when dockerd must wait for direct writes.

        A kept data root first loses what an interrupted write left half-written; an image whose ID
        it holds already is only named.
        """
        store = prepared.store
        layout = self.ops.store_layout(store.data_root, store.driver)
        if prepared.keeps_data_root:
            layout.remove_partial_layers(self.console)
        if self.plans and store.note:
            self.console.info(store.note)
        candidates = (
            writable_images(list(self.plans.values()), self.ops.platform())
            if store.writable or layout.has_images()
            else {}
        )
        self._cached = {key: planned for key, planned in candidates.items() if in_store(planned[1], layout)}
        if store.writable:
            self._direct = {key: planned for key, planned in candidates.items() if key not in self._cached}
        prepare_loads([plan for key, plan in self.plans.items() if key not in self._cached and key not in self._direct])
        return bool(self._direct)

    def into_running(self, engine: RunningEngine, data_root: str | None) -> Intake:
        """A running engine (remote, or nothing to write first): the cached images named, docker load for the rest.

        `data_root`: an inner engine's, whose free space is checked first and beside which docker load spools.
        """
        if data_root is not None:
            self._check_free_space(data_root)
        return self._rest(engine, {}, 0.0, os.path.dirname(data_root) if data_root else None)

    def into_prepared(self, prepared: PreparedDaemon) -> Intake:
        """The direct writes, then dockerd's launch on them; the cached images named, docker load for the rest."""
        self._check_free_space(prepared.store.data_root)
        engine, written, launch_seconds = self._write_then_launch(prepared)
        return self._rest(engine, written, launch_seconds, os.path.dirname(prepared.store.data_root))

    def _check_free_space(self, data_root: str) -> None:
        self.ops.check_free_space([plan for key, plan in self.plans.items() if key not in self._cached], data_root)

    def _rest(
        self,
        engine: RunningEngine,
        loaded: dict[str, images_module.LoadedImage],
        launch_seconds: float,
        spool_dir: str | None,
    ) -> Intake:
        loaded.update(self._name_cached(engine.handle))
        rest = {key: plan for key, plan in self.plans.items() if key not in loaded}
        handle = engine.handle
        for image in self.ops.load_images(
            list(rest.values()), handle.client, handle.load_client, self.console, spool_dir=spool_dir
        ):
            loaded[next(key for key, plan in rest.items() if plan.entry is image.entry)] = image
        return Intake(engine, [loaded[key] for key in self.plans], launch_seconds)

    # -- the images a kept data root holds

    def _name_cached(self, handle: DaemonHandle) -> dict[str, images_module.LoadedImage]:
        """Name the images the kept data root (a task cache) holds: nothing to load. One dockerd does not list goes to
        docker load."""
        named: dict[str, images_module.LoadedImage] = {}
        for key, (plan, image) in self._cached.items():
            assert isinstance(image, DirectImage)
            loaded = self.ops.name_written_image(plan, image.image_id, image.repo_tags, handle.client, 0.0, 0)
            if loaded is None:
                self.console.warn(
                    f"{plan.where}: its files are in the cache but dockerd does not list {image.image_id[:19]}: "
                    "loading it"
                )
                prepare_loads([plan])
                continue
            self.console.info(
                f"{plan.where}: {image.image_id[:19]} already in the cache → {', '.join(loaded.names) or 'no name'}"
            )
            named[key] = loaded
        return named

    # -- direct writes

    def _write_then_launch(
        self, prepared: PreparedDaemon
    ) -> tuple[RunningEngine, dict[str, images_module.LoadedImage], float]:
        """Write the images into the store, start dockerd on it, check and name them; returns dockerd, the images by
        plan, and its start time.

        Never worse than docker load: an image that could not be written goes to docker load (it left
        nothing in the store). A store that may hold half-registered entries, a dockerd that does not
        start on it, or a written image it does not take as written: dockerd starts again on an emptied
        data root and every input goes through docker load.
        """
        direct = self._direct
        write = self.ops.write_images(
            {key: image for key, (_plan, image) in direct.items()}, prepared.store.data_root, self.store_hooks
        )
        accepted = self._accepted(prepared, write)
        prepare_loads([plan for key, (plan, _image) in direct.items() if key not in accepted])
        launched = time.monotonic()
        checked = 0.0
        try:
            engine: RunningEngine = prepared.launch(DOCKER_CONFIG_DIR)
            self.launched = engine
            launch_seconds = time.monotonic() - launched
            refused = self._refused_image(engine.handle, accepted, write)
            checked = time.monotonic() - launched - launch_seconds
        except RuntimeFailure as failure:
            if not accepted:
                raise
            launch_seconds = time.monotonic() - launched
            refused = ("", f"dockerd did not start on the written store ({_start_failure(failure)})")
        if refused is not None:
            key, reason = refused
            where = direct[key][0].where if key else ", ".join(plan.where for plan, _image in accepted.values())
            _fall_back(self.console, accepted, f"{where}: {reason}", "restarting dockerd on an emptied data root")
            prepare_loads([plan for plan, _image in accepted.values()])
            restarted = time.monotonic()
            engine = self.launched = prepared.restart_clean(DOCKER_CONFIG_DIR)
            self.console.info(f"dockerd restarted on an emptied data root in {time.monotonic() - restarted:.2f}s")
            launch_seconds += time.monotonic() - restarted
            accepted = {}
        return engine, self._name_written(engine, accepted, write, checked), launch_seconds

    def _accepted(self, prepared: PreparedDaemon, write: layerstore.StoreWrite) -> Written:
        """The images written; none when the store may hold half-registered entries (it is emptied then)."""
        direct = self._direct
        for key, (plan, _image) in direct.items():
            if write.images[key].problem is not None and not write.damaged:
                self.console.warn(
                    f"{plan.where}: not written into the store directly ({write.images[key].problem}): loading it "
                    "with docker load"
                )
        if write.damaged:
            culprits = [plan.where for key, (plan, _image) in direct.items() if write.images[key].left_entries] or [
                plan.where for plan, _ in direct.values()
            ]
            _fall_back(
                self.console,
                direct,
                f"{', '.join(culprits)}: the store may hold half-registered entries ({write.damaged})",
                "emptying the data root",
            )
            prepared.empty_data_root()
            return {}
        return {key: (plan, image) for key, (plan, image) in direct.items() if write.images[key].problem is None}

    def _refused_image(
        self, handle: DaemonHandle, accepted: Written, write: layerstore.StoreWrite
    ) -> tuple[str, str] | None:
        """The first written image dockerd does not take as written, with why; None when it takes them all."""
        for key in accepted:
            result = write.images[key]
            problem = self.ops.verify_written_image(handle.client, result.image_id, result.diff_ids)
            if problem:
                return key, problem
        return None

    def _name_written(
        self, engine: RunningEngine, accepted: Written, write: layerstore.StoreWrite, checked: float
    ) -> dict[str, images_module.LoadedImage]:
        written: dict[str, images_module.LoadedImage] = {}
        for key, (plan, image) in accepted.items():
            result = write.images[key]
            loaded = self.ops.name_written_image(
                plan, result.image_id, image.repo_tags, engine.handle.client, result.seconds, result.size
            )
            assert loaded is not None  # dockerd was just checked to list it
            layers = f"{result.layers} layer{'s' if result.layers > 1 else ''}"
            self.console.info(
                f"{plan.where}: {layers}, {result.size / 2**20:.1f} MiB, written into the overlay2 store in "
                f"{result.seconds:.2f}s"
                f" ({HOW_WRITTEN[isinstance(image, RootfsImage)]}) → {', '.join(loaded.names) or loaded.image_id[:19]}"
            )
            written[key] = loaded
        if written:
            count = f"{len(written)} image{'s' if len(written) > 1 else ''}"
            self.console.info(
                f"{count} written in {write.seconds:.2f}s in all (layers several at once) before dockerd started, "
                f"checked in {checked:.2f}s after"
            )
        return written


def in_store(image: DirectImage | RootfsImage, layout: StoreLayout) -> bool:
    return isinstance(image, DirectImage) and layout.holds(image.image_id, image.chain_ids)


def by_key(plans: list[ImagePlan]) -> dict[str, ImagePlan]:
    """The plans by their key: their index in params.images, as a string (layerstore's keys)."""
    return {str(number): plan for number, plan in enumerate(plans)}


def prepare_loads(plans: list[ImagePlan]) -> None:
    """Start what these plans, which go through docker load, can do before the daemon answers."""
    for plan in plans:
        if plan.prepare is not None:
            plan.prepare()


def writable_images(plans: list[ImagePlan], platform: Platform) -> Written:
    """The plans layerstore can write, by their key; the rest go through docker load."""
    writable = {}
    for key, plan in by_key(plans).items():
        image = plan.direct(platform) if plan.direct is not None else None
        if image is not None:
            writable[key] = (plan, image)
    return writable


def _start_failure(failure: RuntimeFailure) -> str:
    """dockerd's own last error line when its log has one, else our message."""
    errors = error_lines(failure.diagnosis)
    if not errors:
        return failure.message.removeprefix("the inner Docker daemon did not start: ")
    line = errors[-1].strip()
    return line.split('msg="', 1)[1].rstrip('"') if 'msg="' in line else line


def _fall_back(console: Console, inputs: Written, reason: str, action: str) -> None:
    """The one warning line of a complete fallback: its reason, what happens, and the inputs that now go through docker
    load."""
    loaded = ", ".join(plan.entry.param_path for plan, _image in inputs.values())
    console.warn(f"direct writes given up: {reason}; {action}, then docker load for {loaded}")
