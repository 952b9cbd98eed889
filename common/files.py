"""Outputs that are complete or absent, never half-written.

`atomic_output(path)` yields a hidden temporary path beside `path` (a file or a folder, with the same extension,
so ffmpeg picks the same format) that replaces `path` only once written; on any failure it is removed.
`write_atomically` writes a file from Python through it, flushed to disk before the rename. A write that fails
for want of room or permission ends in one line naming the output (`NotWritten`); `check_writable` tells the
same before a long run starts.
"""
import contextlib
import errno
import glob
import os
import shutil
import tempfile

from .errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: past the file-size limit, a full disk under one
PARTIAL = ".partial"


class NotWritten(UserError):
    """An output that could not be written (a full disk, a folder that cannot be written): the whole run stops,
    since every later output would fail the same way."""


def partial_path(path):
    """Where `path` is written before it is complete: `.<name>.partial<extension>` beside it (hidden, so globs and
    listings skip it)."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, extension = os.path.splitext(name)
    return os.path.join(folder, f".{stem}{PARTIAL}{extension}")


def not_written(path, reason, full_disk=True, what=None, rerun="run again"):
    """The NotWritten for `path` (a `what`, e.g. "checkpoint"), saying why and what to do; the earlier file at
    `path`, if any, is intact."""
    folder = os.path.dirname(os.path.abspath(path))
    kept = f"the earlier {os.path.basename(path)} is intact" if os.path.exists(path) else "nothing was left behind"
    subject = f"{path}: {what + ' ' if what else ''}not written"
    if full_disk:
        return NotWritten(f"{subject}, the disk is full ({reason}); {kept}. Free space in {folder} and {rerun}")
    return NotWritten(f"{subject} ({reason}); {kept}. Make {folder} writable, or pass another folder, and {rerun}")


def _failed_write(error, partial):
    """The OSError behind `error` that says the output could not be written: a full disk, or a refusal at the
    temporary path. torch.save reports a failed write as a RuntimeError whose context is the OSError."""
    while error is not None and not isinstance(error, UserError):
        if isinstance(error, OSError) and (error.errno in DISK_FULL or str(error.filename).startswith(partial)):
            return error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


@contextlib.contextmanager
def atomic_output(path, what=None, rerun="run again"):
    """Yield the temporary path of `path` (partial_path); when the block ends it replaces `path`, when it fails it
    is removed. Works for files and for folders. A full disk or a folder that cannot be written ends in NotWritten
    naming `path`; `what` and `rerun` complete its message."""
    partial = partial_path(path)
    folder = os.path.dirname(partial)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise UserError(f"{path}: cannot write there ({_why_not_writable(folder, error)}); pass a path in a "
                        f"folder you can write to") from None
    _remove(partial)  # left over from an interrupted run
    try:
        yield partial
        if os.path.isdir(partial):
            _remove(path)  # os.replace cannot replace a non-empty directory
        os.replace(partial, path)
    except BaseException as error:
        _remove(partial)
        failed = _failed_write(error, partial)
        if failed is not None:
            raise not_written(path, failed.strerror, failed.errno in DISK_FULL, what, rerun) from None
        raise


@contextlib.contextmanager
def folders_removed_on_failure(path):
    """For a command that writes one file, `path`: when the block fails, remove again the folders made for it (the
    outermost missing when the block began, and those inside it), each as far as it is empty. Not for work that
    writes into a shared folder from several processes: another may be about to write where one removes."""
    folder = os.path.dirname(os.path.abspath(path))
    there = _nearest_existing(folder)
    try:
        yield
    except BaseException:
        while folder != there and os.path.isdir(folder):
            try:
                os.rmdir(folder)
            except OSError:
                break
            folder = os.path.dirname(folder)
        raise


def write_atomically(path, write, mode="wb", what=None, rerun="run again"):
    """Call write(f) on the temporary file of `path` opened in `mode` (text without newline translation), flush it
    to disk, then rename it to `path` (atomic_output)."""
    with atomic_output(path, what, rerun) as partial:
        with open(partial, mode, **({} if "b" in mode else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def remove_stale_temporaries(folder):
    """Delete what writes into `folder` that a killed run never finished left behind."""
    for path in glob.glob(os.path.join(glob.escape(folder), f".*{PARTIAL}*")):
        _remove(path)


def _nearest_existing(path):
    """`path` (absolute), or the nearest of the folders above it that exists."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _why_not_writable(folder, error=None):
    """Why `folder` cannot be made or written, or None when it can: a file standing where a folder of its path
    should be, no write permission where it would be created, or the OS's reason (`error`, else that of making
    and removing an empty folder there)."""
    path = _nearest_existing(folder)
    if not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"no permission to write in {path}"
    if error is None:
        try:  # only trying tells where root's permissions pass but the OS refuses (/proc, a read-only mount)
            os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=path))
        except OSError as refused:
            return f"making a folder in {path} failed: {refused.strerror or type(refused).__name__}"
    return None if error is None else (error.strerror or type(error).__name__)


def check_writable(folder, flag, shown=None, error=None):
    """Raise a UserError naming `flag` (and `shown`, the value given, default `folder`) when `folder` could not be
    created or written (`error`: the OS's refusal to create it). Checked before any work, so a long run does not fail
    at its end; leaves nothing behind."""
    reason = _why_not_writable(folder, error)
    if reason:
        where = "a path in a folder" if shown else "a folder"
        raise UserError(f"{flag} {shown or folder}: cannot write there ({reason}); pass {where} you can write to")


def make_folder(folder, flag):
    """Create `folder` (given as `flag`), or end in check_writable's one line."""
    check_writable(folder, flag)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        check_writable(folder, flag, error=error)
        raise


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
