"""Where a command will write, checked before its work: a bad path fails in a second, not after an hour."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["check_output_file", "check_output_dir", "check_distinct"]


def check_output_file(path: str, option: str, inputs: Iterable[str | Path] = (), *, renamed: bool = False) -> Path:
    """`path` as a file a command may create or replace; ValueError naming `option` otherwise.

    Refused: an empty name, a directory, one of the command's own `inputs`, and a file that
    cannot be written. With `renamed` (the file is written beside it and renamed over it) the
    folder must take the new file, and the target must be a plain file: a rename would replace
    a device, a pipe or a symbolic link (/dev/stdout) with the file.
    """
    if not path:
        raise ValueError(f"{option} needs a file name")
    out = Path(path)
    if out.exists() or out.is_symlink():
        if out.is_dir():
            raise ValueError(f"{option} {out} is a directory: name a file in it")
        for source in inputs:
            if Path(source).exists() and out.exists() and os.path.samefile(out, source):
                raise ValueError(f"{option} {out} is the input file {source}: writing there would replace it")
        if renamed and (out.is_symlink() or not out.is_file()):
            raise ValueError(f"{option} {out} is not a plain file (a link, a device or a pipe): the output is "
                             f"renamed over it, which would replace it; name a plain file")
        if not renamed:  # written in place: the file itself must take it (a redirected /dev/stdout does)
            if not os.access(out, os.W_OK):
                raise ValueError(f"{option} {out}: the file cannot be written to")
            return out
    _check_folder(out.parent, option, out)
    return out


def check_output_dir(path: str, option: str) -> Path:
    """`path` as a directory a command may create (with its missing parents) or write into; ValueError
    naming `option` otherwise."""
    if not path:
        raise ValueError(f"{option} needs a directory name")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} exists and is not a directory")
    existing = out
    while not existing.exists() and existing != existing.parent:  # missing parents are made
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out}: the directory {existing} cannot be written to")
    return out


def check_distinct(outputs: dict[str, str | None]) -> None:
    """ValueError when two options name the same output file (the second would replace the first)."""
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        if path:
            key = os.path.realpath(path)
            if key in seen:
                raise ValueError(f"{option} and {seen[key]} name the same file {path}: one would replace the other")
            seen[key] = option


def _check_folder(folder: Path, option: str, out: Path) -> None:
    if not folder.is_dir():
        raise ValueError(f"{option} {out}: the directory {folder} does not exist")
    # access(2) also answers EROFS for a read-only file system.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out}: the directory {folder} cannot be written to")
