"""A page to draw on: write a digit or a number with the mouse or a finger, or drop a photo, and see it read.

    python serve.py                              # then open http://127.0.0.1:8000
    python serve.py --port 8080 --host 0.0.0.0   # reachable from other machines too (a phone on your network)

Serves model/saved_model (as python run.py exports it) and one page, resources/draw.html: the answer, the ten
probabilities of each digit as bars, and the 28x28 pictures the model saw. The page asks `POST /predict` with
a picture's bytes as the body (Content-Type image/png or image/jpeg), which answers JSON read by predict.read,
the very preprocessing python predict.py uses:

    {"digits": "2026", "details": "2 0.99, 0 0.97, 2 0.98, 6 0.95",
     "pieces": [{"digit": 2, "sure": true, "probabilities": [10 numbers], "novelty": 0.82,
                 "picture": "data:image/png;base64,..."}, ...]}

"digits" is "?" when there is no digit (then "details" says why, and "pieces" may be empty). A body over
MAX_BYTES is refused with 413, another Content-Type with 415, a file that is not a picture with 400, and one
of more than photo.MAX_PIXELS pixels (a decompression bomb) with 413, each as {"error": "..."}; the server
goes on serving. Flask's own server: meant for your machine, so it listens on 127.0.0.1 unless told otherwise.
"""
import argparse
import base64
import errno
import io
import os
import socket
import sys
import threading
from pathlib import Path

import numpy as np
from flask import Flask, jsonify, request, send_file
from PIL import Image
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server, select_address_family

import photo
import predict

MAX_BYTES = 5 * 1024 * 1024  # a phone photo as JPEG is 2-5 MB
IMAGE_TYPES = ("image/png", "image/jpeg")
PAGE = Path(__file__).resolve().parent / "resources" / "draw.html"


def create_app(classify, min_confidence=predict.MIN_CONFIDENCE, max_novelty=predict.MAX_NOVELTY):
    """The Flask app: GET / is the page, POST /predict reads a picture. classify: as predict.read's
    (predict.load_classifier), called by one request at a time."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BYTES
    one_at_a_time = threading.Lock()

    @app.get("/")
    def page():
        return send_file(PAGE, mimetype="text/html")

    @app.post("/predict")
    def read_picture():
        content_type = request.mimetype
        if content_type not in IMAGE_TYPES:
            return refuse(415, f"Content-Type {content_type or 'missing'}: send image/png or image/jpeg")
        body = request.get_data(cache=False)  # over MAX_CONTENT_LENGTH: werkzeug raises 413 here
        if not body:
            return refuse(400, "empty body: send the picture's bytes")
        try:
            with one_at_a_time:
                reading = predict.read(io.BytesIO(body), classify, min_confidence, max_novelty)
        except photo.PictureTooLarge as error:
            return refuse(413, str(error))
        except ValueError as error:
            return refuse(400, str(error))
        return jsonify(answer(reading))

    @app.errorhandler(HTTPException)
    def http_error(error):  # 404, 405, 413 from werkzeug: JSON like the rest
        if error.code == 413:
            return refuse(413, f"body over {MAX_BYTES // 2**20} MB: send a smaller picture")
        return refuse(error.code, error.description)

    return app


def refuse(status, message):
    return jsonify(error=message), status


def answer(reading):
    """predict.Reading -> the JSON-ready answer (see the module's docstring)."""
    pieces = [dict(digit=int(p.argmax()), sure=bool(sure), probabilities=[round(float(x), 4) for x in p],
                   novelty=round(float(novelty), 3), picture=png_data_url(picture))
              for picture, p, novelty, sure in zip(reading.pictures, reading.probabilities, reading.novelty,
                                                   reading.sure)]
    return dict(digits=reading.digits, details=reading.details, pieces=pieces)


def png_data_url(picture):
    """A 28x28 float picture in [0, 1] -> a data: URL of it as an 8-bit grey PNG, for an <img>."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(picture * 255).astype(np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this "
                                                            "machine only; 0.0.0.0: every network)")
    parser.add_argument("--port", type=int, default=8000, help="(default 8000)")
    parser.add_argument("--min_confidence", type=float, default=predict.MIN_CONFIDENCE,
                        help=f"answer ? below this probability (default {predict.MIN_CONFIDENCE}; 0: never for this)")
    parser.add_argument("--max_novelty", type=float, default=predict.MAX_NOVELTY,
                        help=f"answer ? above this novelty (default {predict.MAX_NOVELTY}; inf: never for this)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: must be in 1..65535")
    if not os.path.exists(f"{predict.SAVED_MODEL}/saved_model.pb"):
        print(f"error: no model in {predict.SAVED_MODEL}; run python run.py first", file=sys.stderr)
        return 2
    try:  # before TensorFlow starts: a port that is taken is said at once
        listening = socket.create_server((args.host, args.port), family=select_address_family(args.host, args.port))
    except OSError as error:
        print(f"error: {cannot_listen(args.host, args.port, error)}", file=sys.stderr)
        return 2
    app = create_app(predict.load_classifier(), args.min_confidence, args.max_novelty)
    with listening:  # Flask's development server, on the socket already bound (it takes a copy)
        server = make_server(args.host, args.port, app, threaded=True, fd=listening.fileno())
    print(f"serving {predict.SAVED_MODEL} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    server.serve_forever()  # until Ctrl-C
    return 0


def cannot_listen(host, port, error):
    """Why the server cannot listen on host:port, in one line."""
    if error.errno == errno.EADDRINUSE:
        return f"port {port} is already in use on {host}: stop what uses it, or choose another with --port"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


if __name__ == "__main__":
    sys.exit(main())
