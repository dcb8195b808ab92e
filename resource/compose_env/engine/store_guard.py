"""dockerd stays on the graphdriver store layerstore writes into: checked before it starts and after.

Docker 29 makes the containerd image store (snapshotters) the default; dockerd keeps the
graphdriver store because `--storage-driver` is always passed. What else could move it:
- `--feature containerd-snapshotter` in source.dockerd.args, or `features` in the image's
  `/etc/docker/daemon.json` (a derived image may ship one): refused while direct writes are
  on, since the images would be written where dockerd never looks;
- flags or daemon.json keys that move or reshape the store (user namespaces, another data
  root or config file, storage options): direct writes are then off, every image goes
  through `docker load`.
After start, `info` must report the chosen driver and no `io.containerd.snapshotter` store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from compose_env.errors import UserError

DAEMON_JSON = "/etc/docker/daemon.json"
SNAPSHOTTER_FEATURE = "containerd-snapshotter"
SNAPSHOTTER_STORE = "io.containerd.snapshotter"
#: dockerd flags in source.dockerd.args after which the store layerstore would write is not the one dockerd reads.
STORE_CHANGING_FLAGS = frozenset(
    {
        "--userns-remap",
        "--data-root",
        "-g",
        "--graph",
        "--storage-driver",
        "-s",
        "--storage-opt",
        "--config-file",
        "--feature",
    }
)
#: The same as daemon.json keys.
STORE_CHANGING_KEYS = frozenset({"userns-remap", "data-root", "graph", "storage-driver", "storage-opts"})
REFUSAL_HINT = (
    "compose-env writes images into dockerd's graphdriver store (overlay2):"
    " remove the containerd-snapshotter feature, or set source.dockerd.direct_load: false"
)


def _feature_values(args: Sequence[str]) -> list[str]:
    """The values of every `--feature` flag (`--feature x`, `--feature=x`)."""
    values = []
    for number, arg in enumerate(args):
        if arg == "--feature" and number + 1 < len(args):
            values.append(args[number + 1])
        elif arg.startswith("--feature="):
            values.append(arg.split("=", 1)[1])
    return values


def _turned_on(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("", "1", "true")


def snapshotter_in_args(args: Sequence[str]) -> bool:
    """Whether source.dockerd.args turn the containerd snapshotter on (`--feature containerd-snapshotter[=true]`)."""
    for value in _feature_values(args):
        name, _, setting = value.partition("=")
        if name.strip() == SNAPSHOTTER_FEATURE and _turned_on(setting):
            return True
    return False


def read_daemon_json(path: str = DAEMON_JSON) -> tuple[dict[str, Any] | None, str]:
    """(the settings, "") ; (None, "") without a file; (None, why) for one that is not a JSON object."""
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        return None, ""
    except OSError as error:
        return None, f"{path} is unreadable ({error.strerror})"
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        return None, f"{path} is not valid JSON ({error.msg}, line {error.lineno})"
    if not isinstance(settings, dict):
        return None, f"{path} is not a JSON object"
    return settings, ""


def refuse_snapshotter(
    args: Sequence[str], daemon_json: dict[str, Any] | None, daemon_json_path: str = DAEMON_JSON
) -> None:
    """Raise when direct writes are on and the args or daemon.json turn the containerd snapshotter on."""
    if snapshotter_in_args(args):
        raise UserError(
            "source.dockerd.args",
            "--feature containerd-snapshotter cannot be used with direct writes (source.dockerd.direct_load)",
            REFUSAL_HINT,
        )
    features = (daemon_json or {}).get("features")
    if isinstance(features, dict) and SNAPSHOTTER_FEATURE in features and _turned_on(features[SNAPSHOTTER_FEATURE]):
        raise UserError(
            "source.dockerd.direct_load",
            f"{daemon_json_path} in the image turns on the containerd snapshotter (features.{SNAPSHOTTER_FEATURE}), "
            "which direct writes cannot write into",
            REFUSAL_HINT,
        )


def store_changed_by(
    args: Sequence[str], daemon_json: dict[str, Any] | None, daemon_json_path: str = DAEMON_JSON
) -> str:
    """What moves or reshapes the store dockerd reads ("" when nothing does): direct writes are then off."""
    flags = sorted({arg.split("=", 1)[0] for arg in args if arg.split("=", 1)[0] in STORE_CHANGING_FLAGS})
    if flags:
        return f"source.dockerd.args sets {', '.join(flags)}"
    keys = sorted(STORE_CHANGING_KEYS & set(daemon_json or {}))
    if keys:
        return f"{daemon_json_path} sets {', '.join(keys)}"
    return ""


def info_problem(info: dict[str, Any], driver: str) -> str:
    """What is wrong with a started dockerd's store ("" when it is the graphdriver `driver` asked for)."""
    status = {
        str(pair[0]).lower(): str(pair[1])
        for pair in info.get("DriverStatus") or []
        if isinstance(pair, list | tuple) and len(pair) == 2
    }
    if SNAPSHOTTER_STORE in json.dumps(info.get("DriverStatus") or []):
        store = status.get("driver-type", SNAPSHOTTER_STORE)
        return (
            f"dockerd runs on the containerd image store ({info.get('Driver')}, {store}), not the {driver} graphdriver"
        )
    if info.get("Driver") != driver:
        return f"dockerd runs with storage driver {info.get('Driver')}, not the {driver} it was given"
    return ""
