"""experiments.py end to end: each experiment's --quick form on a few hundred real rows and one epoch, in a scratch
directory holding train.csv and an unreadable test.csv (the experiments must never touch it)."""
import subprocess
import sys
from pathlib import Path

import pytest

import experiments
from conftest import write_rows
from recipes import MODELS

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED = {  # experiment: (its table's header, the first cell of each row, its figure)
    "compare": ("| model | validation accuracy % (mean of 2) | std | parameters | MFLOPs/image | s/epoch |",
                list(MODELS), "compare.png"),
    "shift": ("| model (48x48 input) | centred % | random offsets % | fall (points) |", ["mlp", "cnn_small"],
              "shift.png"),
    "batch_size": ("| batch size | digits per step | validation accuracy % | wall time s | epochs |",
                   [str(size) for size in experiments.BATCH_SIZES], "batch_size.png"),
    "sanity": ("| K | acc^K % | all K right in 10,000 draws % |", ["1", "10", "16", "100", "1000"], "sanity.png"),
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    write_rows("train", 300, tmp_path / "train.csv")
    (tmp_path / "test.csv").write_text("not a digit file\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def table_rows(output, header):
    """The first cell of each row of the markdown table that starts with header."""
    lines = output.splitlines()
    start = lines.index(header) + 2  # past the header and its --- line
    rows = []
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        rows.append(line.split(" | ")[0].removeprefix("| "))
    return rows


@pytest.mark.parametrize("name", EXPECTED)
def test_quick_run_says_it_is_a_smoke_run_prints_its_table_and_writes_its_own_quick_files(name, workdir, capsys):
    # compare trains every network twice (for a spread), so on fewer rows
    extra = ["--seeds", "2", "--rows", "200"] if name == "compare" else []
    assert experiments.main([name, "--quick", "--max_n_epochs", "1", *extra]) == 0
    output = capsys.readouterr().out
    [said] = [line for line in output.splitlines() if line.startswith("quick: ")]
    assert said.startswith(f"quick: a smoke run on the first {200 if name == 'compare' else 300} rows of train.csv")
    assert "its numbers mean nothing" in said
    header, first_cells, figure = EXPECTED[name]
    assert table_rows(output, header) == first_cells
    quick = figure.replace(".png", "_quick.png")  # never over a full run's figure
    assert sorted(path.name for path in (workdir / "resources").iterdir()) == (
        ["compare_quick.md", quick] if name == "compare" else [quick])  # no temporary file left either
    assert (workdir / "resources" / quick).read_bytes()[:8] == PNG_MAGIC
    if name == "compare":  # the same table as markdown, with a spread over the two trials
        table = (workdir / "resources" / "compare_quick.md").read_text()
        assert table in output + "\n" and table.startswith(header)
        assert all(line.split(" | ")[2] not in ("-", "nan") for line in table.splitlines()[2:])


def test_a_full_run_writes_the_figure_and_table_under_their_own_names():
    full, quick = (experiments.parse_settings(["compare", *given]) for given in ([], ["--quick"]))
    assert experiments.output_path("compare.md", full) == "resources/compare.md"
    assert experiments.output_path("compare.png", quick) == "resources/compare_quick.png"


def test_quick_means_2000_rows_2_epochs_and_1_seed_unless_told_otherwise():
    quick = experiments.parse_settings(["compare", "--quick"])
    assert (quick.rows, quick.max_n_epochs, quick.seeds) == (2000, 2, 1)
    assert experiments.parse_settings(["compare", "--quick", "--seeds", "2"]).seeds == 2
    full = experiments.parse_settings(["compare"])
    assert (full.rows, full.max_n_epochs, full.seeds) == (0, 0, 3)


def test_place_pastes_each_digit_at_its_offset_on_a_blank_canvas(real_digits):
    images = real_digits[0][:2]
    canvases = experiments.place(images, [(0, 20), (7, 3)])
    assert canvases.shape == (2, 48, 48, 1)
    assert (canvases[0, 0:28, 20:48] == images[0]).all() and (canvases[1, 7:35, 3:31] == images[1]).all()
    assert canvases.sum() == pytest.approx(images.sum(), rel=1e-6)  # nothing else on the canvas


def test_an_unknown_experiment_is_refused_with_the_choices(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "experiments.py"), "tuning"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    (error,) = [line for line in result.stderr.splitlines() if "invalid choice: 'tuning'" in line]
    assert all(name in error for name in experiments.EXPERIMENTS)


def test_compare_trains_only_the_networks_given_with_models(workdir, capsys):
    assert experiments.main(["compare", "--quick", "--max_n_epochs", "1", "--rows", "200", "--models",
                             "mlp,cnn_small"]) == 0
    assert table_rows(capsys.readouterr().out, EXPECTED["compare"][0].replace("mean of 2", "mean of 1")) == [
        "mlp", "cnn_small"]


def test_an_unknown_network_in_models_is_refused_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        experiments.parse_settings(["compare", "--models", "mlp,resnet"])
    assert exit_info.value.code == 2
    assert "unknown network 'resnet'" in capsys.readouterr().err
