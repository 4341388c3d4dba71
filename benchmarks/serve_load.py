"""Does serve.py hold up in real use? Many clients at once, abuse of every kind, and both together.

    python run.py                              # the model it serves (model/saved_model)
    python benchmarks/serve_load.py            # a few minutes
    python benchmarks/serve_load.py --quick    # a smoke run in seconds; its numbers mean nothing

Starts `python serve.py` as a user does (its defaults, but --read_timeout, so that stalled clients are cut off
within the run) on a free port of 127.0.0.1, and talks to it only there, with the standard library's
http.client from one thread per client, each on a connection of its own (kept alive, as a browser's). After a
warm-up (each client sends a few drawings, not measured: each server process traces the network at its first
call, and prepares for each batch size it meets), each phase bounded in count and in time (time_limit):

- valid: `clients` clients each send `requests_per_client` drawings as the page sends them, of several sizes
  (its 560x280 canvas, 1120x560, 300x220, 280x140), one after the other: latency p50/p95/p99, requests/s,
  errors (anything but 200);
- explain: the valid phase again with every second client drawing to `POST /explain` as the page does while you
  draw (each block's output, the saliency: a larger answer, and the network read once more with its
  gradient), the others to /predict: /explain served beside /predict, judged by the valid phase's targets;
- photos: `photo_clients` clients each send `photo_requests_per_client` photos as phones take them (1600x1200
  and 4000x3000 JPEG): cleaning a photo costs far more than a drawing (photo.py works on 1024 pixels, in
  colour), so they are measured apart;
- abuse: `bad_requests` bad requests of every cheap kind in turn, from `clients` clients (a wrong
  Content-Type, no picture, an empty body, decompression bombs of 400 and 64 million pixels, a truncated PNG,
  a body declared over 5 MB, a chunked body over 5 MB), `huge_pictures` legal but huge pictures (7000x7000 PNG,
  just under photo.MAX_PIXELS), and `stalled` clients that send half a body and stop: each must get its
  documented status with a JSON body (a stalled one: the connection closed, after the read timeout), the server
  never a 500 and still up;
- mix: the valid phase again while one client sends huge pictures, bombs and chunked bodies over the limit
  without pause: the others' latency;
- soak: valid requests until `soak_requests` in all: the server's memory then against after the first 1,000.

Prints a table with the server's resident memory (VmRSS) after each phase and whether each target of issues 33
and 37 is met, and writes benchmarks/results/serve_load.json. Figures taken on a busy machine (the load average at the
start is recorded) say little: the targets are for a quiet one.
"""
# ---- settings: each is also a flag, e.g. --clients 20 ----
clients = 50             # concurrent clients sending valid pictures
requests_per_client = 20  # drawings each client sends in the valid and the mix phase
photo_clients = 10       # concurrent clients sending photos in the photos phase
photo_requests_per_client = 5  # photos each of them sends
bad_requests = 1000      # bad requests of the cheap kinds in the abuse phase, the kinds in turn
huge_pictures = 10       # legal but huge pictures (7000x7000 PNG) in the abuse phase, two at a time
stalled = 20             # clients in the abuse phase that send half a body and stop
soak_requests = 10000    # valid requests in all by the end of the soak phase (memory after them)
read_timeout = 5         # the server's --read_timeout here: stalled clients are cut off within the run
time_limit = 600         # seconds each phase may take at most; a phase cut short says so
model = "model/saved_model"  # the SavedModel to serve, as python run.py exports it
server_flags = ""        # more flags for serve.py, e.g. "--threads 4 --batch_wait 0.005"
out = ""                 # the JSON's path (relative to the repo); default: benchmarks/results/serve_load.json,
                         # or serve_load_quick.json with --quick: a smoke run never overwrites a measurement
quick = False            # a smoke run: 4 clients x 3 requests, 2 photos, 40 bad requests, 1 huge picture,
                         # 2 stalled
# ------------------------------------------------------------------------------
import http.client
import io
import itertools
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import flags  # noqa: E402  (the repo's modules are importable only from here on)
import photo  # noqa: E402
import serve  # noqa: E402

WARM_UP_ROUNDS = 3  # drawings each client sends before the valid phase, half of them to /explain, not measured
SETTLE = 2  # seconds the server is left alone before its memory is read after a phase (it returns memory freed
            # after one quiet second)
TARGETS = dict(requests_per_second=100, p99_seconds=1.0, mixed_p99_seconds=2.0, memory_growth=0.15)
SMOKE_RUN = "smoke run (--quick): a few requests of each kind; it checks that the benchmark runs, its numbers " \
            "mean nothing, and it judges no target"


# ---- the pictures ---------------------------------------------------------------------------------------------

STROKES = {  # digits as pen strokes in a unit box (x right, y down)
    1: [[(0.6, 0), (0.45, 1)]],
    4: [[(0.7, 1), (0.7, 0), (0, 0.65), (1, 0.65)]],
    7: [[(0, 0), (1, 0), (0.35, 1)]],
    0: [[(0.5, 0), (0.05, 0.3), (0.1, 0.8), (0.5, 1), (0.9, 0.75), (0.95, 0.25), (0.5, 0)]],
}


def written(number, size, paper=255, pen=0.06):
    """A number written with a pen across a page of size (width, height), grey mode -> a Pillow image."""
    width, height = size
    page = Image.new("L", size, paper)
    draw = ImageDraw.Draw(page)
    digit_height, digit_width = 0.5 * height, min(0.3 * height, 0.8 * width / len(number))
    for place, digit in enumerate(number):
        left, top = 0.1 * width + place * 1.3 * digit_width, 0.25 * height
        for stroke in STROKES[int(digit)]:
            draw.line([(left + x * digit_width, top + y * digit_height) for x, y in stroke], fill=30,
                      width=max(3, round(pen * digit_height)), joint="curve")
    return page


def encoded(image, image_format, **options):
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def drawings():
    """{name: (Content-Type, bytes)}: numbers drawn on the page, as its canvas sends them, of several sizes."""
    return {f"drawing {width}x{height} PNG": ("image/png", encoded(written(number, (width, height)), "PNG"))
            for number, (width, height) in [("47", (560, 280)), ("7", (300, 220)), ("10", (280, 140)),
                                            ("1047", (1120, 560))]}


def photos():
    """{name: (Content-Type, bytes)}: numbers photographed on grey paper, a little blurred, as phones send them."""
    return {f"photo {width}x{height} JPEG": ("image/jpeg", encoded(
        written("1047", (width, height), paper=200).filter(ImageFilter.GaussianBlur(2)).convert("RGB"), "JPEG",
        quality=85)) for width, height in [(1600, 1200), (4000, 3000)]}


def png_header_only(width, height):
    """The start of a PNG that claims width x height pixels: a decompression bomb, refused from its size."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def bad_kinds():
    """{kind: (the request as bytes to write, the status serve.py documents for it)}."""
    def request(content_type, body, *fields):
        head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: {content_type}\r\n" + \
            "".join(f"{field}\r\n" for field in fields)
        if not any(field.startswith(("Content-Length", "Transfer-Encoding")) for field in fields):
            head += f"Content-Length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + body

    chunk = b"%x\r\n" % 2**16 + b"\0" * 2**16 + b"\r\n"
    drawing = encoded(written("7", (300, 220)), "PNG")
    return {"wrong Content-Type": (request("text/plain", b"hello"), 415),
            "not a picture": (request("image/png", b"not a picture at all"), 400),
            "empty body": (request("image/png", b""), 400),
            "bomb 20000x20000": (request("image/png", png_header_only(20000, 20000)), 413),
            "bomb 8000x8000": (request("image/png", png_header_only(8000, 8000)), 413),
            "truncated PNG": (request("image/png", drawing[:len(drawing) // 2]), 400),
            "declared over 5 MB": (request("image/png", b"", f"Content-Length: {6 * 2**20}"), 413),
            "chunked over 5 MB": (request("image/png", chunk * 96, "Transfer-Encoding: chunked"), 413)}


def huge_picture():
    """A legal picture as large as photo.MAX_PIXELS allows: a number across a 7000x7000 RGB page, as PNG."""
    assert 7000 * 7000 <= photo.MAX_PIXELS
    return encoded(written("47", (7000, 7000)).convert("RGB"), "PNG", compress_level=1)


# ---- the server and its clients ---------------------------------------------------------------------------------

def start_server(workdir):
    """python serve.py on a free port of 127.0.0.1, in workdir (model/saved_model there) -> (process, port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(workdir / "serve.log", "w")
    process = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--port", str(port), "--read_timeout",
                                str(read_timeout), *server_flags.split()], cwd=workdir, stdout=log,
                               stderr=subprocess.STDOUT)
    for _ in range(600):
        if "serving" in (workdir / "serve.log").read_text():
            return process, port
        if process.poll() is not None:
            sys.exit(f"error: serve.py stopped: {(workdir / 'serve.log').read_text()[-500:]}")
        time.sleep(0.2)
    process.kill()
    sys.exit("error: serve.py did not start within 2 minutes")


def resident_mb(process, settle=0):
    """The server's resident memory (VmRSS of serve.py and of its processes), MB, after settle seconds without
    requests."""
    time.sleep(settle)
    pids, total = [process.pid], 0
    while pids:
        pid = pids.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            pids += [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except FileNotFoundError:  # it has just ended
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return total / 1024


class Client:
    """One client's connection to the server, kept alive, opened again after the server closed it."""

    def __init__(self, port):
        self.port, self.connection = port, None

    def post(self, content_type, body, path="/predict"):
        """POST path -> (status, the JSON answer or None, seconds)."""
        started = time.perf_counter()
        for attempt in range(2):  # a kept-alive connection may have been closed by the server meanwhile
            try:
                self.connection = self.connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                self.connection.request("POST", path, body, {"Content-Type": content_type})
                reply = self.connection.getresponse()
                status, text = reply.status, reply.read()
                break
            except (http.client.HTTPException, OSError):
                self.connection = None
                if attempt:
                    return 0, None, time.perf_counter() - started  # 0: no answer
        try:
            return status, json.loads(text), time.perf_counter() - started
        except ValueError:
            return status, None, time.perf_counter() - started


def raw_exchange(port, request, wait):
    """Write a request as bytes on a connection of its own (as far as the server reads it) -> (status or 0, JSON
    or None, whether the server closed the connection)."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        try:
            connection.sendall(request)
        except OSError:  # the server stopped reading: its answer is read below
            pass
        connection.settimeout(wait)
        reply, closed = b"", False
        try:
            while chunk := connection.recv(65536):
                reply += chunk
            closed = True
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            pass
    head, _, body = reply.partition(b"\r\n\r\n")
    try:
        return int(head.split()[1]), json.loads(body), closed
    except (IndexError, ValueError):
        return 0, None, closed


# ---- the phases ---------------------------------------------------------------------------------------------------

def valid_load(port, pictures, n_clients, per_client, deadline, explaining=False):
    """n_clients clients at once, each sending per_client pictures (the kinds in turn) to /predict, or with
    explaining every second client to /explain -> [(status, seconds)]."""
    kinds = list(pictures.values())

    def one_client(number):
        client, said = Client(port), []
        path = "/explain" if explaining and number % 2 else "/predict"
        for i in range(per_client):
            if time.monotonic() > deadline:
                break
            content_type, body = kinds[(number + i) % len(kinds)]
            status, answer, seconds = client.post(content_type, body, path)
            answered = answer and "digits" in answer and (path == "/predict" or answer["layers"])
            said.append((status if answered else -status, seconds))
        return said

    with ThreadPoolExecutor(n_clients) as pool:
        return [result for said in pool.map(one_client, range(n_clients)) for result in said]


def summary(results, seconds, rss_mb):
    """[(status, seconds)] of a phase -> its row: requests, errors, requests/s, p50/p95/p99 (s), RSS."""
    latencies = np.array([took for _, took in results]) if results else np.zeros(1)
    return dict(requests=len(results), errors=sum(status != 200 for status, _ in results),
                requests_per_second=len(results) / seconds, p50=float(np.percentile(latencies, 50)),
                p95=float(np.percentile(latencies, 95)), p99=float(np.percentile(latencies, 99)),
                seconds=seconds, rss_mb=rss_mb)


def bad_request(port, request, documented):
    """One bad request -> whether it was answered as documented: that status, a JSON {"error": ...}, and for
    a body over the limit the connection closed."""
    status, answer, closed = raw_exchange(port, request, wait=60)
    return status, status == documented and bool(answer and "error" in answer) and (closed or status != 413)


def stalled_client(port):
    """Half a body, then nothing -> (whether the server closed the connection without answering, seconds)."""
    started = time.perf_counter()
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    status, _, closed = raw_exchange(port, head + b"\x89PNG\r\n\x1a\n" + b"\0" * 500, wait=read_timeout + 30)
    return closed and status == 0, time.perf_counter() - started


def abuse(port, kinds, huge, deadline):
    """The abuse phase -> ({kind: dict(sent, as_documented, statuses)}, [(status, seconds)] of every request)."""
    counts = {kind: dict(sent=0, as_documented=0, statuses={}) for kind in [*kinds, "huge 7000x7000 PNG",
                                                                            "stalled body"]}
    lock, results = threading.Lock(), []

    def record(kind, status, as_documented, seconds):
        with lock:
            row = counts[kind]
            row["sent"] += 1
            row["as_documented"] += bool(as_documented)
            row["statuses"][str(status)] = row["statuses"].get(str(status), 0) + 1
            results.append((200 if as_documented else status or -1, seconds))

    def send(kind):
        if time.monotonic() > deadline:
            return
        started = time.perf_counter()
        if kind == "stalled body":
            closed, seconds = stalled_client(port)
            return record(kind, "closed" if closed else "open", closed, seconds)
        if kind == "huge 7000x7000 PNG":
            status, answer, seconds = Client(port).post("image/png", huge)
            return record(kind, status, status in (200, 503) and answer is not None, seconds)
        status, as_documented = bad_request(port, *kinds[kind])
        record(kind, status, as_documented, time.perf_counter() - started)

    cheap = list(itertools.islice(itertools.cycle(kinds), bad_requests))
    with ThreadPoolExecutor(stalled + 2) as slow, ThreadPoolExecutor(clients) as fast:
        waiting = [slow.submit(send, "stalled body") for _ in range(stalled)]
        waiting += [slow.submit(send, "huge 7000x7000 PNG") for _ in range(huge_pictures)]
        list(fast.map(send, cheap))
        for job in waiting:
            job.result()
    return counts, results


def mix(port, pictures, kinds, huge, deadline):
    """The valid load while one client sends huge pictures, bombs and chunked bodies over the limit without
    pause -> ([(status, seconds)] of the valid clients, the abuser's requests, how many were as documented)."""
    finished, abused = threading.Event(), []

    def abuser():
        for kind in itertools.cycle(["huge", "bomb 20000x20000", "chunked over 5 MB"]):
            if finished.is_set() or time.monotonic() > deadline:
                return
            if kind == "huge":
                status, answer, _ = Client(port).post("image/png", huge)
                abused.append(status in (200, 503) and answer is not None)
            else:
                abused.append(bad_request(port, *kinds[kind])[1])

    thread = threading.Thread(target=abuser)
    thread.start()
    try:
        results = valid_load(port, pictures, clients, requests_per_client, deadline)
    finally:
        finished.set()
        thread.join()
    return results, len(abused), sum(abused)


class MemoryWatch:
    """The server's resident memory, sampled every 0.2 s in a thread of its own: the peak."""

    def __init__(self, process):
        self.process, self.peak_mb, self.stopped = process, 0.0, threading.Event()
        threading.Thread(target=self.watch, daemon=True).start()

    def watch(self):
        while not self.stopped.wait(0.2):
            try:
                self.peak_mb = max(self.peak_mb, resident_mb(self.process))
            except (OSError, TypeError):  # the server has stopped
                return


def timed(phase, *args):
    """Run a phase -> (what it returned, seconds, its deadline passed)."""
    started = time.monotonic()
    result = phase(*args, started + time_limit)
    seconds = time.monotonic() - started
    return result, seconds, seconds > time_limit


def targets_met(rows):
    """{target: whether it is met} (issues 33's and 37's, for a quiet machine)."""
    abuse_kinds = rows["abuse"]["kinds"].values()
    return {**{f"{phase}: 0 errors, >= 100 requests/s, p99 <= 1 s":
               rows[phase]["errors"] == 0 and rows[phase]["requests_per_second"] >= TARGETS["requests_per_second"]
               and rows[phase]["p99"] <= TARGETS["p99_seconds"] for phase in ["valid", "explain"]},
            "mix: the valid clients' p99 <= 2 s": rows["mix"]["p99"] <= TARGETS["mixed_p99_seconds"],
            "abuse: each as documented, no 500, the server up":
            all(kind["as_documented"] == kind["sent"] and "500" not in kind["statuses"] for kind in abuse_kinds)
            and rows["abuse"]["server_up"],
            "memory after the soak within 15% of after the first 1,000 requests":
            rows["soak"]["rss_mb"] <= (1 + TARGETS["memory_growth"]) * rows["valid"]["rss_mb"]}


def print_table(rows, peak_mb):
    print(f"\nserve.py on 127.0.0.1, load average {load_at_start:.1f} at the start"
          f"{' (a busy machine: the figures say little)' if load_at_start > 0.5 else ''}")
    print("| phase | requests | errors | requests/s | p50 (s) | p95 (s) | p99 (s) | server RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| start (after warm-up) | | | | | | | {rows['start']['rss_mb']:.0f} |")
    for phase in ["valid", "explain", "photos", "abuse", "mix", "soak"]:
        row = rows[phase]
        print(f"| {phase}{' (cut short)' if row['cut_short'] else ''} | {row['requests']} | {row['errors']} | "
              f"{row['requests_per_second']:.1f} | {row['p50']:.3f} | {row['p95']:.3f} | {row['p99']:.3f} | "
              f"{row['rss_mb']:.0f} |")
    print(f"peak server RSS: {peak_mb:.0f} MB; abuse \"errors\" are answers other than documented; mix: the "
          f"valid clients', beside {rows['mix']['abuser_requests']} abusive requests "
          f"({rows['mix']['abuser_as_documented']} as documented)")
    print("\n| bad request | sent | as documented | statuses |")
    print("|---|---|---|---|")
    for kind, counts in rows["abuse"]["kinds"].items():
        print(f"| {kind} | {counts['sent']} | {counts['as_documented']} | "
              f"{', '.join(f'{status}: {n}' for status, n in sorted(counts['statuses'].items()))} |")


# ---- the run ------------------------------------------------------------------------------------------------------

globals().update(vars(flags.settings_parser(globals()).parse_args()))
if quick:
    clients, requests_per_client, bad_requests, huge_pictures, stalled, soak_requests, read_timeout = \
        4, 3, 40, 1, 2, 40, 2
    photo_clients, photo_requests_per_client = 2, 1
    print(f"quick: a {SMOKE_RUN}", flush=True)
if not os.path.exists(Path(model) / "saved_model.pb"):
    sys.exit(f"error: no model in {model}; run python run.py first (or give --model)")
load_at_start = os.getloadavg()[0]  # recorded: a figure taken on a busy machine should say so
pictures, kinds, huge = drawings(), bad_kinds(), huge_picture()
workdir = Path(tempfile.mkdtemp(prefix="serve_load_"))
(workdir / "model").mkdir()
os.symlink(Path(model).resolve(), workdir / "model" / "saved_model")
server, port = start_server(workdir)
memory = MemoryWatch(server)
try:
    # Warm-up, not measured: in each server process, TensorFlow traces the network at its first call, and
    # oneDNN prepares its kernels for each batch size it meets, as many as the load brings together.
    valid_load(port, pictures, clients, WARM_UP_ROUNDS, time.monotonic() + time_limit, explaining=True)
    rows = {"start": dict(rss_mb=resident_mb(server, SETTLE))}
    (results, seconds, cut) = timed(valid_load, port, pictures, clients, requests_per_client)
    rows["valid"] = dict(summary(results, seconds, resident_mb(server, SETTLE)), cut_short=cut)
    (results, seconds, cut) = timed(lambda *args: valid_load(*args, explaining=True), port, pictures, clients,
                                    requests_per_client)
    rows["explain"] = dict(summary(results, seconds, resident_mb(server, SETTLE)), cut_short=cut)
    (results, seconds, cut) = timed(valid_load, port, photos(), photo_clients, photo_requests_per_client)
    rows["photos"] = dict(summary(results, seconds, resident_mb(server, SETTLE)), cut_short=cut)
    (bad_counts, results), seconds, cut = timed(abuse, port, kinds, huge)
    rows["abuse"] = dict(summary(results, seconds, resident_mb(server, SETTLE)), cut_short=cut,
                         kinds=bad_counts, server_up=server.poll() is None)
    (results, abused, abused_as_documented), seconds, cut = timed(mix, port, pictures, kinds, huge)
    rows["mix"] = dict(summary(results, seconds, resident_mb(server, SETTLE)), cut_short=cut, abuser_requests=abused,
                       abuser_as_documented=abused_as_documented)
    sent_so_far = 2 * rows["valid"]["requests"] + rows["explain"]["requests"]
    per_client = max(0, -(-(soak_requests - sent_so_far) // clients))
    (results, seconds, cut) = timed(valid_load, port, pictures, clients, per_client)
    rows["soak"] = dict(summary(results, seconds, resident_mb(server, SETTLE)), cut_short=cut,
                        valid_requests_in_all=sent_so_far + len(results))
finally:
    memory.stopped.set()
    server.terminate()
    server.wait(timeout=60)
print_table(rows, memory.peak_mb)
if quick:
    print(f"\n{SMOKE_RUN}")
    met = {}
else:
    met = targets_met(rows)
    for target, ok in met.items():
        print(f"{'met' if ok else 'NOT met'}: {target}")
results = dict(settings=flags.settings_of(globals()), load_average_at_start=load_at_start, cores=os.cpu_count(),
               phases=rows, peak_rss_mb=memory.peak_mb, targets=met)
path = REPO / (out or f"benchmarks/results/serve_load{'_quick' if quick else ''}.json")
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(results, indent=2) + "\n")
print(f"written: {path}")
