"""Test helpers shared by the download, COCO and prepare tests: loopback HTTP servers the tests start themselves.

    closed_port_url()   a 127.0.0.1 URL where nothing listens (a connection is refused at once)
    LabServer()         files held in memory, served on 127.0.0.1 with Range, ETags and programmable faults
"""

import gzip
import hashlib
import http.server
import socket
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Callable


def closed_port_url() -> str:
    """http://127.0.0.1:<port> with nothing listening there, so a connection is refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


class LabServer:
    """Files in memory, served over HTTP on 127.0.0.1 with Range support and per-path programmable behaviour.

    faults[path] is a list consumed one per request: "500" (error status), "cut:N" (send N bytes of the body,
    hang up), "503:ra" (503 with Retry-After: 0). Per path, optionally:
      ignore_range   answer 200 with the whole file to any Range request
      content_type   the Content-Type header (none by default, like a bare server)
      encoding       "gzip" sends the body gzip-compressed (any other value is sent as the header, body unchanged)
      framing        "length" (default: Content-Length), "close" (no length: the end of the body is the hang-up)
                     or "chunked" (HTTP/1.1 chunked transfer encoding)
      trickle        (bytes, seconds): send the body that many bytes at a time with that pause in between
      before_body    a callable run after the headers went out and before the body (e.g. to fill the disk)
    `honor_if_range`: answer a Range whose If-Range no longer matches with the whole file (RFC 9110); by default
    the If-Range header is ignored, like many mirrors. `etags`: send an ETag (sha1 of the file).
    `requests` records (method, path, Range header) for every request, `headers` every request's headers, and
    `max_inflight` the peak concurrency.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.ignore_range: set[str] = set()
        self.content_type: dict[str, str] = {}
        self.encoding: dict[str, str] = {}
        self.framing: dict[str, str] = {}
        self.trickle: dict[str, tuple[int, float]] = {}
        self.before_body: dict[str, Callable[[], None]] = {}
        self.honor_if_range = False
        self.etags = True
        self.delay = 0.0
        self.requests: list[tuple[str, str, str | None]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def etag(self, path: str) -> str:
        return '"' + hashlib.sha1(self.files[path]).hexdigest() + '"'

    def gets(self, path: str | None = None) -> list[tuple[str, str, str | None]]:
        """GET requests so far (for one path, or all)."""
        return [r for r in self.requests if r[0] == "GET" and (path is None or r[1] == path)]

    def start(self) -> "LabServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(head=True)

            def do_GET(self):
                self.answer(head=False)

            def answer(self, head):
                path = urllib.parse.urlsplit(self.path).path
                with server.lock:
                    server.requests.append((self.command, path, self.headers.get("Range")))
                    server.headers.append(dict(self.headers.items()))
                    fault = server.faults[path].pop(0) if server.faults[path] and not head else None
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    self.respond(path, fault, head)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a test of exactly that): nothing to tell anyone
                finally:
                    with server.lock:
                        server.inflight -= 1

            def empty(self, status, **headers):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def respond(self, path, fault, head):
                if fault in ("500", "503:ra"):
                    return self.empty(int(fault[:3]), **({"Retry_After": "0"} if fault == "503:ra" else {}))
                data = server.files.get(path)
                if data is None:
                    return self.empty(404)
                body, status = self.select(path, data)
                if status == 416:
                    return self.empty(416, Content_Range=f"bytes */{len(data)}")
                framing = server.framing.get(path, "length")
                if framing == "chunked":
                    self.protocol_version = "HTTP/1.1"  # chunked framing exists only in HTTP/1.1
                self.send_response(status)
                if path in server.content_type:
                    self.send_header("Content-Type", server.content_type[path])
                if path in server.encoding:
                    self.send_header("Content-Encoding", server.encoding[path])
                if framing == "length":
                    self.send_header("Content-Length", str(len(body)))
                elif framing == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                if server.etags:
                    self.send_header("ETag", server.etag(path))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {len(data) - len(body)}-{len(data) - 1}/{len(data)}")
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                if head:
                    return
                if path in server.before_body:
                    server.before_body[path]()
                if fault and fault.startswith("cut:"):
                    return self.send_body(path, body[:int(fault[4:])], framing, finished=False)
                self.send_body(path, body, framing, finished=True)

            def select(self, path, data):
                """(body, status) for this request: the whole file, a range of it, or 416."""
                if server.encoding.get(path) == "gzip":
                    return gzip.compress(data, mtime=0), 200  # like most servers: no ranges of a compressed body
                rng = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if not rng or path in server.ignore_range:
                    return data, 200
                if server.honor_if_range and if_range is not None and if_range != server.etag(path):
                    return data, 200
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    return b"", 416
                return data[start:], 206

            def send_body(self, path, body, framing, finished):
                step, pause = server.trickle.get(path, (len(body) or 1, 0.0))
                for i in range(0, len(body), step):
                    piece = body[i:i + step]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece)
                    self.wfile.flush()
                    if pause:
                        time.sleep(pause)
                if finished and framing == "chunked":
                    self.wfile.write(b"0\r\n\r\n")

        return Handler
