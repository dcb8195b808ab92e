"""The images into the engine: written straight into its store where they can be, else `docker load`.

Direct writes happen before dockerd starts; whatever dockerd then refuses or does not list, and
every image a damaged or refused store held, falls back to `docker load` with a warning saying
why. Images a task cache kept are named, not loaded again.
"""

from __future__ import annotations

import os
import time

from compose_env.console import Console
from compose_env.engine.daemon import InnerDaemon, PreparedStore
from compose_env.engine.diagnosis import error_lines
from compose_env.engine.handle import DOCKER_CONFIG_DIR, DaemonHandle
from compose_env.errors import RuntimeFailure
from compose_env.images import layerstore
from compose_env.images import load as images_module
from compose_env.images.layerstore import DirectImage, RootfsImage, StoreHooks
from compose_env.images.plan import ImagePlan, check_free_space, local_platform
from compose_env.images.store_format import StoreLayout

#: How layerstore wrote an image: from layer blobs (False) or from a rootfs directory (True).
HOW_WRITTEN = {
    False: "inflated, checked against the config's diff_ids, extracted",
    True: "archived and extracted by GNU tar, its config from the files beside it",
}
#: Inputs by their plan's key (its index in params.images, as a string: layerstore's keys too), with the image layerstore writes.
Written = dict[str, tuple[ImagePlan, DirectImage | RootfsImage]]


def get_images_in(
    plans: list[ImagePlan],
    inner: InnerDaemon | None,
    handle: DaemonHandle | None,
    direct: Written,
    cached: Written,
    console: Console,
    timings: dict[str, float],
    store_hooks: StoreHooks,
) -> tuple[DaemonHandle, list[images_module.LoadedImage]]:
    """Images a kept data root holds are only named; direct writes next (dockerd starts after them), docker load for the rest.

    Returns the images in plan order.
    """
    keyed = by_key(plans)
    if inner is not None:
        check_free_space([plan for key, plan in keyed.items() if key not in cached], inner.data_root)
    loaded: dict[str, images_module.LoadedImage] = {}
    if inner is not None and direct:
        handle, loaded, launch_seconds = _write_then_launch(inner, direct, console, store_hooks)
        # dockerd's own start is the daemon's time, not loading's
        timings["daemon"] += launch_seconds
        timings["load"] = timings.get("load", 0.0) - launch_seconds
    assert handle is not None
    loaded.update(_name_cached(cached, handle, console))
    rest = {key: plan for key, plan in keyed.items() if key not in loaded}
    spool_dir = os.path.dirname(inner.data_root) if inner is not None else None
    for image in images_module.load_images(list(rest.values()), handle.client, handle.load_client, console, spool_dir=spool_dir):
        loaded[next(key for key, plan in rest.items() if plan.entry is image.entry)] = image
    return handle, [loaded[key] for key in keyed]


def in_store(image: DirectImage | RootfsImage, store: PreparedStore) -> bool:
    return isinstance(image, DirectImage) and StoreLayout(store.data_root, store.driver).holds(image.image_id, image.chain_ids)


def _name_cached(cached: Written, handle: DaemonHandle, console: Console) -> dict[str, images_module.LoadedImage]:
    """Name the images the kept data root (a task cache) holds: nothing to load. One dockerd does not list goes to docker load."""
    named: dict[str, images_module.LoadedImage] = {}
    for key, (plan, image) in cached.items():
        assert isinstance(image, DirectImage)
        loaded = images_module.name_written_image(plan, image.image_id, image.repo_tags, handle.client, 0.0, 0)
        if loaded is None:
            console.warn(f"{plan.where}: its files are in the cache but dockerd does not list {image.image_id[:19]}: loading it")
            prepare_loads([plan])
            continue
        console.info(f"{plan.where}: {image.image_id[:19]} already in the cache → {', '.join(loaded.names) or 'no name'}")
        named[key] = loaded
    return named


def by_key(plans: list[ImagePlan]) -> dict[str, ImagePlan]:
    """The plans by their key: their index in params.images, as a string (layerstore's keys)."""
    return {str(number): plan for number, plan in enumerate(plans)}


def prepare_loads(plans: list[ImagePlan]) -> None:
    """Start what these plans, which go through docker load, can do before the daemon answers."""
    for plan in plans:
        if plan.prepare is not None:
            plan.prepare()


def writable_images(plans: list[ImagePlan]) -> Written:
    """The plans layerstore can write, by their key; the rest go through docker load."""
    platform = local_platform()
    writable = {}
    for key, plan in by_key(plans).items():
        image = plan.direct(platform) if plan.direct is not None else None
        if image is not None:
            writable[key] = (plan, image)
    return writable


def _write_then_launch(
    inner: InnerDaemon, direct: Written, console: Console, store_hooks: StoreHooks
) -> tuple[DaemonHandle, dict[str, images_module.LoadedImage], float]:
    """Write the images into the store, start dockerd on it, check and name them; returns dockerd, the images by plan, and its start time.

    Never worse than docker load: an image that could not be written goes to docker load (it left
    nothing in the store). A store that may hold half-registered entries, a dockerd that does not
    start on it, or a written image it does not take as written: dockerd starts again on an emptied
    data root and every input goes through docker load.
    """
    write = layerstore.write_images({key: image for key, (_plan, image) in direct.items()}, inner.data_root, store_hooks)
    for key, (plan, _image) in direct.items():
        if write.images[key].problem is not None and not write.damaged:
            console.warn(f"{plan.where}: not written into the store directly ({write.images[key].problem}): loading it with docker load")
    accepted = {key: (plan, image) for key, (plan, image) in direct.items() if write.images[key].problem is None}
    if write.damaged:
        culprits = [plan.where for key, (plan, _image) in direct.items() if write.images[key].left_entries] or [plan.where for plan, _image in direct.values()]
        _fall_back(console, direct, f"{', '.join(culprits)}: the store may hold half-registered entries ({write.damaged})", "emptying the data root")
        inner.empty_data_root()
        accepted = {}
    prepare_loads([plan for key, (plan, _image) in direct.items() if key not in accepted])
    launched = time.monotonic()
    checked = 0.0
    try:
        handle = inner.launch(DOCKER_CONFIG_DIR)
        launch_seconds = time.monotonic() - launched
        refused = _refused_image(handle, accepted, write)
        checked = time.monotonic() - launched - launch_seconds
    except RuntimeFailure as failure:
        if not accepted:
            raise
        launch_seconds = time.monotonic() - launched
        refused = ("", f"dockerd did not start on the written store ({_start_failure(failure)})")
    if refused is not None:
        key, reason = refused
        where = direct[key][0].where if key else ", ".join(plan.where for plan, _image in accepted.values())
        _fall_back(console, accepted, f"{where}: {reason}", "restarting dockerd on an emptied data root")
        prepare_loads([plan for plan, _image in accepted.values()])
        restarted = time.monotonic()
        handle = inner.relaunch_clean(DOCKER_CONFIG_DIR)
        console.info(f"dockerd restarted on an emptied data root in {time.monotonic() - restarted:.2f}s")
        launch_seconds += time.monotonic() - restarted
        accepted = {}
    written: dict[str, images_module.LoadedImage] = {}
    for key, (plan, image) in accepted.items():
        result = write.images[key]
        loaded = images_module.name_written_image(plan, result.image_id, image.repo_tags, handle.client, result.seconds, result.size)
        layers = f"{result.layers} layer{'s' if result.layers > 1 else ''}"
        console.info(
            f"{plan.where}: {layers}, {result.size / 2**20:.1f} MiB, written into the overlay2 store in {result.seconds:.2f}s"
            f" ({HOW_WRITTEN[isinstance(image, RootfsImage)]}) → {', '.join(loaded.names) or loaded.image_id[:19]}"
        )
        written[key] = loaded
    if written:
        count = f"{len(written)} image{'s' if len(written) > 1 else ''}"
        console.info(f"{count} written in {write.seconds:.2f}s in all (layers several at once) before dockerd started, checked in {checked:.2f}s after")
    return handle, written, launch_seconds


def _refused_image(handle: DaemonHandle, accepted: Written, write: layerstore.StoreWrite) -> tuple[str, str] | None:
    """The first written image dockerd does not take as written, with why; None when it takes them all."""
    for key in accepted:
        result = write.images[key]
        problem = images_module.verify_written_image(handle.client, result.image_id, result.diff_ids)
        if problem:
            return key, problem
    return None


def _start_failure(failure: RuntimeFailure) -> str:
    """dockerd's own last error line when its log has one, else our message."""
    errors = error_lines(failure.diagnosis)
    if not errors:
        return failure.message.removeprefix("the inner Docker daemon did not start: ")
    line = errors[-1].strip()
    return line.split('msg="', 1)[1].rstrip('"') if 'msg="' in line else line


def _fall_back(console: Console, inputs: Written, reason: str, action: str) -> None:
    """The one warning line of a complete fallback: its reason, what happens, and the inputs that now go through docker load."""
    loaded = ", ".join(plan.entry.param_path for plan, _image in inputs.values())
    console.warn(f"direct writes given up: {reason}; {action}, then docker load for {loaded}")
