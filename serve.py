"""A page to draw on: write a digit or a number with the mouse or a finger, or drop a photo, and see it read.

    python serve.py                              # then open http://127.0.0.1:8000
    python serve.py --port 8080 --host 0.0.0.0   # reachable from other machines too (a phone on your network)

Serves model/saved_model (as python run.py exports it) and one page, resources/draw.html: the answer, the ten
probabilities of each digit as bars, and the 28x28 pictures the model saw. The page asks `POST /predict` with
a picture's bytes as the body (Content-Type image/png or image/jpeg), which answers JSON read as predict.read
reads, the very preprocessing python predict.py uses:

    {"digits": "2026", "details": "2 0.99, 0 0.97, 2 0.98, 6 0.95",
     "pieces": [{"digit": 2, "sure": true, "probabilities": [10 numbers], "novelty": 0.82,
                 "digit_probability": 0.99, "picture": "data:image/png;base64,..."}, ...]}

"digits" is "?" when there is no digit (then "details" says why, and "pieces" may be empty).

While you draw, the page asks `POST /explain` (the same body, limits and refusals) to show inside the network:
the same answer and, for the first piece, the 28x28 input it reads, each block's output, its probabilities
and the saliency (the gradient of the likeliest digit's logit with respect to each pixel), from the
SavedModel's `explain` signature (predict.load_explainer):

    {"digits": ..., "details": ..., "pieces": [...], "piece": 0, "input": [28 rows of 28],
     "layers": [{"name": "block1", "shape": [14, 14, 32], "values": [14 rows of 14 of 32]}, ...,
                {"name": "dense", "shape": [128], "values": [128 numbers]}],
     "probabilities": [10 numbers], "saliency": [28 rows of 28]}

`GET /kernels` answers the kernels that make each conv block's maps, once: {"layers": [{"name": "block1",
"shape": [5, 5, 1, 32], "kernel": [...], "bias": [32 numbers]}, ...]}. A model exported before there was an
`explain` signature answers both with 501 and the line saying so; /predict still reads. Refusals are
{"error": "..."}: a body over MAX_BYTES, chunked or not, 413 (and the connection is closed); another
Content-Type 415; a file that is not a picture 400; one of more than photo.MAX_PIXELS pixels (a decompression
bomb) 413; a picture over BIG_PICTURE pixels while others that large are already waiting their turn, 503.
The server goes on serving.

waitress serves the Flask app, a production server, from `processes` processes (on Linux), each with its own model:
in one process, much of cleaning a picture holds Python's lock, so one process cannot keep two cores busy.
`threads` requests are read at once in all and the others wait their turn, at most `connection_limit` connections
are open, a connection silent for `read_timeout` seconds (a half-sent body, an idle keep-alive) is closed, and a
body is never buffered past MAX_BYTES. Each request's picture is decoded and cleaned in its own thread, outside any
lock; the model reads the digits of every request waiting at that moment in one call (dynamic batching, as
TensorFlow Serving does), and the explainer, in a thread of its own, the first digit of every /explain waiting. A
picture of more than BIG_PICTURE pixels is decoded and cleaned one at a time, so huge pictures wait for one another
and not for the small ones. The memory a busy moment took is handed back once the server is quiet. It listens on
127.0.0.1 unless told otherwise. Its limits under load: docs/serving.md.
"""
# ---- settings: each is also a flag, e.g. --port 8080 ----
host = "127.0.0.1"       # the address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network)
port = 8000              # the port to listen on
processes: int = None    # server processes, each with its own model and its share of the threads and
                         # connections (in one, much of the cleaning holds Python's lock: it cannot keep two cores
                         # busy)
threads = 8              # requests decoded and cleaned at once, in all the processes (waitress' threads); the
                         # others wait their turn
connection_limit = 100   # open connections at most, in all the processes; more wait to be accepted
read_timeout = 20        # seconds a connection may stay silent (a stalled upload, an idle keep-alive) before it
                         # is closed
batch_wait = 0.002       # seconds the model waits for more digits after the first one arrives
# ------------------------------------------------------------------------------
import base64
import ctypes
import errno
import io
import json
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager, nullcontext, redirect_stderr
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import waitress
from flask import Flask, jsonify, request, send_file
from flask.json.provider import JSONProvider
from PIL import Image
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask
from werkzeug.exceptions import HTTPException

import flags
import photo
import predict

MAX_BYTES = 5 * 1024 * 1024  # a phone photo as JPEG is 2-5 MB
TOO_LARGE = f"body over {MAX_BYTES // 2**20} MB: send a smaller picture"
IMAGE_TYPES = ("image/png", "image/jpeg")
PAGE = Path(__file__).resolve().parent / "resources" / "draw.html"
BIG_PICTURE = 4_000_000  # pixels, as decoded (JPEG's at a reduced scale): a phone's screenshot is 3 million
BIG_ADMITTED = 2  # big pictures in the server at once, one read and one waiting; more are refused with 503
MAX_BATCH = 256  # digits the model reads in one call at most (a picture holds photo.MAX_DIGITS at most)
MALLOC_ARENAS = 2  # glibc's memory pools for all the threads (docs/serving.md: memory that only grew)
IDLE = 1.0  # seconds without a request after which the memory freed is handed back to the system
DECIMALS = 4  # places the numbers of /explain and /kernels are rounded to: JSON less than half the size
ACCEPT_TURN = 0.01  # seconds a process that stopped listening (accepting_the_fewest) waits to look again
LINGER = 5  # seconds a refused body is still read (and dropped) so that its sender reads the refusal


def create_app(classify, explainer, min_confidence=predict.MIN_CONFIDENCE, max_novelty=predict.MAX_NOVELTY,
               min_digit_probability=predict.MIN_DIGIT_PROBABILITY, max_wait=batch_wait, big_pictures=None):
    """The Flask app: GET / is the page, POST /predict reads a picture, POST /explain reads it and shows inside
    the network, GET /kernels the network's kernels. classify: as predict.read's (predict.load_classifier);
    explainer: predict.load_explainer's (look_inside, layers), or the predict.NoExplainer it raised (then /explain
    and /kernels refuse with its line, 501). classify and look_inside are each called by one thread of their own,
    with the digits of every request waiting (BatchedModel). big_pictures: the BigPictures shared by the
    processes serving, or None for the app's own."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BYTES
    app.json = FastJSON(app)
    model = app.extensions["model"] = BatchedModel(classify, max_wait)
    if isinstance(explainer, predict.NoExplainer):
        explaining = layer_names = kernels = None
    else:
        look_inside, layers = explainer
        explaining = app.extensions["explainer"] = BatchedModel(look_inside, max_wait)
        layer_names, kernels = network_layers(layers)
    big_pictures = big_pictures or BigPictures()
    limits = (min_confidence, max_novelty, min_digit_probability)

    @app.get("/")
    def page():
        return send_file(PAGE, mimetype="text/html")

    @app.post("/predict")
    def read_picture():
        return jsonify(answer(read_request(model, big_pictures, limits)))

    @app.post("/explain")
    def explain_picture():
        if explaining is None:
            raise Refused(501, str(explainer))
        reading = read_request(model, big_pictures, limits)
        inside = explaining(reading.pictures[:1]) if len(reading.pictures) else None
        return jsonify(explanation(reading, inside, layer_names))

    @app.get("/kernels")
    def network_kernels():
        if kernels is None:
            raise Refused(501, str(explainer))
        return jsonify(layers=kernels)

    @app.errorhandler(Refused)
    def refused(error):
        return refuse(*error.args)

    @app.errorhandler(HTTPException)
    def http_error(error):  # 404, 405, 413 from werkzeug: JSON like the rest
        if error.code == 413:
            return refuse(413, TOO_LARGE)
        return refuse(error.code, error.description)

    return app


class FastJSON(JSONProvider):
    """Flask's JSON written by orjson: the same text at a fraction of the cost. An /explain's 10,000 numbers cost
    Python's json about as much as the network's explaining of them."""

    def dumps(self, obj, **kwargs):
        return orjson.dumps(obj).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)


def read_request(model, big_pictures, limits):
    """The request's picture, cleaned and read as predict.read does (model: BatchedModel; limits: predict.judged's
    min_confidence, max_novelty and min_digit_probability) -> predict.Reading; raises Refused."""
    content_type = request.mimetype
    if content_type not in IMAGE_TYPES:
        raise Refused(415, f"Content-Type {content_type or 'missing'}: send image/png or image/jpeg")
    body = request.get_data(cache=False)  # over MAX_CONTENT_LENGTH: werkzeug raises 413 here
    if not body:
        raise Refused(400, "empty body: send the picture's bytes")
    try:
        image = photo.open_picture(io.BytesIO(body))
        with big_pictures.turn(image):
            pictures = photo.mnist_digits(image, model)  # predict.read's cleaning ...
        return predict.judged(pictures, model(pictures), *limits)  # ... and answer
    except photo.NoDigit as reason:
        return predict.no_digit(reason)
    except photo.PictureTooLarge as error:
        raise Refused(413, str(error))
    except BigPictures.Busy as error:
        raise Refused(503, str(error))
    except ValueError as error:
        raise Refused(400, str(error))


class Refused(Exception):
    """(status, message): the request is refused with {"error": message}."""


def refuse(status, message):
    return jsonify(error=message), status


def answer(reading):
    """predict.Reading -> the JSON-ready answer (see the module's docstring)."""
    pieces = [dict(digit=int(p.argmax()), sure=bool(sure), probabilities=[round(float(x), 4) for x in p],
                   novelty=round(float(novelty), 3), digit_probability=round(float(gate), 3),
                   picture=png_data_url(picture))
              for picture, p, novelty, gate, sure in zip(reading.pictures, reading.probabilities, reading.novelty,
                                                         reading.digit_probability, reading.sure)]
    return dict(digits=reading.digits, details=reading.details, pieces=pieces)


def explanation(reading, inside, layer_names):
    """predict.Reading, what predict.load_explainer's look_inside made of its first piece (None for no piece) and
    the layers' names -> the JSON-ready answer of /explain: /predict's (answer) and {"piece": 0 (the first piece,
    the leftmost, is the one shown), "input": 28 rows of 28, "layers": [{"name", "shape", "values" (nested as the
    shape: [h][w][channels] or [units])}, ...], "probabilities": [10] (the explained network's: of an ensemble,
    its first member's), "saliency": 28 rows of 28}, every number rounded to DECIMALS places."""
    if inside is None:
        return dict(answer(reading), piece=None, input=None, layers=[], probabilities=None, saliency=None)
    layers = [dict(name=name, shape=list(inside[f"layer_{i}"].shape[1:]), values=rounded(inside[f"layer_{i}"][0]))
              for i, name in enumerate(layer_names)]
    return dict(answer(reading), piece=0, input=rounded(inside["input"][0]), layers=layers,
                probabilities=rounded(inside["probabilities"][0]), saliency=rounded(inside["saliency"][0]))


def network_layers(layers):
    """predict.load_explainer's layers, what is the same for every picture -> (their names in the network's order;
    the kernels of those a convolution makes, JSON-ready: [{"name", "shape" [h, w, in, out], "kernel" (nested as
    the shape), "bias" [out]}, ...]). GET /kernels sends them once: repeated in every /explain they would make it
    ten times larger (DigitNet's are 93,000 numbers)."""
    return [layer["name"] for layer in layers], [
        dict(name=layer["name"], shape=list(layer["kernel"].shape), kernel=rounded(layer["kernel"]),
             bias=rounded(layer["bias"])) for layer in layers if "kernel" in layer]


def rounded(values):
    """An array -> nested lists of its numbers rounded to DECIMALS places."""
    return np.round(np.asarray(values, np.float64), DECIMALS).tolist()


def png_data_url(picture):
    """A 28x28 float picture in [0, 1] -> a data: URL of it as an 8-bit grey PNG, for an <img>."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(picture * 255).astype(np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---- the model, shared: dynamic batching ---------------------------------------------------------------------

class BatchedModel:
    """classify for many threads at once. Each call's pictures wait in a queue; one thread takes every call
    waiting (after the first, up to max_wait seconds more for others, until MAX_BATCH digits), hands all their
    pictures to classify in one call and gives each caller its own rows. The batch is padded with blank
    pictures to a power of two: the model then meets a few shapes only, and TensorFlow (oneDNN) keeps a
    compiled kernel and buffers for each shape it meets."""

    def __init__(self, classify, max_wait):
        self.classify, self.max_wait = classify, max_wait
        self.waiting = queue.SimpleQueue()
        threading.Thread(target=self.serve_forever, name="model", daemon=True).start()

    def __call__(self, pictures):
        call = SimpleNamespace(pictures=np.asarray(pictures, np.float32), done=threading.Event(), said=None,
                               error=None)
        self.waiting.put(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.said

    def serve_forever(self):
        while True:
            self.answer(self.gather())

    def gather(self):
        """The calls waiting: the first as it comes, then any others for up to max_wait seconds. A quiet moment
        (IDLE seconds without one) returns the memory freed to the system first."""
        try:
            calls = [self.waiting.get(timeout=IDLE)]
        except queue.Empty:  # a quiet moment: hand back what the last busy one freed, then wait
            return_free_memory()
            calls = [self.waiting.get()]
        count, deadline = len(calls[0].pictures), time.monotonic() + self.max_wait
        while count < MAX_BATCH:
            try:
                calls.append(self.waiting.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
            count += len(calls[-1].pictures)
        return calls

    def answer(self, calls):
        pictures = np.concatenate([call.pictures for call in calls])
        padded = 1 << max(0, len(pictures) - 1).bit_length()
        try:
            said = self.classify(np.concatenate([pictures, np.zeros((padded - len(pictures),) + pictures.shape[1:],
                                                                    np.float32)]))
        except Exception as error:  # the model failed (out of memory...): each caller raises it
            for call in calls:
                call.error = error
                call.done.set()
            return
        start = 0
        for call in calls:
            stop = start + len(call.pictures)
            call.said = {name: np.asarray(value)[start:stop] for name, value in said.items()}
            start = stop
            call.done.set()


class BigPictures:
    """A picture of more than BIG_PICTURE pixels waits for the one before it to be decoded and cleaned: huge
    pictures cost their senders (they take turns), not everyone (each holds one of the server's threads and a
    large buffer while it is read). At most BIG_ADMITTED are in the server at once; more are refused (Busy).
    For several processes, their semaphore and lock are multiprocessing's, made before the processes fork."""

    class Busy(Exception):
        pass

    def __init__(self, threads_or_processes=threading):
        self.admitted = threads_or_processes.BoundedSemaphore(BIG_ADMITTED)
        self.reading = threads_or_processes.Lock()

    @contextmanager
    def turn(self, image):
        image.draft(None, (photo.WORKING_SIDE, photo.WORKING_SIDE))  # a JPEG is decoded at 1/2 to 1/8 its size
        width, height = image.size
        if width * height <= BIG_PICTURE:
            yield
            return
        if not self.admitted.acquire(False):  # threading says blocking=, multiprocessing block=
            raise BigPictures.Busy(f"busy reading other pictures of more than {BIG_PICTURE // 10**6} million pixels:"
                                   " try again in a moment, or send a smaller picture")
        try:
            with self.reading:
                yield
        finally:
            self.admitted.release()


# ---- the server ----------------------------------------------------------------------------------------------

class JsonRefusal(ErrorTask):
    """What waitress refuses itself, before the app sees the request (a body over its limit, a malformed
    request), as JSON like the app's refusals; the connection is then closed."""

    def execute(self):
        self.channel.refused = True
        error = self.request.error
        message = TOO_LARGE if error.code == 413 else f"{error.reason}: {error.body}"
        body = json.dumps(dict(error=message)).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class Channel(HTTPChannel):
    """waitress' connection, its refusals as JSON (JsonRefusal), closed after one the way web servers close
    (a lingering close): the answer sent, the rest of the refused body read and dropped until the client
    stops, or for LINGER seconds at most. Closed at once, with the body still coming, the connection is reset,
    and a client still sending (Python's http.client, say) never reads the answer."""
    error_task_class = JsonRefusal
    refused = False
    linger_until = None

    def handle_close(self):
        if not self.refused or self.linger_until is not None or not self.connected:
            return super().handle_close()
        self.linger_until, self.will_close = time.monotonic() + LINGER, False
        try:
            self.socket.shutdown(socket.SHUT_WR)  # the answer is sent: the client reads it, then the end
        except OSError:
            super().handle_close()

    def readable(self):
        return self.linger_until is not None or super().readable()

    def writable(self):
        if self.linger_until is not None and time.monotonic() > self.linger_until:
            self.will_close = True  # handle_write closes it
        return super().writable()

    def handle_read(self):
        if self.linger_until is None:
            return super().handle_read()
        try:
            dropped = self.recv(self.adj.recv_bytes)  # b"" once the client has closed: recv closes it too
        except OSError:
            return super().handle_close()
        if dropped and time.monotonic() > self.linger_until:
            super().handle_close()


def make_server(app, listening, settings, open_connections=None, index=0):
    """waitress serving app on the socket already listening, within the settings' limits. open_connections: for
    one of several processes sharing the socket, the count of each one's open connections (a shared array), and
    index, this one's place in it (accepting_the_fewest)."""
    server = waitress.create_server(
        app, sockets=[listening], threads=settings.threads, connection_limit=settings.connection_limit,
        channel_timeout=settings.read_timeout, cleanup_interval=1, max_request_body_size=MAX_BYTES + 1,
        asyncore_use_poll=True)  # poll: select() cannot watch file descriptors past 1024
    server.channel_class = Channel
    if open_connections is not None:
        accepting_the_fewest(server, open_connections, index)
    return server


def accepting_the_fewest(server, open_connections, index):
    """The server listens for new connections only while no other process has fewer open (open_connections, a
    multiprocessing array, one count for each, kept up to date by each at every turn of its loop). Processes
    that share a listening socket otherwise race for each new connection, and the one that wakes first takes
    it: at the start, when all are idle, one takes nearly all, and a browser's connection, kept alive, stays
    where it landed. So the connections are shared out evenly, as a load balancer's "least connections" does.
    A process that stopped listening learns that the others caught up only when its loop turns: every
    ACCEPT_TURN seconds at the least, else new connections would wait for it (waitress' loop waits a second)."""
    server.adj.asyncore_loop_timeout = ACCEPT_TURN  # as a setting, waitress takes whole seconds only
    readable = server.readable

    def readable_if_fewest():
        open_connections[index] = len(server._map)  # its channels, and the listening socket and wake-up pipe
        return readable() and open_connections[index] <= min(open_connections)
    server.readable = readable_if_fewest


def glibc():
    """The C library's functions where it is glibc (its malloc's settings), else None."""
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


GLIBC = glibc()


def fewer_malloc_arenas():
    """glibc gives each thread that allocates while others do a pool (arena) of its own, up to 8 per core, and
    keeps what is freed there for that pool's reuse: the request threads' large, short-lived arrays (a photo's
    cleaning) then pile up as memory that is never returned. MALLOC_ARENAS pools for all of them (glibc's
    M_ARENA_MAX, set before the threads start)."""
    m_arena_max = -8
    if GLIBC:
        GLIBC.mallopt(m_arena_max, MALLOC_ARENAS)


def return_free_memory():
    """What malloc keeps freed in its pools, handed back to the system (glibc's malloc_trim)."""
    if GLIBC:
        GLIBC.malloc_trim(0)


def main(argv=None):
    parser = flags.settings_parser(globals(), unset="2 on Linux, 1 elsewhere")
    parser.add_argument("--min_confidence", type=float, default=predict.MIN_CONFIDENCE,
                        help=f"answer ? below this probability (default {predict.MIN_CONFIDENCE}; 0: never for this)")
    parser.add_argument("--max_novelty", type=float, default=predict.MAX_NOVELTY,
                        help=f"answer ? above this novelty (default {predict.MAX_NOVELTY}; inf: never for this)")
    parser.add_argument("--min_digit_probability", type=float, default=predict.MIN_DIGIT_PROBABILITY,
                        help=f"answer ? below this probability of being a digit at all, the digit gate's (default "
                             f"{predict.MIN_DIGIT_PROBABILITY}; 0: never for this)")
    args = parser.parse_args(argv)
    if args.processes is None:
        args.processes = 2 if sys.platform.startswith("linux") else 1
    for name, lowest in [("processes", 1), ("threads", args.processes), ("connection_limit", args.processes),
                         ("read_timeout", 1)]:
        if getattr(args, name) < lowest:
            parser.error(f"--{name} {getattr(args, name)}: must be at least {lowest}"
                         + (" (one for each process)" if name in ("threads", "connection_limit") else ""))
    if args.processes > 1 and "fork" not in multiprocessing.get_all_start_methods():
        parser.error(f"--processes {args.processes}: this system cannot fork a process (Windows); use 1")
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: must be in 1..65535")
    if not 0 <= args.batch_wait <= 1:
        parser.error(f"--batch_wait {args.batch_wait}: must be 0 to 1 second")
    if not os.path.exists(f"{predict.SAVED_MODEL}/saved_model.pb"):
        print(f"error: no model in {predict.SAVED_MODEL}; run python run.py first", file=sys.stderr)
        return 2
    fewer_malloc_arenas()
    try:  # before TensorFlow starts: a port that is taken is said at once
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        listening = socket.create_server((args.host, args.port), family=family, backlog=args.connection_limit)
    except OSError as error:
        print(f"error: {cannot_listen(args.host, args.port, error)}", file=sys.stderr)
        return 2
    if args.processes > 1:
        return serve_in_processes(listening, args)
    server = loaded_server(listening, args, BigPictures(), args.threads, args.connection_limit)
    print(serving_line(args), flush=True)
    server.run()  # until Ctrl-C
    return 0


def serving_line(args):
    processes = f"{args.processes} process{'es' if args.processes > 1 else ''}"
    return f"serving {predict.SAVED_MODEL} on http://{args.host}:{args.port} ({processes}; Ctrl-C stops)"


def loaded_server(listening, args, big_pictures, threads, connection_limit, open_connections=None, index=0):
    """The model loaded, the app made and waitress serving it on the listening socket with these many threads
    and connections (a process's share; open_connections and index: make_server's)."""
    try:
        explainer = predict.load_explainer()
    except predict.NoExplainer as reason:  # /predict works; /explain says why it cannot
        print(f"note: {reason}", file=sys.stderr)
        explainer = reason
    app = create_app(predict.load_classifier(), explainer, args.min_confidence, args.max_novelty,
                     args.min_digit_probability, args.batch_wait, big_pictures)
    return make_server(app, listening, SimpleNamespace(threads=threads, connection_limit=connection_limit,
                                                       read_timeout=args.read_timeout), open_connections, index)


def serve_in_processes(listening, args):
    """args.processes processes serving the listening socket, each with its own model, batch and share of the
    threads and connections, each accepting new connections while it has the fewest open (accepting_the_fewest).
    In a process Python runs one thread at a time, and much of cleaning a picture holds that lock (Python's own
    steps, and some of numpy's, scipy's and Pillow's): one process cannot keep two cores busy. They are
    forked before TensorFlow starts (TensorFlow's threads do not survive a fork), share the BigPictures turns, and
    stop with this one (Ctrl-C, SIGTERM, or its death). If one stops, the others are stopped and the line says
    why. -> exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    forked = multiprocessing.get_context("fork")
    big_pictures = BigPictures(forked)
    open_connections = forked.Array("i", args.processes, lock=False)  # each writes its own count alone
    workers, reports = [], []
    for index in range(args.processes):
        receive, send = forked.Pipe(duplex=False)
        share = [limit // args.processes + (index < limit % args.processes)
                 for limit in (args.threads, args.connection_limit)]
        workers.append(forked.Process(target=serve_one, name=f"serve.py process {index + 1}",
                                      args=(listening, args, big_pictures, open_connections, send, index, *share)))
        workers[-1].start()
        send.close()  # the process holds its own end: when it dies, this one reads the end of the pipe
        reports.append(receive)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the finally below stops the processes
    try:
        starting = dict(zip(reports, workers))
        while starting:  # each process says it serves, or why it cannot
            ready = multiprocessing.connection.wait([*starting, *(w.sentinel for w in starting.values())])
            for report, worker in list(starting.items()):
                if report not in ready and worker.sentinel not in ready:
                    continue
                try:
                    problem = report.recv()
                except EOFError:  # it died before saying anything (killed, out of memory)
                    worker.join()
                    problem = f"it stopped (exit status {worker.exitcode})"
                if problem:
                    print(f"error: {worker.name} could not start: {problem}", file=sys.stderr)
                    return 2
                del starting[report]
        print(serving_line(args), flush=True)
        stopped = multiprocessing.connection.wait([worker.sentinel for worker in workers])
        worker = next(w for w in workers if w.sentinel in stopped)
        worker.join()
        print(f"error: {worker.name} stopped (exit status {worker.exitcode}); the others are stopped too",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the terminal's group: each stops itself
        return 0
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join()


def serve_one(listening, args, big_pictures, open_connections, report, index, threads, connection_limit):
    """One process of serve_in_processes: loads the model, says on `report` "" or why it cannot, and serves until
    stopped. Stops when the first process dies, even by SIGKILL (Linux' parent-death signal). The first process
    alone says the model's notes."""
    pr_set_pdeathsig = 1
    if GLIBC:
        GLIBC.prctl(pr_set_pdeathsig, signal.SIGTERM)
    try:
        with nullcontext() if index == 0 else redirect_stderr(io.StringIO()):
            tensorflow_on_its_share_of_the_cores(args.processes)
            server = loaded_server(listening, args, big_pictures, threads, connection_limit, open_connections,
                                   index)
    except KeyboardInterrupt:
        return
    except Exception as error:
        report.send(f"{type(error).__name__}: {error}")
        sys.exit(1)
    report.send("")
    server.run()  # until SIGINT (Ctrl-C) or SIGTERM


def tensorflow_on_its_share_of_the_cores(processes):
    """TensorFlow's threads in this process, before it starts: the cores shared among the processes. Each would
    else keep a pool of threads as large as all the cores, and with every core already busy cleaning pictures,
    their threads spin waiting for one another."""
    from devices import import_tensorflow
    tf = import_tensorflow()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    tf.config.threading.set_intra_op_parallelism_threads(max(1, cores // processes))
    tf.config.threading.set_inter_op_parallelism_threads(max(1, cores // processes))


def cannot_listen(host, port, error):
    """Why the server cannot listen on host:port, in one line."""
    if error.errno == errno.EADDRINUSE:
        return f"port {port} is already in use on {host}: stop what uses it, or choose another with --port"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


if __name__ == "__main__":
    sys.exit(main())
