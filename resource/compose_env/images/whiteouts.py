"""AUFS whiteouts, as layer tars carry them, turned into overlay ones, as dockerd's overlay2 driver stores them."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


def convert_whiteouts(root: Path) -> int:
    """AUFS whiteouts to overlay ones, as dockerd's overlay2 driver unpacks them; returns the layer size.

    `.wh.NAME` becomes a 0/0 character device NAME (owned like the whiteout), `.wh..wh..opq`
    marks its directory opaque, other `.wh..wh.` entries (AUFS metadata) are dropped. The
    size is dockerd's: every non-directory's apparent size, hardlinks counted once.
    """
    size = 0
    seen: set[int] = set()
    for directory, subdirectories, files in os.walk(root):
        whiteouts = [name for name in files + subdirectories if name.startswith(WHITEOUT_PREFIX)]
        # Converting changes the directory's mtime, which tar has already restored from the layer.
        times = os.lstat(directory) if whiteouts else None
        for name in whiteouts:
            _convert_whiteout(directory, name)
            if name in subdirectories:
                subdirectories.remove(name)
        if times is not None:
            os.utime(directory, ns=(times.st_atime_ns, times.st_mtime_ns), follow_symlinks=False)
        for name in files + [d for d in subdirectories if os.path.islink(os.path.join(directory, d))]:
            if name.startswith(WHITEOUT_PREFIX):
                continue
            info = os.lstat(os.path.join(directory, name))
            if info.st_nlink > 1:
                if info.st_ino in seen:
                    continue
                seen.add(info.st_ino)
            size += info.st_size
    return size


def _convert_whiteout(directory: str, name: str) -> None:
    path = os.path.join(directory, name)
    info = os.lstat(path)
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
    if name == OPAQUE_MARKER:
        os.setxattr(directory, "trusted.overlay.opaque", b"y")
    elif not name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
        hidden = os.path.join(directory, name[len(WHITEOUT_PREFIX) :])
        os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        os.lchown(hidden, info.st_uid, info.st_gid)
