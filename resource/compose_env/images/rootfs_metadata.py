"""What a `rootfs/` directory's neighbour files say of its image's config, and what they cannot say.

A rootfs is only the files: the config comes from what its producer wrote beside it.

- docker-image-resource's `in` (`assets/in`, v1.0.0–v1.13.0) writes `docker_inspect.json`, the
  `docker inspect` of the image: its whole config.
- registry-image-resource's `in` (`commands/in.go`) writes `metadata.json` with `env` and `user`
  (v0.1.0), `cmd` and `entrypoint` (v1.15.0), and `labels.json` with the labels (v1.8.0).
- oci-build-task's `UNPACK_ROOTFS` (`types.go` `ImageMetadata`, v0.1.0–v0.14.4) and
  docker-image-resource's `metadata.json` (`cmd/print-metadata`) hold `env` and `user` only.

A key that is present with a null value is known to be empty (registry-image writes every key of
its struct); a key that is absent is unknown, and reported as lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compose_env.config.model import ImageEntry
from compose_env.errors import UserError

#: The image config's fields a container's behaviour depends on, as `docker image inspect` names them, and the
#: Dockerfile word a user knows each by.
CONFIG_FIELDS = {
    "Cmd": "CMD",
    "Entrypoint": "ENTRYPOINT",
    "Env": "ENV",
    "User": "USER",
    "WorkingDir": "WORKDIR",
    "Healthcheck": "HEALTHCHECK",
    "ExposedPorts": "EXPOSE",
    "Volumes": "VOLUME",
    "StopSignal": "STOPSIGNAL",
    "Labels": "LABEL",
    "Shell": "SHELL",
    "OnBuild": "ONBUILD",
}
#: metadata.json's keys and the config field each fills; the value's expected JSON type.
METADATA_KEYS = {"env": ("Env", list), "user": ("User", str), "cmd": ("Cmd", list), "entrypoint": ("Entrypoint", list)}
#: What a lost field is worth a warning for (SHELL and ONBUILD matter only to builds FROM the image).
WARNED_FIELDS = ("Cmd", "Entrypoint", "WorkingDir", "Healthcheck", "ExposedPorts", "Volumes", "StopSignal", "Labels")
FORMAT_HINT = (
    "for the whole config, give the get `params: {format: oci}` (registry-image)"
    " or `params: {save: true}` (docker-image)"
)


@dataclass(frozen=True)
class RootfsMetadata:
    """The config a rootfs is loaded with, the files it came from, and what none of them carried."""

    config: dict[str, Any]
    read_from: tuple[str, ...]
    lost: tuple[str, ...]

    def describe(self) -> str:
        """What the config came from, for the line that says how the input is loaded."""
        if not self.read_from:
            return "no metadata.json: no env, user or command"
        return " and ".join(self.read_from) + ("'s whole image config" if not self.lost else "")

    def warning(self, where: str) -> str:
        """One line for the build log, or "" when nothing a run depends on is lost."""
        lost = [CONFIG_FIELDS[name] for name in WARNED_FIELDS if name in self.lost]
        if not lost:
            return ""
        kept = ", ".join(CONFIG_FIELDS[name] for name in CONFIG_FIELDS if name in self.config) or "nothing"
        files = " and ".join(self.read_from) or "no metadata.json"
        lost_words = ", ".join(lost)
        return (
            f"{where}: loaded from rootfs/, with {kept} from {files}: the image's {lost_words} are lost; {FORMAT_HINT}"
        )


def read_rootfs_metadata(entry: ImageEntry, directory: Path) -> RootfsMetadata:
    """The richest config the files beside `directory/rootfs` give; a malformed one is the entry's error."""
    inspect_file = directory / "docker_inspect.json"
    if inspect_file.is_file():
        inspected = _json_file(entry, inspect_file)
        image = inspected[0] if isinstance(inspected, list) and inspected else inspected
        inspected_config = image.get("Config") if isinstance(image, dict) else None
        if not isinstance(inspected_config, dict):
            raise UserError(
                entry.param_path,
                f"{entry.given}/docker_inspect.json should be `docker inspect` output: a list holding an image with a "
                "Config",
            )
        kept = {
            name: inspected_config[name]
            for name in CONFIG_FIELDS
            if inspected_config.get(name) not in (None, "", [], {})
        }
        return RootfsMetadata(kept, ("docker_inspect.json",), ())
    config: dict[str, Any] = {}
    known: set[str] = set()
    read_from: list[str] = []
    metadata_file = directory / "metadata.json"
    if metadata_file.is_file():
        metadata = _json_file(entry, metadata_file)
        if not isinstance(metadata, dict):
            raise UserError(
                entry.param_path,
                f"{entry.given}/metadata.json should be an object with env (a list) and user (a string)",
            )
        for key, (name, kind) in METADATA_KEYS.items():
            if key not in metadata:
                continue
            value = metadata[key]
            if value is not None and not (
                isinstance(value, kind) and (kind is str or all(isinstance(item, str) for item in value))
            ):
                expected = "a list of strings" if kind is list else "a string"
                raise UserError(
                    entry.param_path,
                    f"{entry.given}/metadata.json: {key} should be {expected}, got {json.dumps(value)[:60]}",
                )
            known.add(name)
            if value:
                config[name] = value
        read_from.append("metadata.json")
    labels_file = directory / "labels.json"
    if labels_file.is_file():
        labels = _json_file(entry, labels_file)
        if not isinstance(labels, dict) or not all(isinstance(value, str) for value in labels.values()):
            raise UserError(entry.param_path, f"{entry.given}/labels.json should be an object of strings")
        known.add("Labels")
        if labels:
            config["Labels"] = labels
        read_from.append("labels.json")
    return RootfsMetadata(config, tuple(read_from), tuple(name for name in CONFIG_FIELDS if name not in known))


def _json_file(entry: ImageEntry, path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise UserError(entry.param_path, f"{entry.given}/{path.name} is not valid JSON: {error}") from None
    except OSError as error:
        raise UserError(entry.param_path, f"{entry.given}/{path.name} cannot be read: {error.strerror}") from None
