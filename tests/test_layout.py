"""Where things live: the product's modules import downwards only, nothing imports the driver run.py, the networks
import no training loop or data loader, training imports no photo command line, every function reads in one
screen, every script's settings explain themselves in --help, every traced function is train.graph_function's,
and comments explain rather than log (the figures and the machines they were measured on live in docs/)."""
import ast
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

import flags

REPO = Path(__file__).resolve().parents[1]
PRODUCT = sorted(path for path in [*REPO.glob("*.py"), *REPO.glob("benchmarks/*.py")])
MODULES = {path.stem for path in REPO.glob("*.py")}
SCRIPTS = ["run.py", "tune.py", "experiments.py", "report.py", "predict.py", "serve.py", "benchmarks/speed.py",
           "benchmarks/time_to_accuracy.py", "benchmarks/holdout.py", "benchmarks/hardest.py",
           "benchmarks/serve_load.py", "benchmarks/tune_workers.py"]
MOST_LINES, MOST_PARAMETERS = 60, 8
# What a lab notebook says and a comment should not: the machine a figure was measured on, holdout folds and their
# error counts, speed-ups measured "here", and the history of a choice. Instruction-set names (AVX512, AMX) are
# what code checks for, not machines.
LOG_WORDS = re.compile(r"\b(EPYC|Xeon|Graviton|Threadripper|Ryzen|Opteron|Core i[3579]|Apple M\d)\b"
                       r"|\bholdout folds?\b|\bfolds? \d|\b\d[\d,]* (errors|mistakes)\b"
                       r"|\d+(\.\d+)?x (faster|slower)|(faster|slower) (here|on this)|\bpeaked at\b"
                       r"|\bstops? (before|ago)\b|\bseed fix\b|\balways (has|had|was|did)\b")


def comments_and_docstrings(path):
    """(line, text) of every comment and docstring of a file."""
    with open(path) as source:
        for token in tokenize.generate_tokens(source.readline):
            if token.type == tokenize.COMMENT:
                yield token.start[0], token.string
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and ast.get_docstring(node):
            yield node.body[0].lineno, ast.get_docstring(node)


def imported_by(names):
    """The project's modules that importing these brings in, directly or through one another."""
    graph = {path.stem: project_imports(path) for path in REPO.glob("*.py")}
    reached, waiting = set(), list(names)
    while waiting:
        name = waiting.pop()
        if name not in reached:
            reached.add(name)
            waiting += graph[name]
    return reached - set(names)


def project_imports(path):
    """The project's own modules that the file imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names & MODULES


def functions(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_module_imports_the_driver_run_py():
    importers = [path.name for path in [*PRODUCT, *REPO.glob("tests/*.py")] if "run" in project_imports(path)]
    assert importers == []


def test_the_product_modules_import_one_another_without_a_circle():
    graph = {path.stem: project_imports(path) for path in REPO.glob("*.py")}

    def reaches(start, goal, seen=()):
        return any(name == goal or (name not in seen and reaches(name, goal, (*seen, name))) for name in graph[start])

    circles = [name for name in graph if reaches(name, name)]
    assert circles == []


def test_the_networks_import_neither_the_training_loop_nor_the_data_loader():
    """model.py is the networks alone: the recipes that train them (recipes.py) and the data are others' to know."""
    assert imported_by(["model"]) & {"train", "data"} == set()


def test_training_imports_no_photo_command_line():
    """The trainer reads letters for outlier exposure (letters.py), made as photos' digits are (photo.py), without
    predict.py's command line."""
    assert "predict" not in imported_by(["train", "letters"])


@pytest.mark.parametrize("path", sorted(REPO.glob("*.py")), ids=lambda path: path.name)
def test_no_product_comment_logs_machines_folds_error_counts_or_history(path):
    logged = [f"{path.name}:{line}: {match.group(0)!r}" for line, text in comments_and_docstrings(path)
              for match in [LOG_WORDS.search(text)] if match]
    assert logged == []


def test_every_traced_function_goes_through_graph_function():
    """train.graph_function is the one tf.function: without AutoGraph, a run is safe from its source being edited."""
    uses = [f"{path.name}:{node.lineno}" for path in PRODUCT for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and node.attr == "function" and getattr(node.value, "id", "") == "tf"]
    assert len(uses) == 1 and uses[0].startswith("train.py:"), uses


@pytest.mark.parametrize("path", PRODUCT, ids=lambda path: path.name)
def test_every_product_function_reads_in_one_screen(path):
    too_long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in functions(path)
                if node.end_lineno - node.lineno + 1 > MOST_LINES]
    assert too_long == []


@pytest.mark.parametrize("path", PRODUCT, ids=lambda path: path.name)
def test_no_product_function_takes_more_than_eight_parameters(path):
    def count(arguments):
        return len(arguments.posonlyargs) + len(arguments.args) + len(arguments.kwonlyargs) \
            + bool(arguments.vararg) + bool(arguments.kwarg) - bool(arguments.args and arguments.args[0].arg == "self")

    too_many = [f"{node.name} ({count(node.args)})" for node in functions(path) if count(node.args) > MOST_PARAMETERS]
    assert too_many == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_setting_of_every_script_says_what_it_means(script):
    unexplained = [name for name, comment in flags.configuration_block(REPO / script).items()
                   if not comment and name.lower() == name]  # CAPITALS name constants of the search space
    assert unexplained == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_prints_its_settings_with_help(script):
    result = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-300:]
    settings = [name for name in flags.configuration_block(REPO / script) if name.lower() == name]
    assert [name for name in settings if f"--{name}" not in result.stdout] == []


def test_training_a_tuned_network_imports_no_tuner(tmp_path):
    from conftest import write_rows
    write_rows("train", 200, tmp_path / "train.csv")
    write_rows("test", 10, tmp_path / "test.csv")
    (tmp_path / "best_params.json").write_text('{"filters": [8, 8], "kernel_sizes": [3, 3], "units": [16], '
                                               '"dropout_rate": 0.1, "optimizer": "adam", "learning_rate": 0.001, '
                                               '"batch_size": 64}')
    result = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "run.py"), "--params", "best_params.json",
                             "--max_n_epochs", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "tune" not in imported and "optuna" not in imported
    assert "model" in imported  # the measure sees the project's modules
