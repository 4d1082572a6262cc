"""Where a command will write, checked before its work: a bad path fails in a second, not after an hour."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["check_output_file", "check_output_dir"]


def check_output_file(path: str, option: str, inputs: Iterable[str] = (), *, renamed: bool = False) -> Path:
    """`path` as a file a command may create or replace; ValueError naming `option` otherwise.

    Refused: an empty name, a directory, one of the command's own `inputs`, and a folder that
    does not exist or cannot be written to; with `renamed` (the file is written beside it and
    renamed over it), anything but a regular file too — the rename would replace a device.
    """
    if not path:
        raise ValueError(f"{option} needs a file name")
    out = Path(path)
    if out.exists() or out.is_symlink():
        if out.is_dir():
            raise ValueError(f"{option} {out} is a directory: name a file in it")
        if renamed and not out.is_file():
            raise ValueError(f"{option} {out} is not a regular file (a device, a pipe or a broken link): name a file")
        if not out.is_file():
            return out  # written in place (/dev/stdout): nothing is replaced
        for source in inputs:
            if Path(source).exists() and os.path.samefile(out, source):
                raise ValueError(f"{option} {out} is the input file {source}: writing there would replace it")
    _check_folder(out.parent, option, out)
    return out


def check_output_dir(path: str, option: str) -> Path:
    """`path` as a directory a command may create or write into; ValueError naming `option` otherwise."""
    if not path:
        raise ValueError(f"{option} needs a directory name")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} exists and is not a directory")
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"{option} {out}: the directory cannot be written to")
        return out
    _check_folder(out.parent, option, out)
    return out


def _check_folder(folder: Path, option: str, out: Path) -> None:
    folder = folder if str(folder) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{option} {out}: the directory {folder} does not exist")
    # access(2) also answers EROFS for a read-only file system.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out}: the directory {folder} cannot be written to")
