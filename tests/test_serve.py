"""serve.py: the page to draw on, and POST /predict, as a user starts it (python serve.py) and as a browser uses it."""
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import photo
import predict
import serve
from test_predict import draw, more_digits, png_header_only, sure_of, tiny_saved_model  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
READ_TIMEOUT = 2  # the test server's --read_timeout, shortened from the default so a stalled client is cut off soon


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def started(tiny_saved_model, workdir, *flags):  # noqa: F811
    """python serve.py --port P *flags in workdir as run.py leaves it (the tiny model), once it says it serves
    (every process loaded) -> (the process, its address); what it prints goes to workdir/serve.log."""
    (workdir / "model").mkdir(parents=True)
    os.symlink(tiny_saved_model, workdir / "model" / "saved_model")
    port, printed = free_port(), workdir / "serve.log"
    with open(printed, "w") as log:
        process = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--port", str(port), *flags],
                                   cwd=workdir, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(240):  # TensorFlow takes a while to start on a busy machine
            assert process.poll() is None, printed.read_text()
            if "serving" in printed.read_text():
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"serve.py did not start within 2 minutes: {printed.read_text()}")
        yield process, f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_saved_model):  # noqa: F811
    """python serve.py --min_confidence 0 --max_novelty inf --read_timeout 2 (the tiny model, always guessing: it
    answers whatever it makes of a drawing) -> (its address, the lines it printed)."""
    workdir = tmp_path_factory.mktemp("serve")
    with started(tiny_saved_model, workdir, "--min_confidence", "0", "--max_novelty", "inf", "--read_timeout",
                 str(READ_TIMEOUT)) as (_, address):
        urllib.request.urlopen(address + "/", timeout=10)
        yield address, (workdir / "serve.log").read_text()


def post(address, body, content_type, path="/predict"):
    """POST path -> (status, the JSON answer)."""
    request = urllib.request.Request(address + path, data=body, headers={"Content-Type": content_type})
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
    assert f"serving model/saved_model on {address} (2 processes; Ctrl-C stops)" in printed.splitlines()


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
    (b"\0" * (6 * 1024 * 1024), "image/png", 413, "body over 5 MB"),  # sent whole, as Python's http.client does
])
def test_a_bad_request_gets_a_clear_refusal_and_the_server_goes_on(server, body, content_type, status, message):
    address, _ = server
    refused = post(address, body, content_type)
    assert refused[0] == status and message in refused[1]["error"], refused
    assert post(address, encoded(draw(1)), "image/png")[0] == 200


# ---- the limits that hold under abuse ----------------------------------------------------------------------

def exchange(address, head, body_parts=(), wait=30):
    """One connection, written by hand as a misbehaving client writes it: the request's head, then the body's
    parts (as many as the server takes) -> (the reply's bytes, whether the server closed the connection
    within `wait` seconds of the last part)."""
    host, port = address.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        try:
            connection.sendall(head.encode())
            for part in body_parts:
                connection.sendall(part)
        except OSError:  # the server stopped reading: what it answered is read below
            pass
        connection.settimeout(wait)
        reply = b""
        try:
            while chunk := connection.recv(65536):
                reply += chunk
            return reply, True
        except ConnectionResetError:  # closed with the rest of the body unread
            return reply, True
        except TimeoutError:
            return reply, False


def head(*fields):
    return "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n" + \
        "".join(field + "\r\n" for field in fields) + "\r\n"


def status_and_json(reply):
    """An HTTP reply's bytes -> (its status, its JSON body); (0, None) for no reply."""
    status_line, _, body = reply.partition(b"\r\n\r\n")
    return (int(status_line.split()[1]), json.loads(body)) if reply else (0, None)


def test_a_chunked_body_over_the_limit_is_refused_with_413_and_the_connection_closed(server):
    address, _ = server
    chunk = b"%x\r\n" % 2**16 + b"\0" * 2**16 + b"\r\n"
    reply, closed = exchange(address, head("Transfer-Encoding: chunked"), [chunk] * 96)  # 6 MB, never ended
    assert status_and_json(reply) == (413, {"error": "body over 5 MB: send a smaller picture"}), reply[:300]
    assert closed
    assert post(address, encoded(draw(1)), "image/png")[0] == 200


def test_a_body_declared_over_the_limit_is_refused_with_413_before_it_is_sent(server):
    address, _ = server
    reply, closed = exchange(address, head(f"Content-Length: {6 * 2**20}"))
    assert status_and_json(reply) == (413, {"error": "body over 5 MB: send a smaller picture"}), reply[:300]
    assert closed


def test_a_client_that_stalls_mid_body_is_cut_off_after_the_read_timeout(server):
    address, _ = server
    started = time.monotonic()
    reply, closed = exchange(address, head("Content-Length: 100000"), [encoded(draw(1))[:500]],
                             wait=READ_TIMEOUT + 15)
    assert closed and reply == b""  # the request never came whole: nothing to answer
    assert time.monotonic() - started < READ_TIMEOUT + 15
    assert post(address, encoded(draw(1)), "image/png")[0] == 200


# ---- several processes ---------------------------------------------------------------------------------------

def children(pid):
    """The pids of a process's children (Linux)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def sockets_open(pid):
    return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd"))


def gone(pids, within=10):
    """Whether every one of the processes has ended (or is a zombie) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}")
                 and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
        if not alive:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("flags, message", [
    (["--processes", "0"], "--processes 0: must be at least 1"),
    (["--threads", "1"], "--threads 1: must be at least 2 (one for each process)"),
    (["--processes", "3", "--connection_limit", "2"],
     "--connection_limit 2: must be at least 3 (one for each process)"),
])
def test_a_share_of_less_than_one_thread_or_connection_per_process_is_refused_in_one_line(flags, message):
    result = subprocess.run([sys.executable, str(REPO / "serve.py"), *flags], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and message in result.stderr.splitlines()[-1], result.stderr


def test_the_processes_share_new_connections_evenly_and_at_once(tmp_path, tiny_saved_model):  # noqa: F811
    """40 connections opened at once: within a second each process holds half of them (least connections)."""
    with started(tiny_saved_model, tmp_path, "--processes", "2") as (process, address):
        workers = children(process.pid)
        assert len(workers) == 2
        before = [sockets_open(pid) for pid in workers]
        connections = [socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1]))) for _ in range(40)]
        try:
            time.sleep(1)
            taken = [sockets_open(pid) - then for pid, then in zip(workers, before)]
        finally:
            for connection in connections:
                connection.close()
    assert sum(taken) == 40 and max(taken) - min(taken) <= 2, taken


def test_a_process_that_dies_stops_the_server_with_a_line_saying_so(tmp_path, tiny_saved_model):  # noqa: F811
    with started(tiny_saved_model, tmp_path) as (process, address):
        first, second = children(process.pid)
        os.kill(second, 9)
        assert process.wait(timeout=30) == 1
        said = (tmp_path / "serve.log").read_text().splitlines()
        assert said[-1] == "error: serve.py process 2 stopped (exit status -9); the others are stopped too", said
        assert gone([first])


def test_stopping_the_server_stops_its_processes_and_frees_the_port(tmp_path, tiny_saved_model):  # noqa: F811
    with started(tiny_saved_model, tmp_path) as (process, address):
        workers = children(process.pid)
        process.terminate()
        assert process.wait(timeout=30) == 0
        assert gone(workers)
        socket.create_server(("127.0.0.1", int(address.rsplit(":", 1)[1]))).close()


def test_the_processes_stop_when_the_first_is_killed_outright(tmp_path, tiny_saved_model):  # noqa: F811
    with started(tiny_saved_model, tmp_path) as (process, address):
        workers = children(process.pid)
        process.kill()  # SIGKILL: it cannot stop them itself
        assert gone(workers)


def test_big_pictures_take_turns_across_processes():
    """Two big pictures in the server at once, wherever they are read; a third is refused."""
    import multiprocessing
    forked = multiprocessing.get_context("fork")
    big_pictures, holding, release = serve.BigPictures(forked), forked.Event(), forked.Event()
    big = SimpleNamespace(size=(3000, 3000), draft=lambda *_: None)

    def read_a_big_picture():
        with big_pictures.turn(big):
            holding.set()
            release.wait(30)

    readers = [forked.Process(target=read_a_big_picture) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        assert holding.wait(30)
        deadline = time.monotonic() + 30
        while big_pictures.admitted.get_value() and time.monotonic() < deadline:  # the second is in too, waiting
            time.sleep(0.05)
        with pytest.raises(serve.BigPictures.Busy):
            with big_pictures.turn(big):
                pass
    finally:
        release.set()
        for reader in readers:
            reader.join(30)
    with big_pictures.turn(big):  # both read: a turn is free again
        pass


def huge_picture():
    """A legal picture, as large as photo.MAX_PIXELS allows: a 7 written across a 7000x7000 RGB page, as PNG."""
    page = draw(7).convert("RGB").resize((7000, 7000), Image.Resampling.NEAREST)
    assert 7000 * 7000 <= photo.MAX_PIXELS
    return encoded(page)


def test_a_huge_picture_does_not_hold_up_small_ones_sent_while_it_is_read(server):
    """Each small picture sent while a huge one is read is answered within 5 s, and several are answered
    before the huge one is: its decoding and cleaning cost its sender, not everyone."""
    address, _ = server
    huge, small = huge_picture(), encoded(draw(1))
    with ThreadPoolExecutor(1) as pool:
        huge_reply = pool.submit(post, address, huge, "image/png")
        small_seconds = []
        while not huge_reply.done() and len(small_seconds) < 50:
            started = time.monotonic()
            assert post(address, small, "image/png")[0] == 200
            small_seconds.append(time.monotonic() - started)
        assert huge_reply.result()[0] == 200
    assert len(small_seconds) >= 3 and max(small_seconds) < 5, small_seconds


def test_digits_of_requests_that_arrive_together_are_read_in_one_call_each_answered_its_own():
    calls, model_busy = [], threading.Event()

    def ink_counter(pictures):  # a stand-in model: the digit is the count of inked pixels, mod 10
        digits = (np.asarray(pictures) > 0.5).sum(axis=(1, 2)) % 10
        return {"probabilities": np.eye(10, dtype=np.float32)[digits], "novelty": np.zeros(len(pictures))}

    def spy(pictures):
        calls.append((len(pictures), int(np.any(pictures > 0, axis=(1, 2)).sum())))  # (size, pictures not blank)
        model_busy.wait(30)  # the first call takes long: the others arrive meanwhile
        return ink_counter(pictures)

    app = serve.create_app(spy, predict.NoExplainer("no look inside"), 0, float("inf"), max_wait=0)
    bodies = [encoded(draw(digit)) for digit in (1, 7, 0, 1, 7, 0)]  # one digit each: one call each
    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = [pool.submit(app.test_client().post, "/predict", data=body, content_type="image/png")
                   for body in bodies]
        for _ in range(600):  # until every request is with the model or waiting for it
            if len(calls) == 1 and calls[0][1] + app.extensions["model"].waiting.qsize() == len(bodies):
                break
            time.sleep(0.05)
        model_busy.set()
        answers = [reply.result().get_json() for reply in replies]
    assert len(calls) <= 2 and sum(digits for _, digits in calls) == len(bodies), calls
    assert all(size == 2 ** (digits - 1).bit_length() for size, digits in calls), calls  # padded to a power of 2
    for body, answer in zip(bodies, answers):
        own = photo.mnist_digits(Image.open(io.BytesIO(body)), ink_counter)
        assert answer["digits"] == str(ink_counter(own)["probabilities"].argmax()), answer


def test_explain_requests_that_arrive_together_are_explained_in_one_call_each_answered_its_own():
    calls, model_busy = [], threading.Event()

    def ink_counter(pictures):  # a stand-in model: the digit is the count of inked pixels, mod 10
        digits = (np.asarray(pictures) > 0.5).sum(axis=(1, 2)) % 10
        return {"probabilities": np.eye(10, dtype=np.float32)[digits], "novelty": np.zeros(len(pictures))}

    def look_inside_spy(pictures):  # a stand-in explainer: one dense layer, each picture's count of ink
        calls.append(int(np.any(pictures > 0, axis=(1, 2)).sum()))  # pictures not blank
        model_busy.wait(30)  # the first call takes long: the others arrive meanwhile
        ink = (pictures > 0.5).sum(axis=(1, 2)).astype(np.float32)
        return {"input": pictures, "layer_0": ink[:, None], "probabilities": ink_counter(pictures)["probabilities"],
                "saliency": pictures}

    app = serve.create_app(ink_counter, (look_inside_spy, [{"name": "dense"}]), 0, float("inf"), max_wait=0)
    bodies = [encoded(draw(digit)) for digit in (1, 7, 0, 1, 7, 0)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = [pool.submit(app.test_client().post, "/explain", data=body, content_type="image/png")
                   for body in bodies]
        for _ in range(600):  # until every request is with the explainer or waiting for it
            if len(calls) == 1 and calls[0] + app.extensions["explainer"].waiting.qsize() == len(bodies):
                break
            time.sleep(0.05)
        model_busy.set()
        answers = [reply.result().get_json() for reply in replies]
    assert len(calls) <= 2 and sum(calls) == len(bodies), calls
    for body, answer in zip(bodies, answers):
        (own,) = photo.mnist_digits(Image.open(io.BytesIO(body)), ink_counter)
        assert answer["layers"] == [{"name": "dense", "shape": [1], "values": [float((own > 0.5).sum())]}], answer


# ---- inside the network: POST /explain ------------------------------------------------------------------

EXPLAINED_NETWORKS = ["digitnet", "cnn_small", "mlp_dropout"]  # DigitNet and two of --list_models: 2, 0 conv blocks
N_TRAIN = 400  # the others' tiny training: real_digits' first rows, one epoch, as tests/test_explain.py trains


@pytest.fixture(scope="module", params=EXPLAINED_NETWORKS)
def explaining(request, tiny_saved_model, real_digits, tmp_path_factory):  # noqa: F811
    """serve.py's app for a network trained briefly on real digits (DigitNet: the tiny model), served by
    waitress on a free port of 127.0.0.1 in this process, always guessing -> (the network's name, the address,
    the explainer as predict.load_explainer loads it: (look_inside, layers), the classifier)."""
    name = request.param
    if name == "digitnet":
        path = tiny_saved_model
    else:
        import tensorflow as tf
        from conftest import train_with
        from ensemble import export_saved_model
        from recipes import build_model

        images, labels = real_digits
        tf.random.set_seed(0)
        network = build_model(name, seed=0)
        split = images[:N_TRAIN], labels[:N_TRAIN], images[N_TRAIN:], labels[N_TRAIN:]
        train_with(network, split, max_n_epochs=1, patience=2, batch_size=32, learning_rate=3e-3)
        path = tmp_path_factory.mktemp(name) / "saved_model"
        export_saved_model([network], str(path), *split[:2])
    classify, explainer = predict.load_classifier(str(path)), predict.load_explainer(str(path))
    with served(serve.create_app(classify, explainer, 0, float("inf"))) as address:
        yield name, address, explainer, classify


@contextmanager
def served(app):
    """app served by waitress (serve.make_server, its default settings) on a free port of 127.0.0.1 -> the
    address."""
    listening = socket.create_server(("127.0.0.1", 0))
    server = serve.make_server(app, listening, SimpleNamespace(threads=serve.threads,
                                                               connection_limit=serve.connection_limit,
                                                               read_timeout=serve.read_timeout))
    threading.Thread(target=server.run, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        server.close()
        server.task_dispatcher.shutdown()


def test_explain_shows_the_networks_own_layers_of_the_first_piece_within_rounding(explaining):
    """The JSON's numbers are predict.load_explainer's (proven the network's own blocks by tests/test_explain.py)
    for the picture predict.py's cleaning makes of the drawing, rounded to serve.DECIMALS places; the answer
    is /predict's."""
    name, address, (look_inside, layers), classify = explaining
    body = encoded(draw(7))
    status, shown = post(address, body, "image/png", "/explain")
    assert status == 200, shown
    assert {key: shown[key] for key in ("digits", "details", "pieces")} == post(address, body, "image/png")[1]
    (picture,) = photo.mnist_digits(Image.open(io.BytesIO(body)), classify)
    own = look_inside(picture[None])
    own_values = [own[f"layer_{i}"] for i in range(len(layers))]
    within = 0.5 * 10 ** -serve.DECIMALS + 1e-6
    assert shown["piece"] == 0
    np.testing.assert_allclose(shown["input"], own["input"][0], atol=within)
    assert [(layer["name"], tuple(layer["shape"])) for layer in shown["layers"]] == \
        [(layer["name"], values.shape[1:]) for layer, values in zip(layers, own_values)]
    for layer, its_own in zip(shown["layers"], own_values, strict=True):
        np.testing.assert_allclose(layer["values"], its_own[0], atol=within, err_msg=layer["name"])
    np.testing.assert_allclose(shown["probabilities"], own["probabilities"][0], atol=within)
    np.testing.assert_allclose(shown["saliency"], own["saliency"][0], atol=within)
    assert np.abs(shown["saliency"]).max() > 100 * within  # rounding leaves the saliency's numbers readable


def test_kernels_are_the_networks_own_for_each_layer_a_convolution_makes(explaining):
    name, address, (_, layers), _ = explaining
    with urllib.request.urlopen(address + "/kernels") as reply:
        shown = json.loads(reply.read())["layers"]
    own = [layer for layer in layers if "kernel" in layer]
    assert [layer["name"] for layer in shown] == [layer["name"] for layer in own]
    assert len(shown) == {"digitnet": 3, "cnn_small": 2, "mlp_dropout": 0}[name]
    for layer, its_own in zip(shown, own):
        assert layer["shape"] == list(its_own["kernel"].shape)
        np.testing.assert_allclose(layer["kernel"], its_own["kernel"], atol=0.5 * 10 ** -serve.DECIMALS + 1e-6)
        np.testing.assert_allclose(layer["bias"], its_own["bias"], atol=0.5 * 10 ** -serve.DECIMALS + 1e-6)


def test_explain_of_a_blank_page_answers_no_digit_and_no_layers(explaining):
    _, address, _, _ = explaining
    status, shown = post(address, encoded(Image.new("L", (200, 100), 255)), "image/png", "/explain")
    assert status == 200 and shown["digits"] == "?" and shown["layers"] == [] and shown["piece"] is None


def test_explain_refuses_a_bad_request_as_predict_does(explaining):
    _, address, _, _ = explaining
    assert post(address, b"hello", "text/plain", "/explain") == \
        (415, {"error": "Content-Type text/plain: send image/png or image/jpeg"})
    status, refused = post(address, b"not a picture at all", "image/png", "/explain")
    assert status == 400 and "not a picture" in refused["error"]


def test_a_model_without_a_look_inside_refuses_explain_in_its_one_line_and_still_reads(tmp_path):
    """A SavedModel as run.py exported it before: serving_default alone."""
    import tensorflow as tf
    module = tf.Module()
    module.serve = tf.function(lambda images: {"probabilities": tf.one_hot(tf.fill([tf.shape(images)[0]], 7), 10)},
                               input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
    tf.saved_model.save(module, str(tmp_path / "old"), signatures=module.serve)
    with pytest.raises(predict.NoExplainer) as raised:
        predict.load_explainer(str(tmp_path / "old"))
    client = serve.create_app(predict.load_classifier(str(tmp_path / "old")), raised.value, 0, float("inf")) \
        .test_client()
    for refused in (client.post("/explain", data=encoded(draw(7)), content_type="image/png"), client.get("/kernels")):
        assert refused.status_code == 501 and refused.get_json() == {"error": str(raised.value)}
        assert "\n" not in str(raised.value)
    read = client.post("/predict", data=encoded(draw(7)), content_type="image/png")
    assert read.status_code == 200 and read.get_json()["digits"] == "7"


# ---- in a real browser ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium, headless, driven by Playwright (which never downloads a browser of its own)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium, server):
    """The page as a desktop browser opens it -> (the page, every response and console error it met)."""
    address, _ = server
    context = chromium.new_context()
    page = context.new_page()
    seen = dict(failed=[], console_errors=[])
    page.on("response", lambda response: response.status >= 400 and seen["failed"].append(response.url))
    page.on("console", lambda message: message.type == "error" and seen["console_errors"].append(message.text))
    page.goto(address + "/")
    yield page, seen
    context.close()


def draw_two_strokes(page):
    """Two upright strokes with the mouse, far apart: two 1s, whatever the model makes of them."""
    box = page.locator("#paper").bounding_box()
    for x in (0.25, 0.7):
        page.mouse.move(box["x"] + x * box["width"], box["y"] + 0.15 * box["height"])
        page.mouse.down()
        for step in range(1, 11):
            page.mouse.move(box["x"] + x * box["width"] - 2 * step, box["y"] + (0.15 + 0.07 * step) * box["height"])
        page.mouse.up()


def answered(page):
    page.wait_for_function("!['', '…'].includes(document.getElementById('answer').textContent)", timeout=60000)
    return page.text_content("#answer")


def test_strokes_drawn_on_the_page_are_read_off_it(page):
    page, _ = page
    draw_two_strokes(page)
    page.click("#read")
    shown = answered(page)
    assert len(shown) == 2 and all(character.isdigit() for character in shown), shown
    assert page.locator("#pieces .piece img").count() == 2 and page.locator("#pieces .piece .bar").count() == 20


def test_each_probability_bar_shows_its_number_beside_it(page):
    page, _ = page
    draw_two_strokes(page)
    page.click("#read")
    answered(page)
    values = page.locator("#pieces .piece .bar .value").all_text_contents()
    assert len(values) == 20 and all(value.endswith("%") and value[:-1].isdigit() for value in values), values
    for piece in range(2):  # each piece's numbers add up to about 100%, and the best's is the largest
        numbers = [int(value[:-1]) for value in values[10 * piece:10 * piece + 10]]
        best = page.locator("#pieces .piece").nth(piece).locator(".bar.best .value").text_content()
        assert 95 <= sum(numbers) <= 105 and int(best[:-1]) == max(numbers), numbers


def test_the_empty_paper_shows_a_hint_until_drawn_on_and_again_once_cleared(page):
    page, _ = page
    assert page.is_visible("#hint") and "Draw" in page.text_content("#hint")
    draw_two_strokes(page)
    assert not page.is_visible("#hint")
    page.click("#clear")
    assert page.is_visible("#hint")


def test_the_page_loads_without_a_failed_request_or_a_console_error(page):
    page, seen = page
    page.wait_for_load_state("networkidle")
    assert page.locator("link[rel=icon]").count() == 1  # else the browser asks for /favicon.ico, a 404
    assert seen == dict(failed=[], console_errors=[])


def test_the_page_is_usable_by_keyboard_with_the_focus_visible(page):
    page, _ = page
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "read"
    outline = page.evaluate("(style => [style.outlineStyle, parseFloat(style.outlineWidth)])"
                            "(getComputedStyle(document.activeElement))")
    assert outline[0] != "none" and outline[1] >= 2, outline
    page.keyboard.press("Enter")  # Read, on the empty paper: no digit
    assert answered(page) == "?"
    draw_two_strokes(page)
    page.focus("#read")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "clear"
    page.keyboard.press("Space")
    assert page.text_content("#answer") == "" and page.is_visible("#hint")


def test_the_page_limits_itself_to_bodies_the_server_takes():
    page = (REPO / "resources" / "draw.html").read_text()
    assert f"const MAX_BYTES = {serve.MAX_BYTES // 2**20} * 1024 * 1024;" in page


def test_on_a_phone_the_page_fits_its_width_and_a_finger_draws_on_it(chromium, server):
    address, _ = server
    context = chromium.new_context(viewport=dict(width=360, height=740), is_mobile=True, has_touch=True,
                                   device_scale_factor=2)
    try:
        page = context.new_page()
        page.goto(address + "/")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        box = page.locator("#paper").bounding_box()
        assert box["width"] <= 360
        touch = context.new_cdp_session(page)

        def finger(points):  # one touch of a finger along the points, a frame apart, at rest when lifted
            moves = [("touchStart", points[0]), *[("touchMove", point) for point in [*points[1:], points[-1]]]]
            for kind, (x, y) in moves:
                touch.send("Input.dispatchTouchEvent", dict(type=kind, touchPoints=[dict(x=x, y=y)]))
                time.sleep(1 / 60)
            touch.send("Input.dispatchTouchEvent", dict(type="touchEnd", touchPoints=[]))
            time.sleep(0.5)  # a finger takes a moment to reach the next place; Chromium drops a tap right after a
            # stroke, which it takes for a fling

        for x in (0.25, 0.7):  # two upright strokes
            finger([(box["x"] + x * box["width"] - 2 * step, box["y"] + (0.15 + 0.07 * step) * box["height"])
                    for step in range(11)])
        inked = page.evaluate("""(() => { const paper = document.getElementById("paper");
            const pixels = paper.getContext("2d").getImageData(0, 0, paper.width, paper.height).data;
            let dark = 0; for (let i = 0; i < pixels.length; i += 4) dark += pixels[i] < 128; return dark; })()""")
        assert inked > 1000  # the finger's strokes are on the paper
        read = page.locator("#read").bounding_box()
        finger([(read["x"] + read["width"] / 2, read["y"] + read["height"] / 2)])  # a tap on Read
        shown = answered(page)
    finally:
        context.close()
    assert len(shown) == 2 and all(character.isdigit() for character in shown), shown


# ---- inside the network, in a real browser -----------------------------------------------------------------

@pytest.fixture
def inside_page(chromium, explaining):
    """The page of a server that shows inside its network (explaining), as a desktop browser opens it ->
    (the page, explaining, the console errors it met)."""
    _, address, _, _ = explaining
    context = chromium.new_context(viewport=dict(width=900, height=1200))
    page = context.new_page()
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.goto(address + "/")
    yield page, explaining, errors
    context.close()


def stroke(page, points):
    """One stroke of the mouse through points (fractions of the paper's width and height), a frame apart ->
    the page's clock (performance.now(), ms) just before the pen is lifted."""
    box = page.locator("#paper").bounding_box()
    at = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for (x0, y0), (x1, y1) in zip(at, at[1:]):
        for step in range(1, 6):
            page.mouse.move(x0 + (x1 - x0) * step / 5, y0 + (y1 - y0) * step / 5)
            time.sleep(1 / 60)
    ended = page.evaluate("performance.now()")
    page.mouse.up()
    return ended


def layers_updated(page, ended, name, what):
    """Waits until the page shows what it was answered of the paper as it was at `ended` -> the milliseconds
    from then to the layers drawn, logged (measured, not asserted: issue 37's target is 200 ms)."""
    page.wait_for_function(f"shown.asked >= {ended}", timeout=30000)
    delay = page.evaluate("shown.drawn") - ended
    print(f"\n{name}: {what}: stroke's end -> layers updated in {delay:.0f} ms")
    return delay


SEVEN = [(0.3, 0.15), (0.5, 0.15), (0.38, 0.85)]  # the top bar and the downstroke, in the paper's left half


def canvas_pixels(page, selector, index=0):
    """The [r, g, b] of every pixel of the index-th canvas matching selector."""
    return np.array(page.evaluate(f"""(() => {{ const canvas = document.querySelectorAll("{selector}")[{index}];
        return Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data); }})()""")
                    ).reshape(-1, 4)[:, :3]


def test_while_drawing_the_page_shows_each_block_in_order_the_input_and_the_saliency(inside_page):
    page, (name, _, (look_inside, layers), _), errors = inside_page
    layers_updated(page, stroke(page, SEVEN), name, "a 7")
    blank = look_inside(np.zeros([1, 28, 28], np.float32))
    assert page.locator("#layers .layer").evaluate_all("views => views.map(view => view.dataset.name)") == \
        [layer["name"] for layer in layers]
    for i in range(len(layers)):
        view = page.locator("#layers .layer").nth(i)
        if blank[f"layer_{i}"].ndim == 4:  # a conv block: one map per channel
            assert view.locator("canvas.map").count() == blank[f"layer_{i}"].shape[-1]
        else:
            assert view.locator("canvas.strip").count() == 1
    assert (canvas_pixels(page, "#input").max(axis=1) < 128).sum() > 20  # the digit, as the network reads it
    saliency = canvas_pixels(page, "#saliency").astype(int)
    reddish, bluish = saliency[:, 0] - saliency[:, 2] > 40, saliency[:, 2] - saliency[:, 0] > 40
    assert reddish.sum() > 5 and bluish.sum() > 5, (reddish.sum(), bluish.sum())
    assert page.locator("#inside-answer .bar").count() == 10
    assert errors == []


def test_the_page_redraws_what_the_network_sees_after_each_stroke(inside_page):
    page, (name, _, _, _), _ = inside_page
    layers_updated(page, stroke(page, SEVEN[1:]), name, "a 1")
    first = canvas_pixels(page, "#input")
    layers_updated(page, stroke(page, SEVEN[:2]), name, "its bar, making a 7")
    assert (first != canvas_pixels(page, "#input")).any(axis=1).sum() > 20


def test_a_click_on_a_feature_map_shows_the_kernels_that_make_it_and_their_numbers(inside_page):
    page, (name, address, _, _), _ = inside_page
    layers_updated(page, stroke(page, SEVEN), name, "a 7")
    with urllib.request.urlopen(address + "/kernels") as reply:
        kernels = json.loads(reply.read())["layers"]
    if not kernels:  # an MLP: its dense layers alone, nothing to click
        assert page.locator("canvas.map").count() == 0
        return
    for i, channel, how in [(len(kernels) - 1, 5, "click"), (0, 2, "Enter")]:
        made = kernels[i]
        chosen = page.locator("#layers .layer").nth(i).locator("canvas.map").nth(channel)
        if how == "click":
            chosen.click()
        else:
            chosen.focus()
            page.keyboard.press("Enter")
        page.wait_for_function(f"document.querySelector('#detail h3')?.textContent === '{made['name']}, map {channel}'")
        kernel, inputs = np.array(made["kernel"]), made["shape"][2]
        tables = page.locator("#detail table.kernel")
        assert tables.count() == min(inputs, 16)
        assert ("the first 16 shown" in page.text_content("#detail")) == (inputs > 16)
        for k in range(tables.count()):
            numbers = np.array(tables.nth(k).locator("td").all_text_contents(), float).reshape(kernel.shape[:2])
            np.testing.assert_allclose(numbers, kernel[:, :, k, channel], atol=0.0005 + 1e-9)
