"""A throwaway PostgreSQL server for tune.py's workers, in the tests and benchmarks/tune_workers.py: initdb into a
temporary folder, the server listening on a free port of 127.0.0.1 (and a Unix socket in that folder), one
database made with createdb; the server stopped and the folder removed when the block ends, however it ends.

    with throwaway_server() as url:   # postgresql://tune@127.0.0.1:PORT/tuning
        ...

PostgreSQL refuses to run as root, so under root (as CI runs) its programs run as the user postgres, which
Debian's package makes (else nobody), and the folder is theirs.
"""
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

USER, DATABASE = "tune", "tuning"


class NoPostgres(Exception):
    """PostgreSQL's server programs are not installed."""


def server_programs():
    """The directory of initdb and pg_ctl: on the PATH, or where Debian puts them (/usr/lib/postgresql/VERSION/bin,
    the newest); raises NoPostgres where there is neither."""
    on_path = shutil.which("initdb")
    if on_path:
        return os.path.dirname(os.path.realpath(on_path))  # a link on the PATH: createdb lives beside its target
    debians = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    if not debians:
        raise NoPostgres("PostgreSQL's initdb is not installed (Debian: apt-get install postgresql)")
    return os.path.dirname(debians[-1])


def server_user():
    """Who runs the server: this process's user, or, under root, postgres (else nobody)."""
    if os.geteuid() != 0:
        return None
    names = {entry.pw_name for entry in pwd.getpwall()}
    return "postgres" if "postgres" in names else "nobody"


def run(command, user=None):
    """Run a PostgreSQL program (as `user`, if given) -> its output; a failure raises with what it said."""
    command = ["runuser", "-u", user, "--", *command] if user else command
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return done.stdout


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def throwaway_server():
    """A fresh PostgreSQL server and database, for the block -> its URL, postgresql://tune@127.0.0.1:PORT/tuning."""
    programs, user = server_programs(), server_user()
    folder = tempfile.mkdtemp(prefix="postgres-")  # under /tmp: short enough for the socket's path
    data, port = os.path.join(folder, "data"), free_port()
    try:
        if user:
            shutil.chown(folder, user)
        run([f"{programs}/initdb", "--pgdata", data, "--username", USER, "--auth", "trust", "--no-sync"], user)
        # No fsync: the server and its data live for one test.
        run([f"{programs}/pg_ctl", "--pgdata", data, "--log", os.path.join(folder, "server.log"), "--wait", "start",
             "--options", f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=50"], user)
        run([f"{programs}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE])
        yield f"postgresql://{USER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            run([f"{programs}/pg_ctl", "--pgdata", data, "--mode", "immediate", "--wait", "stop"], user)
        shutil.rmtree(folder, ignore_errors=True)
