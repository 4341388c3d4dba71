"""Do two tune.py workers on one study finish a search in less time than one? Each worker is held to one core of
this machine, standing in for a machine of its own; the study lives in a throwaway PostgreSQL server
(benchmarks/postgres.py), as on several machines.

    python benchmarks/tune_workers.py            # 16 trials of 2,000 digits and 1 epoch, one worker then two
    python benchmarks/tune_workers.py --quick    # a smoke run of 4 tiny trials; its numbers mean nothing

Both searches run the same trials: the benchmark queues `--trials` networks drawn once from tune.py's search space
(seeded), and each worker takes the next queued one. Measured for each: the search's seconds, from the first
trial's start to the last trial's end as the study records them, and the wall seconds from the workers' launch to
their exit (which adds each worker's start-up, loading TensorFlow and the digits, and the up to 10 s, tune.py's
heartbeat_interval, that a worker with no trial left waits before it sees the search done), and the seconds the
trials took, added up: the same work, so two workers on free cores take as long as one, and more where other
programs share the cores. The target is two workers in at most 0.6 of one worker's search seconds. Prints a table
and writes benchmarks/results/tune_workers.json.
"""
# ---- settings: each is also a flag, e.g. --trials 20 ----
trials = 16              # trials in each search
rows = 2000              # train.csv rows each trial uses
max_n_epochs = 1         # per trial
seed = 42                # the networks drawn
out = ""                 # the JSON's path (relative to the repo); default: benchmarks/results/tune_workers.json,
                         # or tune_workers_quick.json with --quick: a smoke run never overwrites one
quick = False            # a smoke run: 4 trials of 100 rows
# ------------------------------------------------------------------------------
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import flags  # noqa: E402  (the repo's modules are importable only from here on)

parser = flags.settings_parser(globals())
globals().update(vars(parser.parse_args()))
if quick:
    trials, rows = 4, 100
    print("quick: a smoke run of 4 trials on 100 rows; its numbers mean nothing", flush=True)
if len(os.sched_getaffinity(0)) < 2:
    parser.error("two workers need two cores, and this process may use only one")

import optuna  # noqa: E402

import files  # noqa: E402
import tune  # noqa: E402
from benchmarks.postgres import throwaway_server  # noqa: E402

CORES = sorted(os.sched_getaffinity(0))[:2]
optuna.logging.set_verbosity(optuna.logging.WARNING)  # its studies are the benchmark's own business
load_at_start = os.getloadavg()[0]


def drawn_networks():
    """`trials` points of tune.py's search space, drawn by a seeded random sampler: the same for both searches."""
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    networks = []
    for _ in range(trials):
        trial = draws.ask()
        tune.suggest_params(trial)
        networks.append(trial.params)
    return networks


def search(url, n_workers):
    """A new study in url with the drawn networks queued, searched by n_workers workers, each on a core of its own
    -> {"workers", "cores", "search_seconds", "wall_seconds", "trials_by_worker"}."""
    name = f"workers-{n_workers}"
    study = optuna.create_study(storage=url.replace("postgresql://", "postgresql+psycopg://"), study_name=name,
                                direction="maximize")
    for params in NETWORKS:
        study.enqueue_trial(params)
    command = [sys.executable, str(REPO / "tune.py"), "--storage", url, "--study", name, "--trials", str(trials),
               "--rows", str(rows), "--max_n_epochs", str(max_n_epochs), "--no-report"]
    start = time.time()
    workers = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, env=tune.WORKER_ENVIRONMENT,
                                preexec_fn=lambda core=core: os.sched_setaffinity(0, {core}))
               for core in CORES[:n_workers]]
    if any(worker.wait() for worker in workers):
        sys.exit(f"a worker of the {n_workers}-worker search failed")
    wall_seconds = time.time() - start
    done = [t for t in study.get_trials(deepcopy=False) if t.state in tune.FINISHED]
    search_seconds = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    by_worker = sorted(sum(t.user_attrs["worker"] == w for t in done) for w in {t.user_attrs["worker"] for t in done})
    trial_seconds = sum(t.duration.total_seconds() for t in done)
    print(f"{n_workers} worker(s) on core(s) {CORES[:n_workers]}: {len(done)} trials in {search_seconds:.1f} s of "
          f"search, {wall_seconds:.1f} s wall, {trial_seconds:.1f} s in trials (trials per worker: {by_worker})",
          flush=True)
    return dict(workers=n_workers, cores=CORES[:n_workers], search_seconds=search_seconds, wall_seconds=wall_seconds,
                trial_seconds=trial_seconds, trials_by_worker=by_worker)


NETWORKS = drawn_networks()
with throwaway_server() as server:
    runs = [search(server, 1), search(server, 2)]
search_ratio = runs[1]["search_seconds"] / runs[0]["search_seconds"]
wall_ratio = runs[1]["wall_seconds"] / runs[0]["wall_seconds"]

print(f"\n{trials} trials of {rows} rows and {max_n_epochs} epoch(s); each worker held to one core; load average "
      f"{load_at_start:.1f} at the start")
print(f"{'workers':>7} {'search (s)':>11} {'wall (s)':>9} {'in trials (s)':>14}   trials per worker")
for run in runs:
    print(f"{run['workers']:>7} {run['search_seconds']:>11.1f} {run['wall_seconds']:>9.1f} "
          f"{run['trial_seconds']:>14.1f}   {run['trials_by_worker']}")
print(f"two workers / one: {search_ratio:.2f} of the search time (target: at most 0.6), {wall_ratio:.2f} of the wall "
      f"time; the same trials took {runs[1]['trial_seconds'] / runs[0]['trial_seconds']:.2f} times as long to train "
      f"(1 where the two cores are free)")

results = dict(
    settings=dict(trials=trials, rows=rows, max_n_epochs=max_n_epochs, seed=seed, quick=quick),
    machine=dict(cores=len(os.sched_getaffinity(0)), load_average_at_start=load_at_start,
                 optuna=optuna.__version__),
    runs=runs, search_ratio=search_ratio, wall_ratio=wall_ratio, target_ratio=0.6,
)
path = REPO / (out or f"benchmarks/results/tune_workers{'_quick' if quick else ''}.json")
files.write_text(path, json.dumps(results, indent=2) + "\n")
print(f"written: {path}")
