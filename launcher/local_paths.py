"""Whether a config value names a path on this machine rather than a hub name, and a
did-you-mean for one that is missing."""

from __future__ import annotations

import difflib
from pathlib import Path


def looks_local(value: str) -> bool:
    """A hub id is `name` or `owner/name`: a value with two slashes or more is a path (a bundled
    recipe's `assets/models/...` run from another directory was taken for a hub name: trial 37b)."""
    return (
        Path(value).is_absolute()
        or value.startswith((".", "~"))
        or value.strip("/").count("/") >= 2
        or Path(value).exists()
        # `models/mine` where ./models is a folder here: a path (trial 47b: validated as a hub id).
        or (value.strip("/").count("/") == 1 and Path(value).parent.is_dir())
    )


def relative_to_cwd(value: str) -> str:
    """ " (relative to the current directory /x/y)" for a relative path, "" for an absolute one: the
    one wording every message about a path not found uses."""
    return "" if Path(value).expanduser().is_absolute() else f" (relative to the current directory {Path.cwd()})"


def did_you_mean(value: str) -> str:
    """'; did you mean X?' for a missing path whose folder holds a close spelling (a typo in the last
    part: ftl-tiny-lama for ftl-tiny-llama), else ''."""
    path = Path(value).expanduser()
    if path.is_symlink() and not path.exists():  # trial 60b: "did you mean dangling.jsonl?", its own name
        return f"; it is a link to {path.readlink()}, which does not exist"
    if path.exists() or not path.parent.is_dir():
        return ""
    try:
        siblings = [entry.name for entry in path.parent.iterdir() if entry.name != path.name]
    except OSError:  # unreadable folder: nothing to suggest
        return ""
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.75)
    return f"; did you mean {Path(value).parent / close[0]}?" if close else ""


def new_entry_refusal(folder: Path) -> str | None:
    """Why `folder` takes no new entry (the OS's words), or None: a probe folder made and removed
    at once. The permission bits do not say it for root, whom they do not stop, on an immutable
    folder or a read-only or special filesystem (trials 40b, 50b)."""
    import os
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ftl-probe-", dir=folder))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def long_name_refusal(path: Path) -> str | None:
    """Why `path` cannot be made or read for its length alone, or None: each name against the
    system's limit (255 bytes on most filesystems), the whole against its path limit. From the
    text alone: looking a too-long name up raises ENAMETOOLONG, which Path.exists() does not
    swallow (trial 63c: a traceback from validate's look for summary.json)."""
    import os

    # The limits of the filesystem the path is on (a FAT or network mount may allow fewer bytes
    # than the root's), asked of its deepest folder that exists.
    folder = _deepest_existing_folder(path)
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
        path_max = os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):  # a system that does not say
        name_max, path_max = 255, 4096
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            return f"the name {part[:40]}... is {size} bytes, over this system's limit of {name_max}"
    size = len(os.fsencode(str(path)))
    if size >= path_max:
        return f"the path {str(path)[:60]}... is {size} bytes, over this system's limit of {path_max - 1}"
    return None


def _deepest_existing_folder(path: Path) -> Path:
    """The deepest folder on `path`'s way that exists, found from the top down: os.path.isdir says
    False for a too-long name where Path.exists() would raise ENAMETOOLONG."""
    import os

    folder = Path(path.anchor) if path.anchor else Path(".")
    for part in path.parts[1 if path.anchor else 0 :]:
        if not os.path.isdir(folder / part):
            break
        folder = folder / part
    return folder


def nearest_existing(path: Path) -> Path:
    """`path`, or the closest folder above it that exists (where making it starts)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
