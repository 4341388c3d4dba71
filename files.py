"""Writing files so that a crash, a power cut or `kill -9` at any moment leaves the old version or the new one,
never half of either; and one lock so that two runs never write the same model/ at once.

Every script's outputs go through here: submission.csv, JSON, reports and pictures, the SavedModel. A full disk
is met the same way everywhere: what was there stays as it was, nothing half-written is left, and DiskFull says in
one line what could not be written and where; each script prints that line and exits non-zero.
"""
import errno
import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


class DiskFull(Exception):
    """No room left on the disk for something: the message says what could not be written, and where."""


def is_disk_full(error):
    """Whether an error is a full disk (or quota), or was caused by one: Python's OSError ENOSPC or EDQUOT, or
    the same words in another library's error (TensorFlow's ResourceExhaustedError: '...; No space left on
    device'), or SQLite's under an Optuna study ('database or disk is full')."""
    words = [os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), "database or disk is full"]
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(said in str(error) for said in words):
            return True
        error = error.__cause__ or error.__context__
    return False


def mount_point(path):
    """The directory on which the filesystem holding `path` is mounted."""
    path = os.path.abspath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


@contextmanager
def writing(path, what=None):
    """A block that writes `path` (`what` says what it is): a full disk met in it raises DiskFull, one line."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as error:
        if not is_disk_full(error):
            raise
        raise DiskFull(f"cannot write {path}{f' ({what})' if what else ''}: no space left on the disk mounted at "
                       f"{mount_point(path)}") from error


@contextmanager
def atomic_open(path, mode="w"):
    """Open a temporary file beside `path` for writing; on a clean exit, flush it to disk (fsync) and rename it
    over `path`, which POSIX makes atomic. On an error the temporary file is removed and `path` is untouched;
    a full disk raises DiskFull."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, mode, **({} if "b" in mode else {"newline": ""})) as file:
                yield file
                file.flush()
                os.fsync(file.fileno())  # on disk before it replaces the old file: a power cut leaves one or the other
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # still there only if something failed


def write_text(path, text):
    """-> path, written atomically."""
    with atomic_open(path) as file:
        file.write(text)
    return path


def write_json(path, value):
    return write_text(path, json.dumps(value, indent=1) + "\n")


def read_json(path):
    """The file's contents, or None if there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return json.load(file)


def save_figure(figure, path, dpi=80):
    """A matplotlib figure as PNG, written atomically; -> path."""
    with atomic_open(path, "wb") as file:
        figure.savefig(file, dpi=dpi, format="png")
    return path


def replace_directory(write, path):
    """Build a new version of the directory `path` with write(new_path), then swap it in atomically.

    `path` is a symbolic link to a directory named after it with a number, path.1, path.2, ...: the new
    version is written in full beside the old one, then a new link replaces the old link in one rename, and
    only then is the old version removed. Readers (tf.saved_model.load, predict.py, serve.py) follow the link
    and always find a complete directory; a crash at any moment leaves the old or the new one in place. An error
    in write (a full disk: DiskFull) removes the half-written version there and then."""
    path = Path(path)
    versions = [int(p.suffix[1:]) for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()]
    new = path.with_name(f"{path.name}.{max(versions, default=0) + 1}")
    link = path.with_name(f".{path.name}.link{os.getpid()}")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(new, ignore_errors=True)
            write(str(new))
            link.unlink(missing_ok=True)
            link.symlink_to(new.name)  # relative: the model folder can be moved or copied whole
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        link.unlink(missing_ok=True)
        raise
    if path.exists() and not path.is_symlink():  # a real directory, from before versions were kept this way
        shutil.rmtree(path)
    os.replace(link, path)
    for number in versions:  # the old version, and any that a crash left behind
        shutil.rmtree(path.with_name(f"{path.name}.{number}"), ignore_errors=True)
    return path


class Busy(Exception):
    """Another process holds the lock."""


@contextmanager
def exclusive_lock(directory):
    """Hold directory/.lock for as long as the block runs, or raise Busy at once if another process holds it.
    The kernel releases an flock when its process ends, however it ends, so a killed run never leaves it held."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another run is training in {directory}/ (it holds {directory}/.lock)") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
