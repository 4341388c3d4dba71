"""files.py: what a crash, kill -9 or a second run leaves behind."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import files
from conftest import run_py, write_rows

REPO = Path(__file__).resolve().parents[1]


class Crash(Exception):
    pass


def test_atomic_open_replaces_the_file_only_once_it_is_complete(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text("old")
    with pytest.raises(Crash):
        with files.atomic_open(path) as file:
            file.write("half of the new")
            raise Crash
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["submission.csv"]  # no temporary file left behind
    files.write_text(path, "new")
    assert path.read_text() == "new"


def test_replace_directory_keeps_the_old_version_until_the_new_one_is_complete(tmp_path):
    def version(text, crash=False):
        def write(new):
            os.makedirs(new)
            Path(new, "saved_model.pb").write_text(text)
            if crash:
                raise Crash
        return write

    path = tmp_path / "saved_model"
    files.replace_directory(version("first"), path)
    with pytest.raises(Crash):
        files.replace_directory(version("second", crash=True), path)
    assert (path / "saved_model.pb").read_text() == "first"
    assert sorted(os.listdir(tmp_path)) == ["saved_model", "saved_model.1"]  # the crashed one's half: gone at once
    files.replace_directory(version("third"), path)
    assert (path / "saved_model.pb").read_text() == "third"
    assert sorted(os.listdir(tmp_path)) == ["saved_model", "saved_model.2"]  # the first: gone once the third is in


def test_a_directory_from_before_versions_is_replaced(tmp_path):
    path = tmp_path / "saved_model"
    path.mkdir()
    (path / "old.pb").write_text("old")
    files.replace_directory(lambda new: os.makedirs(new), path)
    assert path.is_symlink() and not (path / "old.pb").exists()


HOLD_LOCK = "import files, sys, time\nwith files.exclusive_lock(sys.argv[1]):\n    print('held', flush=True)\n" \
            "    time.sleep(600)\n"


def hold_lock_in_another_process(directory):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(directory)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_exclusive_lock_refuses_while_another_process_holds_it_and_frees_when_that_process_is_killed(tmp_path):
    holder = hold_lock_in_another_process(tmp_path)
    with pytest.raises(files.Busy, match="another run is training in"):
        with files.exclusive_lock(tmp_path):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with files.exclusive_lock(tmp_path):  # a killed run leaves nothing held
        pass


def test_a_second_run_in_a_folder_where_one_is_training_refuses_in_one_line(tmp_path):
    write_rows("train", 300, tmp_path / "train.csv")
    write_rows("test", 20, tmp_path / "test.csv")
    (tmp_path / "submission.csv").write_text("the first run's")
    holder = hold_lock_in_another_process(tmp_path / "model")
    try:
        result = run_py(["--max_n_epochs", "1"], cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: another run is training in model/")
    assert sorted(os.listdir(tmp_path / "model")) == [".lock"]  # it wrote nothing there
    assert (tmp_path / "submission.csv").read_text() == "the first run's"


@pytest.fixture(scope="module")
def killed_while_saving(tmp_path_factory):
    """A run killed with SIGKILL the moment it reports its second epoch: it is saving that epoch's checkpoints
    (the first epoch's are whole: a run killed before it saved any has nothing to resume) and about to go on.
    -> its folder."""
    workdir = tmp_path_factory.mktemp("killed")
    write_rows("train", 600, workdir / "train.csv")
    write_rows("test", 20, workdir / "test.csv")
    run = subprocess.Popen([sys.executable, str(REPO / "run.py"), "--max_n_epochs", "3", "--batch_size", "32"],
                           cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in run.stdout:
        if line.startswith("epoch   2/3"):
            run.send_signal(signal.SIGKILL)
            break
    run.wait(timeout=600)
    assert run.returncode == -signal.SIGKILL
    return workdir


def test_a_run_killed_while_saving_can_be_resumed(killed_while_saving):
    result = run_py(["--max_n_epochs", "3", "--batch_size", "32", "--resume"], cwd=killed_while_saving)
    assert result.returncode == 0, result.stderr
    assert "epoch   3/3" in result.stdout and (killed_while_saving / "submission.csv").exists()
    assert "resuming" in result.stdout  # from the epoch it saved, or saying it saved none yet


def test_a_fresh_run_starts_over_in_the_folder_of_a_killed_one(killed_while_saving):
    result = run_py(["--max_n_epochs", "1", "--batch_size", "32"], cwd=killed_while_saving)
    assert result.returncode == 0, result.stderr
    assert "resuming" not in result.stdout and "epoch   1/1" in result.stdout
