"""Which compose-env ran: the image's OCI labels, the first line of a put's log, metadata `resource`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from harness import run_script

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_REQUEST = {
    "source": {},
    "params": {
        "compose_files": ["src/docker-compose.yml"],
        "images": ["redis-image", {"path": "tests-image/image.tar", "tag": "example/tests:ci"}],
        "command": ["run", "--rm", "tests"],
    },
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_the_image_carries_the_oci_labels_of_its_version_and_revision(image_labels: dict[str, str]) -> None:
    version = image_labels["org.opencontainers.image.version"]
    revision = image_labels["org.opencontainers.image.revision"]

    assert (
        version
        == subprocess.run(
            [str(ROOT / "scripts/version.sh"), str(ROOT)], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    assert version.startswith((ROOT / "VERSION").read_text().strip())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if head:  # a clone: the image was built from it (make image, or the pipeline's build of this commit)
        assert re.fullmatch(r"[0-9a-f]{7,40}", revision) and head.startswith(revision)
    assert image_labels["org.opencontainers.image.source"]
    assert image_labels["org.opencontainers.image.title"] == "compose-env"
    assert image_labels["org.opencontainers.image.description"]


def test_a_put_log_opens_with_the_version_and_its_metadata_names_it(
    image: str, put_dir: Path, version_line: str
) -> None:
    outcome = run_script(image, "out", EXAMPLE_REQUEST, put_dir=str(put_dir))

    assert outcome.exit_code == 0, outcome.stderr
    assert ANSI.sub("", outcome.stderr).splitlines()[0] == version_line
    assert outcome.metadata()["resource"] == version_line
    assert len(outcome.stdout.encode()) < 4000
    assert outcome.leftovers == []
