"""serve.py: the page to draw on, and POST /predict, as a user starts it (python serve.py) and as a browser uses it."""
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import predict
from test_predict import draw, more_digits, png_header_only, tiny_saved_model  # noqa: F401  (fixtures, shared)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_saved_model):  # noqa: F811
    """python serve.py --port P --min_confidence 0 --max_novelty inf in a directory as run.py leaves it (the
    tiny model, always guessing: it answers whatever it makes of a drawing) -> (its address, the lines it
    printed)."""
    workdir = tmp_path_factory.mktemp("serve")
    (workdir / "model").mkdir()
    os.symlink(tiny_saved_model, workdir / "model" / "saved_model")
    port = free_port()
    log = open(workdir / "serve.log", "w+")
    process = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--port", str(port), "--min_confidence", "0",
                                "--max_novelty", "inf"],
                               cwd=workdir, stdout=log, stderr=subprocess.STDOUT, text=True)
    address = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):  # TensorFlow takes a while to start on a busy machine
            try:
                urllib.request.urlopen(address + "/", timeout=2)
                break
            except OSError:
                assert process.poll() is None, (workdir / "serve.log").read_text()
                time.sleep(0.5)
        yield address, (workdir / "serve.log").read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def post(address, body, content_type):
    """POST /predict -> (status, the JSON answer)."""
    request = urllib.request.Request(address + "/predict", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def encoded(image, image_format="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


def test_listens_on_this_machine_only_unless_told(server):
    address, printed = server
    assert f"serving model/saved_model on {address} (Ctrl-C stops)" in printed.splitlines()


def test_a_port_already_taken_is_refused_in_one_line_naming_it_and_nothing_is_announced(tmp_path,
                                                                                        tiny_saved_model):  # noqa: F811
    (tmp_path / "model").mkdir()
    os.symlink(tiny_saved_model, tmp_path / "model" / "saved_model")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, str(REPO / "serve.py"), "--port", str(port)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "serving" not in result.stdout
    assert result.stderr.count("\n") == 1 and f"port {port} is already in use" in result.stderr, result.stderr


def test_serves_the_page_to_draw_on(server):
    address, _ = server
    with urllib.request.urlopen(address + "/") as reply:
        page = reply.read().decode()
        assert reply.headers.get_content_type() == "text/html"
    assert "<canvas" in page and "/predict" in page


@pytest.mark.parametrize("image_format, content_type", [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_predict_answers_the_digits_and_each_ones_ten_probabilities(server, image_format, content_type):
    address, _ = server
    status, answer = post(address, encoded(draw(7).convert("RGB"), image_format), content_type)
    assert status == 200, answer
    assert len(answer["digits"]) == 1 and answer["digits"].isdigit()
    (piece,) = answer["pieces"]
    assert len(piece["probabilities"]) == 10 and abs(sum(piece["probabilities"]) - 1) < 0.01
    assert piece["digit"] == int(np.argmax(piece["probabilities"])) == int(answer["digits"])
    assert piece["picture"].startswith("data:image/png;base64,")


def test_predict_reads_as_predict_py_does(server, tiny_saved_model):  # noqa: F811
    address, _ = server
    body = encoded(draw(0))
    _, answer = post(address, body, "image/png")
    reading = predict.read(io.BytesIO(body), predict.load_classifier(str(tiny_saved_model)), 0, float("inf"))
    assert (answer["digits"], answer["details"]) == (reading.digits, reading.details)


def test_a_blank_page_is_answered_no_digit(server):
    address, _ = server
    status, answer = post(address, encoded(Image.new("L", (200, 100), 255)), "image/png")
    assert status == 200 and answer["digits"] == "?" and answer["details"].startswith("no digit:")
    assert answer["pieces"] == []


@pytest.mark.parametrize("body, content_type, status, message", [
    (b"hello", "text/plain", 415, "Content-Type text/plain"),
    (b"not a picture at all", "image/png", 400, "not a picture"),
    (b"", "image/png", 400, "empty body"),
    (png_header_only(20000, 20000), "image/png", 413, "picture too large"),
    (png_header_only(8000, 8000), "image/png", 413, "picture too large"),
    (b"\0" * (6 * 1024 * 1024), "image/png", 413, "body over 5 MB"),
])
def test_a_bad_request_gets_a_clear_refusal_and_the_server_goes_on(server, body, content_type, status, message):
    address, _ = server
    refused = post(address, body, content_type)
    assert refused[0] == status and message in refused[1]["error"], refused
    assert post(address, encoded(draw(1)), "image/png")[0] == 200


# ---- in a real browser ------------------------------------------------------------------------------------

def test_strokes_drawn_on_the_page_are_read_off_it(server):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    address, _ = server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(address + "/")
            box = page.locator("#paper").bounding_box()
            for x in (0.25, 0.7):  # two upright strokes, far apart: two 1s, whatever the model makes of them
                page.mouse.move(box["x"] + x * box["width"], box["y"] + 0.15 * box["height"])
                page.mouse.down()
                for step in range(1, 11):
                    page.mouse.move(box["x"] + x * box["width"] - 2 * step, box["y"] + (0.15 + 0.07 * step) * box["height"])
                page.mouse.up()
            page.click("#read")
            page.wait_for_function("!['', '…'].includes(document.getElementById('answer').textContent)", timeout=60000)
            shown = page.text_content("#answer")
            pictures = page.locator(".piece img").count()
            bars = page.locator(".piece .bar").count()
        finally:
            browser.close()
    assert len(shown) == 2 and all(character.isdigit() for character in shown), shown
    assert pictures == 2 and bars == 20
