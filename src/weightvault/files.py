"""Files that hold secrets: atomic output that no crash can leave behind, and owner-only input.

A reader of the target path sees either the old file or the complete new one,
never a partial write, and a failed, interrupted or killed operation leaves no
output, not even a hidden one: unsealing writes plaintext, so a leftover partial
file would be a leak.

* :func:`atomic_file` writes into an unnamed file (``O_TMPFILE``) in the target's
  directory, fsyncs it and only then links it into place, so before that instant
  the data has no name and dies with the process. Where the filesystem has no
  ``O_TMPFILE`` (or ``/proc`` is missing) it falls back to a named temporary file.
* :func:`atomic_directory` builds a hidden temporary directory and renames it.
* Every named temporary (``.<name>.wv-<random>.partial``, and ``.old`` for a
  directory being replaced) is held under an exclusive ``flock`` by its writer.
  The kernel drops the lock when the writer dies, so before writing, each call
  removes the unlocked temporaries a killed writer left in the same directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

from weightvault.errors import ConfigError

__all__ = [
    "atomic_directory",
    "atomic_file",
    "fsync_directory",
    "read_bounded_file",
    "read_private_file",
    "remove_stale_partials",
]

#: Names of the temporaries this module creates (and the only names it ever removes).
_TEMP_NAME: Final = re.compile(r"\..+\.wv-[0-9a-f]{16}\.(partial|old)")
#: A temporary younger than this is left alone even when unlocked: its writer may be
#: between creating it and locking it.
_STALE_AFTER_SECONDS: Final = 10.0
#: errno values with which a filesystem says it has no O_TMPFILE.
_NO_TMPFILE: Final = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT})


def _exists(path: Path) -> ConfigError:
    return ConfigError(f"{path} already exists (pass --force to replace it)")


def fsync_directory(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.wv-{secrets.token_hex(8)}.{suffix}")


def _lock(fd: int) -> bool:
    """Take an exclusive lock without waiting; False if another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def remove_stale_partials(directory: Path, *, now: float | None = None) -> list[Path]:
    """Remove the temporaries of writers that died in ``directory``; returns what was removed.

    Only names of this module's pattern are considered, and only those no live
    process holds locked and that are older than a few seconds.
    """
    removed: list[Path] = []
    moment = time.time() if now is None else now
    try:
        names = [n for n in os.listdir(directory) if _TEMP_NAME.fullmatch(n)]
    except OSError:
        return removed
    for name in names:
        candidate = Path(directory) / name
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            if moment - os.fstat(fd).st_mtime < _STALE_AFTER_SECONDS or not _lock(fd):
                continue
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    candidate.unlink()
            removed.append(candidate)
        finally:
            os.close(fd)
    return removed


def _open_unnamed(directory: Path) -> int | None:
    """An unnamed file in ``directory`` (O_TMPFILE), or None where the filesystem has none."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, flag | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        if exc.errno in _NO_TMPFILE:
            return None
        raise


def _link_unnamed(fd: int, target: Path) -> None:
    """linkat(/proc/self/fd/N, target, AT_SYMLINK_FOLLOW): name an O_TMPFILE file.

    Passing directory fds makes os.link call linkat with AT_SYMLINK_FOLLOW (plain
    link() would try to link the /proc symlink itself and fail with EXDEV).
    """
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.link(str(fd), str(target), src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _link_into_place(fd: int, path: Path, overwrite: bool) -> None:
    """Give the unnamed file behind ``fd`` the name ``path`` in one step."""
    if not overwrite:
        try:
            _link_unnamed(fd, path)  # fails if path appeared meanwhile: no clobbering
        except FileExistsError as exc:
            raise _exists(path) from exc
        return
    # link() cannot replace a file: link under a temporary name, then rename over the target.
    # A crash between the two leaves a complete (never a partial) file, swept like any temporary.
    temp = _temp_name(path, "partial")
    _link_unnamed(fd, temp)
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


@contextlib.contextmanager
def atomic_file(path: Path, *, overwrite: bool = False, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a writable binary file that becomes ``path`` only if the block succeeds.

    The data is fsynced before it gets its name and the directory after, so the
    new file survives a power loss once this returns.

    Raises:
        ConfigError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise _exists(path)
    directory = path.parent
    remove_stale_partials(directory)
    fd = _open_unnamed(directory)
    if fd is not None:
        # Locked from the start, so the name it gets for an instant while replacing a
        # file is never taken for a dead writer's leftover by another process.
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(fd, "w+b") as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
            _link_into_place(handle.fileno(), path, overwrite)
        fsync_directory(directory)
        return
    yield from _named_atomic_file(path, overwrite=overwrite, mode=mode)


def _named_atomic_file(path: Path, *, overwrite: bool, mode: int) -> Iterator[BinaryIO]:
    """The fallback: a locked, named temporary beside the target, renamed into place."""
    temp = _temp_name(path, "partial")
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with os.fdopen(fd, "w+b") as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
            if overwrite:
                os.replace(temp, path)
            else:
                try:
                    os.link(temp, path)  # no clobbering if path appeared meanwhile
                except FileExistsError as exc:
                    raise _exists(path) from exc
                temp.unlink()
        fsync_directory(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(path: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh directory that becomes ``path`` only if the block succeeds.

    Every file written inside should be fsynced by the writer (:func:`atomic_file`
    does); this function fsyncs the directories and renames. With ``overwrite`` an
    existing ``path`` is replaced (moved aside, then removed after the rename). The
    temporary directory, and the old one being removed, stay locked while they
    exist, so a killed writer's leftovers are swept by the next writer here.

    Raises:
        ConfigError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise _exists(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path.parent)
    tmp = _temp_name(path, "partial")
    os.mkdir(tmp, 0o700)
    lock_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            yield tmp
            for root, _dirs, _files in os.walk(tmp):
                fsync_directory(Path(root))
            _replace_directory(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        os.close(lock_fd)


def _replace_directory(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.replace(tmp, path)
        fsync_directory(path.parent)
        return
    old = _temp_name(path, "old")
    old_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(old_fd, fcntl.LOCK_EX)  # the lock moves with the directory: a crash leaves it sweepable
        os.replace(path, old)
        os.replace(tmp, path)
        fsync_directory(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        os.close(old_fd)


def read_private_file(path: Path, what: str = "secret key", *, max_bytes: int | None = None) -> bytes:
    """The bytes of a file that only its owner may read (no group or other permission bits).

    Permissions and size are checked on the open file (no race with a rename), before reading.

    Raises:
        ConfigError: unreadable, larger than ``max_bytes``, or accessible by other users.
    """
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(f"{path}: {what} file is accessible by other users (chmod 600 it)")
            if max_bytes is not None and info.st_size > max_bytes:
                raise ConfigError(f"{path}: not a {what} file (too large)")
            return handle.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} file ({exc.strerror})") from exc


def read_text_file(path: Path, what: str, *, max_bytes: int = 16 << 20) -> str:
    """The UTF-8 text of a file a user names (a key, a policy, a checkpoint), bounded like
    :func:`read_bounded_file`.

    Raises:
        ConfigError: unreadable, too large, or not UTF-8 text.
    """
    data = read_bounded_file(path, what, max_bytes=max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a {what} file (not UTF-8 text)") from exc


def read_bounded_file(path: Path, what: str, *, max_bytes: int) -> bytes:
    """The bytes of a file that others may have written, refused when larger than ``max_bytes``
    (read at most one byte past it, so a huge or growing file costs nothing).

    Raises:
        ConfigError: unreadable or too large.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} file ({exc.strerror})") from exc
    if len(data) > max_bytes:
        raise ConfigError(f"{path}: not a {what} file (too large)")
    return data
