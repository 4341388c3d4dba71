"""A full disk: every writer meets it the same way. What was there before stays as it was, nothing half-written is
left behind, one line says what could not be written and where (files.DiskFull), the scripts exit non-zero, and
once space is freed the work goes on (run.py --resume).

Each test runs on a real full disk where one can be made (a small tmpfs, mounted by root), and on a simulated one
everywhere: the writers themselves fail as they do on a full disk, TensorFlow's after leaving what it leaves there
(a checkpoint's or a SavedModel's half-written '_temp' directory) with its ResourceExhaustedError."""
import errno
import os
import re
import runpy
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import files
import train
from conftest import write_rows
from model import DigitNet

REPO = Path(__file__).resolve().parents[1]
MB = 2 ** 20
DISK_SIZE = 48 * MB  # the tmpfs: room for a run's data, checkpoints (3.8 MB each for DigitNet) and SavedModel
ROOM_FOR_SMALL_FILES = 1 * MB  # what `fill` leaves by default: JSON, logs and pictures fit, a checkpoint does not
BIG = ("checkpoints", "saved_models")  # what the simulated disk refuses when it has room for small files alone


class TmpfsDisk:
    """A real filesystem of DISK_SIZE at `path`, filled up to a given room by a file of zeros."""

    def __init__(self, path):
        self.path, self.filler = path, path / "filler"

    def fill(self, leaving=ROOM_FOR_SMALL_FILES, refusing=BIG):
        """Leave `leaving` bytes free (`refusing` says what the simulated disk refuses instead)."""
        self.free()
        status = os.statvfs(self.path)
        with open(self.filler, "wb") as file:
            file.write(b"\0" * max(0, status.f_bavail * status.f_frsize - leaving))

    def free(self):
        self.filler.unlink(missing_ok=True)


def tensorflow_out_of_space(where):
    return tf.errors.ResourceExhaustedError(None, None, f"{where}; {os.strerror(errno.ENOSPC)}")


class SimulatedDisk:
    """tmp_path, on which the writers given to `fill` fail as on a full disk: Python's files ("files": at their
    fsync, atomic_open's last step before the rename), TensorFlow's checkpoints, SavedModels and TensorBoard logs
    (after leaving the '_temp' directory of a write cut short, as TensorFlow does)."""

    def __init__(self, path):
        self.path, self.patches = path, pytest.MonkeyPatch()

    def fill(self, leaving=ROOM_FOR_SMALL_FILES, refusing=BIG):
        self.free()
        if "files" in refusing:
            def fsync(descriptor):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.patches.setattr(os, "fsync", fsync)
        if "checkpoints" in refusing:
            def save(manager, checkpoint_number=None, **_):
                return self.cut_short(f"{manager.directory}/ckpt-{int(checkpoint_number)}_temp")
            self.patches.setattr(tf.train.CheckpointManager, "save", save)
        if "saved_models" in refusing:
            self.patches.setattr(tf.saved_model, "save", lambda obj, export_dir, **_: self.cut_short(
                f"{export_dir}/variables/variables_temp"))
        if "study" in refusing:  # SQLite's words, through SQLAlchemy, under the error Optuna's storage raises
            import sqlite3

            import optuna
            import sqlalchemy

            def create_new_trial(*_, **__):
                try:
                    raise sqlalchemy.exc.OperationalError("INSERT INTO trials", {},
                                                          sqlite3.OperationalError("database or disk is full"))
                except sqlalchemy.exc.OperationalError as error:
                    raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") \
                        from error
            self.patches.setattr(optuna.storages.RDBStorage, "_create_new_trial", create_new_trial)
        if "logs" in refusing:
            def create_file_writer(logdir, **_):
                raise tensorflow_out_of_space(f"{logdir}/events.out.tfevents")
            self.patches.setattr(tf.summary, "create_file_writer", create_file_writer)

    @staticmethod
    def cut_short(temporary):
        os.makedirs(temporary, exist_ok=True)
        part = f"{temporary}/part-00000-of-00001.data-00000-of-00001.tempstate{uuid.uuid4().int % 10 ** 19}"
        Path(part).write_bytes(b"\0" * 1000)
        raise tensorflow_out_of_space(part)

    def free(self):
        self.patches.undo()


@pytest.fixture(params=["tmpfs", "simulated"])
def disk(request, tmp_path):
    if request.param == "simulated":
        simulated = SimulatedDisk(tmp_path)
        yield simulated
        simulated.free()
        return
    path = tmp_path / "disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(path)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("no tmpfs can be mounted here (it takes root): the simulated full disk stands in")
    try:
        yield TmpfsDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def everything_in(directory, leaving_out=("filler",)):
    """{relative path: its bytes (None for a directory), or its target for a symbolic link} under directory."""
    found = {}
    for root, directories, names in os.walk(directory):
        for name in directories + names:
            path = Path(root, name)
            relative = str(path.relative_to(directory))
            if relative.split(os.sep)[0] in leaving_out:
                continue
            found[relative] = (os.readlink(path) if path.is_symlink()
                               else None if path.is_dir() else path.read_bytes())
    return found


def half_written(directory):
    """The names that a write cut short leaves: TensorFlow's _temp and tempstate files, atomic_open's and
    replace_directory's temporaries, SQLite's journal."""
    return [name for name in everything_in(directory)
            if any(mark in name for mark in ("_temp", "tempstate", ".tmp", ".link", "-journal"))]


# ---- the writers --------------------------------------------------------------------------------------------

def test_a_file_that_meets_a_full_disk_is_left_as_it_was_and_no_temporary_file_stays(disk):
    path = disk.path / "submission.csv"
    files.write_text(path, "ImageId,Label\n1,7\n")
    disk.fill(leaving=0, refusing=("files",))
    with pytest.raises(files.DiskFull) as full:
        files.write_text(path, "ImageId,Label\n" + "1,1\n" * 100_000)
    assert str(full.value).startswith(f"cannot write {path}: no space left on the disk mounted at /")
    assert path.read_text() == "ImageId,Label\n1,7\n"
    assert half_written(disk.path) == []


def test_a_saved_model_that_meets_a_full_disk_leaves_the_previous_one_whole_and_nothing_of_its_own(disk):
    import ensemble
    images, labels = np.random.default_rng(0).random([200, 28, 28, 1], np.float32), np.arange(200) % 10
    path = disk.path / "model" / "saved_model"
    ensemble.export_saved_model([DigitNet(seed=1)], str(path), images, labels)
    before = everything_in(disk.path)
    disk.fill()
    with pytest.raises(files.DiskFull, match=f"^cannot write {path}: no space left on the disk mounted at /"):
        ensemble.export_saved_model([DigitNet(seed=2)], str(path), images, labels)
    assert everything_in(disk.path) == before and half_written(disk.path) == []


def train_on_the_disk(real_digits, disk, max_n_epochs, resume=False):
    images, labels = real_digits
    recipe = train.Recipe(max_n_epochs=max_n_epochs, patience=10, batch_size=32, learning_rate=1e-3)
    options = train.RunOptions(checkpoint_dir=str(disk.path / "model"), resume=resume, verbose=False)
    return train.train(DigitNet(seed=1), (images[:64], labels[:64], images[64:96], labels[64:96]), recipe, 0, options)


def test_a_checkpoint_that_meets_a_full_disk_leaves_the_previous_one_and_nothing_of_its_own(real_digits, disk):
    train_on_the_disk(real_digits, disk, max_n_epochs=1)
    before = everything_in(disk.path)
    disk.fill()
    with pytest.raises(files.DiskFull) as full:
        train_on_the_disk(real_digits, disk, max_n_epochs=2, resume=True)
    # the best checkpoint is saved first, if the epoch is the best so far; else the latest
    assert re.match(rf"cannot write {disk.path}/model/(best|latest) \(the \1 checkpoint\): no space left on the disk "
                    "mounted at /", str(full.value)), full.value
    assert everything_in(disk.path) == before and half_written(disk.path) == []
    disk.free()  # and once there is room again, the run goes on where it was
    history = train_on_the_disk(real_digits, disk, max_n_epochs=2, resume=True)
    assert [record["epoch"] for record in history] == [1, 2]


# ---- the scripts --------------------------------------------------------------------------------------------

def previous_outputs(directory):
    """What an earlier run left: a submission and a SavedModel (a stand-in, as replace_directory swaps it in)."""
    (directory / "submission.csv").write_text("ImageId,Label\n1,7\n")
    files.replace_directory(lambda new: (os.makedirs(new), Path(new, "saved_model.pb").write_text("earlier")),
                            directory / "model" / "saved_model")


def run_py_in(directory, args, capsys, monkeypatch):
    """python run.py ARGS in directory, as a user runs it, but in this process, where the simulated disk's writers
    are -> (its exit code, its stdout, its stderr)."""
    monkeypatch.chdir(directory)
    monkeypatch.setattr(sys, "argv", ["run.py", *args])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO / "run.py"), run_name="__main__")
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


RUN = ["--max_n_epochs", "1", "--batch_size", "64", "--no-mixed_precision"]


def test_run_py_on_a_full_disk_says_in_one_line_what_it_could_not_write_and_keeps_the_previous_outputs(
        disk, capsys, monkeypatch):
    write_rows("train", 200, disk.path / "train.csv")
    write_rows("test", 20, disk.path / "test.csv")
    previous_outputs(disk.path)
    before = everything_in(disk.path, leaving_out=("filler", "tf_logs"))
    disk.fill()
    code, _, stderr = run_py_in(disk.path, RUN, capsys, monkeypatch)
    assert code == 1
    assert stderr.splitlines() == [
        f"error: cannot write model/best (the best checkpoint): no space left on the disk mounted at "
        f"{files.mount_point(disk.path)}; what was there before is as it was: free some space, then run the same "
        "command again"]
    after = everything_in(disk.path, leaving_out=("filler", "tf_logs"))
    assert {name: after[name] for name in before} == before  # the submission, the SavedModel
    assert half_written(disk.path) == []
    disk.free()
    assert run_py_in(disk.path, RUN, capsys, monkeypatch)[0] == 0


def test_after_a_full_disk_stopped_the_export_resume_writes_the_outputs_without_training_again(
        tmp_path, capsys, monkeypatch):
    write_rows("train", 200, tmp_path / "train.csv")
    write_rows("test", 20, tmp_path / "test.csv")
    previous_outputs(tmp_path)
    disk = SimulatedDisk(tmp_path)  # a real disk with room for checkpoints but not a SavedModel was tried by hand
    disk.fill(refusing=("saved_models",))
    code, stdout, stderr = run_py_in(tmp_path, RUN, capsys, monkeypatch)
    assert code == 1 and "epoch   1/1" in stdout
    assert stderr.splitlines() == [
        f"error: cannot write model/saved_model: no space left on the disk mounted at {files.mount_point(tmp_path)}; "
        f"what was there before is as it was: free some space, then python run.py {' '.join(RUN)} --resume"]
    assert (tmp_path / "model" / "saved_model" / "saved_model.pb").read_text() == "earlier"
    assert (tmp_path / "submission.csv").read_text() == "ImageId,Label\n1,7\n" and half_written(tmp_path) == []
    disk.free()
    code, stdout, stderr = run_py_in(tmp_path, [*RUN, "--resume"], capsys, monkeypatch)
    assert code == 0, stderr
    assert "resuming after epoch 1, step 0" in stdout and "epoch   1/1" not in stdout
    assert (tmp_path / "submission.csv").read_text().count("\n") == 21


def test_predict_py_show_on_a_full_disk_reads_the_picture_and_says_in_one_line_what_it_could_not_write(
        disk, capsys, monkeypatch):
    import predict
    from PIL import Image, ImageDraw

    def sure_of_a_seven(pictures):  # the model, replaced: this is about the file --show writes
        probabilities = np.full((len(pictures), 10), 0.01, np.float32)
        probabilities[:, 7] = 0.91
        return {"probabilities": probabilities, "novelty": np.zeros(len(pictures), np.float32)}

    monkeypatch.setattr(predict, "load_classifier", lambda: sure_of_a_seven)
    monkeypatch.chdir(disk.path)
    (disk.path / "model" / "saved_model").mkdir(parents=True)
    (disk.path / "model" / "saved_model" / "saved_model.pb").write_text("a stand-in")
    seven = Image.new("L", (300, 220), 255)
    ImageDraw.Draw(seven).line([(100, 40), (210, 40), (140, 190)], fill=0, width=16, joint="curve")
    seven.save(disk.path / "seven.png")
    disk.fill(leaving=0, refusing=("files",))
    code = predict.main(["--show", "seven.png"])
    captured = capsys.readouterr()
    assert code != 0 and captured.out.startswith("seven.png: 7  (7 0.91")  # the reading is printed all the same
    assert captured.err.splitlines() == [
        f"error: cannot write seven.mnist.png: no space left on the disk mounted at {files.mount_point(disk.path)}"]
    assert not (disk.path / "seven.mnist.png").exists() and half_written(disk.path) == []


def test_report_py_on_a_full_disk_says_in_one_line_what_it_could_not_write_and_keeps_the_previous_report(
        real_digits, disk, capsys, monkeypatch):
    import report
    write_rows("train", 200, disk.path / "train.csv")
    train_on_the_disk(real_digits, disk, max_n_epochs=1)
    files.write_json(disk.path / "model" / "settings.json", dict(model="digitnet", params="", dropout_rate=0.25,
                                                                 seed=42, percent_data_for_training=90))
    (disk.path / "resources").mkdir()
    (disk.path / "resources" / "report.md").write_text("the previous report")
    monkeypatch.chdir(disk.path)
    disk.fill(leaving=0, refusing=("files",))
    code = report.main([])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines() == [
        f"error: cannot write resources/report.md: no space left on the disk mounted at "
        f"{files.mount_point(disk.path)}"]
    assert (disk.path / "resources" / "report.md").read_text() == "the previous report"
    assert half_written(disk.path) == []


def one_made_up_trial(study, digits, config):
    """tune.search's stand-in: one finished trial, made up (these tests are about what tune.py writes)."""
    import optuna
    params = dict(filters=[32, 64], kernel_sizes=[3, 3], units=[64], dropout_rate=0.1, optimizer="adam",
                  learning_rate=1e-3, batch_size=64)
    study.add_trial(optuna.trial.create_trial(value=0.9, params={}, distributions={}, user_attrs={"params": params}))


def tune_once(disk, monkeypatch, storage):
    """tune.py run once in the disk's folder, its study in `storage`, with one made-up trial -> (tune, its
    arguments), for running it again on the full disk."""
    import tune
    monkeypatch.setattr(tune, "search", one_made_up_trial)
    monkeypatch.chdir(disk.path)
    write_rows("train", 200, disk.path / "train.csv")
    tuning = ["--rows", "200", "--storage", storage]
    assert tune.main(tuning) == 0
    return tune, tuning


def test_tune_py_on_a_full_disk_says_in_one_line_what_it_could_not_write(tmp_path, disk, capsys, monkeypatch):
    tune, tuning = tune_once(disk, monkeypatch, f"sqlite:///{tmp_path}/tuning.db")  # the study elsewhere
    previous = everything_in(disk.path / "resources")
    capsys.readouterr()
    disk.fill(leaving=0, refusing=("files",))
    code = tune.main(tuning)
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines() == [
        f"error: cannot write resources/tuning.md: no space left on the disk mounted at "
        f"{files.mount_point(disk.path)}"]
    assert everything_in(disk.path / "resources") == previous and half_written(disk.path) == []


def test_tune_py_with_its_study_on_a_full_disk_says_so_in_one_line_and_keeps_the_trials_it_had(disk, capsys,
                                                                                                 monkeypatch):
    import optuna
    study = disk.path / "model" / "tuning.db"
    tune, tuning = tune_once(disk, monkeypatch, f"sqlite:///{study}")
    capsys.readouterr()

    def trials():
        return [(t.number, t.state, t.value) for t in optuna.load_study(study_name=tune.study,
                                                                        storage=f"sqlite:///{study}").trials]
    before = trials()
    disk.fill(leaving=0, refusing=("study",))
    code = tune.main(tuning)
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines() == [
        f"error: cannot write {study} (the study): no space left on the disk mounted at "
        f"{files.mount_point(disk.path)}"]
    disk.free()
    assert trials() == before and half_written(disk.path) == []
