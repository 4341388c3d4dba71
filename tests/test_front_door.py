"""The front door: a README people read in minutes, links in it and in docs/ that lead somewhere, and a working
copy that the README's commands leave as git checked it out (every output untracked and ignored)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_rows

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
MOST_README_LINES = 250
# A tiny run: its numbers mean nothing, but it writes every output a full run writes.
SMALL_RUN = ["--max_n_epochs", "1", "--batch_size", "32"]
SAMPLE_PHOTOS = ["resources/handwriting/seven.jpg", "resources/handwriting/year.jpg"]


# ---- the README and the docs ----

def prose(text):
    """The page without its code: fenced blocks and `inline code` hold commands and paths, not links."""
    return re.sub(r"`[^`]*`", "", re.sub(r"(?ms)^```.*?^```", "", text))  # a code span may wrap a line


def links(text):
    """Every link target in the page's prose: markdown links and images, and HTML src/href."""
    text = prose(text)
    return re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text) + \
        re.findall(r"""<(?:img|a)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", text)


def is_external(target):
    return re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) is not None  # https:, mailto:, ...


def anchors(page):
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces as hyphens, and a
    repeated heading numbered -1, -2, ..."""
    seen, result = {}, set()
    for heading in re.findall(r"(?m)^#{1,6}\s+(.+?)\s*#*\s*$", re.sub(r"(?ms)^```.*?^```", "", page.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return result


def page_id(page):
    return str(page.relative_to(REPO))


def test_the_readme_has_at_most_250_lines():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= MOST_README_LINES, f"README.md has {lines} lines; what does not fit belongs in docs/"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_and_image_points_to_a_file_that_exists(page):
    targets = [target.split("#")[0] for target in links(page.read_text()) if not is_external(target)]
    missing = [target for target in targets if target and not (page.parent / target).exists()]
    assert missing == [], f"{page_id(page)} links to files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_link_to_a_heading_names_a_heading_of_that_page(page):
    wrong = []
    for target in links(page.read_text()):
        path, _, anchor = target.partition("#")
        linked = page.parent / path if path else page
        if anchor and not is_external(target) and linked.suffix == ".md" and linked.exists():
            if anchor not in anchors(linked):
                wrong.append(target)
    assert wrong == [], f"{page_id(page)} links to headings that do not exist: {wrong}"


# ---- the README's commands leave git's working copy clean ----

# What the commands write by default, each a file a command of the README writes (a run, report.py,
# predict.py --show, experiments.py, tune.py, the benchmarks); none may be tracked, every one must be ignored.
WRITTEN = ["submission.csv", "model/saved_model.1/saved_model.pb", "model/best_params.json", "tf_logs/1/events",
           "resources/report.md", "resources/report.json", "resources/confusion_matrix.png",
           "resources/misclassified_digits.png", "resources/handwriting/seven.mnist.png", "resources/compare.md",
           "resources/compare.png", "resources/tuning.md", "resources/hardest_digits.png",
           "benchmarks/results/speed.json", "benchmarks/results/time_to_accuracy.json",
           "benchmarks/results/holdout.json", "benchmarks/results/holdout_ensemble3.json",
           "benchmarks/results/photos.json", "benchmarks/results/serve_load.json",
           "benchmarks/results/tune_workers.json"]


def git(directory, *args):
    return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, check=True).stdout


def repo_git(*args):
    """git in this repository; skips the test where the repository is no git checkout."""
    try:
        return git(REPO, *args)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")


def test_every_file_the_commands_write_is_ignored_by_git():
    ignored = repo_git("check-ignore", "--no-index", *WRITTEN).split()
    assert [path for path in WRITTEN if path not in ignored] == []


def test_git_tracks_nothing_where_the_commands_write_but_serve_pys_page_and_the_sample_photos():
    tracked = repo_git("ls-files", "--", "resources", "benchmarks/results", "model", "tf_logs").split()
    kept = [path for path in tracked if path != "resources/draw.html" and not (
        path.startswith("resources/handwriting/") and not path.endswith(".mnist.png"))]
    assert kept == [], "a command would overwrite these tracked files; the docs' copies belong under docs/"


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory):
    """A fresh `git clone` of this repository at its current commit, as a newcomer gets it, and small CSVs
    written outside it (so that nothing of the test's own lands in the clone). -> (the clone, run)."""
    head = repo_git("rev-parse", "HEAD").strip()
    root = tmp_path_factory.mktemp("front_door")
    clone, csvs = root / "clone", root / "csvs"
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(REPO), str(clone)], check=True)
    git(clone, "checkout", "--quiet", head)
    csvs.mkdir()
    data = ["--train", str(write_rows("train", 300, csvs / "train.csv")),
            "--test", str(write_rows("test", 100, csvs / "test.csv"))]

    def run(script, *args, with_data=True):
        """python SCRIPT ARGS in the clone, as a user runs it there -> subprocess.CompletedProcess (text)."""
        result = subprocess.run([sys.executable, script, *args, *(data if with_data else [])], cwd=clone,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    return clone, run


def test_git_status_is_clean_after_python_run_py_in_a_fresh_clone(fresh_clone):
    clone, run = fresh_clone
    run("run.py", *SMALL_RUN)
    assert (clone / "submission.csv").exists() and (clone / "resources" / "report.md").exists()  # it wrote them
    assert git(clone, "status", "--porcelain") == ""


def test_git_status_is_clean_after_python_run_py_show_incorrect_in_a_fresh_clone(fresh_clone):
    clone, run = fresh_clone
    result = run("run.py", *SMALL_RUN, "--show_incorrect")
    assert "misclassified validation digits" in result.stdout
    assert (clone / "resources" / "misclassified_digits.png").exists()
    assert git(clone, "status", "--porcelain") == ""


def test_git_status_is_clean_after_predict_py_show_on_the_sample_photos(fresh_clone):
    clone, run = fresh_clone
    if not (clone / "model" / "saved_model").exists():
        run("run.py", *SMALL_RUN)
    run("predict.py", *SAMPLE_PHOTOS, "--show", with_data=False)
    assert (clone / "resources" / "handwriting" / "seven.mnist.png").exists()  # beside the tracked photo
    assert git(clone, "status", "--porcelain") == ""
