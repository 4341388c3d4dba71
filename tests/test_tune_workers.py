"""tune.py's workers on one study in a real PostgreSQL server (benchmarks/postgres.py starts a throwaway one):
`--workers 2` shares the trials out, none runs twice, both workers finish trials, the search ends with exactly the
trials asked for, and a worker killed with SIGKILL mid-trial has its trial failed after the heartbeat's grace
period and its params run again by the other."""
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from benchmarks.postgres import NoPostgres, throwaway_server

REPO = Path(__file__).resolve().parents[1]
TRIALS = 5
# Tiny trials (100 real rows, 1 epoch) and a lost worker noticed within seconds.
WORKERS = ["--workers", "2", "--trials", str(TRIALS), "--rows", "100", "--max_n_epochs", "1",
           "--heartbeat_interval", "1", "--grace_period", "3", "--no-report"]


@pytest.fixture(scope="module")
def postgres_url():
    try:
        with throwaway_server() as url:
            yield url
    except NoPostgres as missing:
        pytest.skip(f"no PostgreSQL server to test against: {missing}")


def trials_of(storage, study):
    try:
        return optuna.load_study(study_name=study, storage=storage).trials
    except KeyError:  # not created yet
        return []


def second_trial_of_a_worker(trials):
    """The pid of a worker training its second trial (its network drawn), its first finished, or None."""
    workers = [t.user_attrs.get("worker") for t in trials]
    for trial in trials:
        worker = trial.user_attrs.get("worker")
        if trial.state == TrialState.RUNNING and "params" in trial.user_attrs and workers.count(worker) == 2 and any(
                t.state == TrialState.COMPLETE and t.user_attrs.get("worker") == worker for t in trials):
            return int(worker.rsplit(":", 1)[1])
    return None


@pytest.fixture(scope="module")
def search_with_a_worker_killed(postgres_url, tmp_path_factory):
    """`python tune.py --workers 2` on a study in the server; the first worker to start its second trial is killed
    with SIGKILL there. -> (tune.py's exit code, what it printed, the study's trials, the killed pid)."""
    workdir = tmp_path_factory.mktemp("workers")
    with open(workdir / "output", "w") as output:  # a file, not a pipe that a wait could leave full
        tune = subprocess.Popen([sys.executable, str(REPO / "tune.py"), "--storage", postgres_url, "--study",
                                 "workers", *WORKERS], cwd=workdir, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)
    # One storage for all the looks: each would open connections of its own, and the server has 50.
    storage = optuna.storages.RDBStorage(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    killed, give_up = None, time.time() + 180
    try:
        while killed is None and tune.poll() is None and time.time() < give_up:
            killed = second_trial_of_a_worker(trials_of(storage, "workers"))
            if killed:
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):  # then tune.py is killed below: exit code -9
            tune.wait(timeout=max(1, give_up - time.time()))
    finally:  # tune.py and its workers, if they are still there
        with contextlib.suppress(ProcessLookupError):
            os.killpg(tune.pid, signal.SIGKILL)
    tune.wait()
    trials = trials_of(storage, "workers")
    storage.engine.dispose()
    return tune.returncode, (workdir / "output").read_text(), trials, killed


def test_the_search_ends_with_exactly_the_finished_trials_asked_for(search_with_a_worker_killed):
    code, output, trials, _ = search_with_a_worker_killed
    assert code == 0, output
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == TRIALS
    assert [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)] == []


def test_no_params_are_run_twice(search_with_a_worker_killed):
    _, _, trials, _ = search_with_a_worker_killed
    finished = [t.params for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == len({tuple(sorted(params.items())) for params in finished})


def test_both_workers_finish_trials(search_with_a_worker_killed):
    _, _, trials, killed = search_with_a_worker_killed
    workers = {t.user_attrs["worker"] for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    assert len(workers) == 2 and any(worker.endswith(f":{killed}") for worker in workers)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # retried_trial_number, Optuna's own
def test_a_worker_killed_mid_trial_has_its_trial_failed_and_run_again_by_the_other(search_with_a_worker_killed):
    code, output, trials, killed = search_with_a_worker_killed
    assert killed, output
    (lost,) = [t for t in trials if t.state == TrialState.FAIL and "params" in t.user_attrs]  # not one unrun
    assert lost.user_attrs["worker"].endswith(f":{killed}")
    (again,) = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == lost.number]
    assert again.state in (TrialState.COMPLETE, TrialState.PRUNED) and again.params == lost.params
    assert not again.user_attrs["worker"].endswith(f":{killed}")
    assert f"ended with signal {signal.SIGKILL.value}" in output
