"""An HTTP file server that misbehaves on purpose: ``python tests/lying_http.py ROOT PORT``.

The first path segment picks the behaviour, the rest names a file under ROOT:

* ``/ok/F``: honest range answers (206, Content-Range, ETag);
* ``/truncate/F``: announces the full range, sends half of it, closes the connection;
* ``/drop-once/F``: like truncate, but only the first time each range is asked for;
  the retry gets an honest answer (a flaky network);
* ``/shift/F``: answers the next range (one byte later) and says so in Content-Range;
* ``/lie/F``: answers the next range but claims the one asked for (the body is wrong);
* ``/flip/F``: flips one bit in the middle of every range answer but the first (the data area);
* ``/no-range/F``: ignores Range and sends the whole file with 200;
* ``/grow/F``: claims a total size one byte larger on every answer after the first;
* ``/swap/F``: changes its ETag after the first answer and honours If-Match (412);
* ``/slow/F``: honest, but every answer waits 20 ms first (a distant server);
* ``/weak/F``: honest, with a weak ETag (and If-Match compared strongly: it never matches).

``GET /stats`` returns how many requests each mode served, how many body bytes
(``bytes:MODE``) and how many connections were opened (``connections``), as JSON.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path()
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")
_stats: Counter[str] = Counter()
_seen: set[tuple[str, int, int]] = set()
_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with _lock:
            _stats["connections"] += 1

    def do_GET(self) -> None:
        if self.path == "/stats":
            self._send(200, json.dumps(dict(_stats)).encode(), {"content-type": "application/json"})
            return
        _, mode, rel = self.path.split("/", 2)
        path = ROOT / rel
        if not path.is_file():
            self._send(404, b"not found", {})
            return
        size = path.stat().st_size
        with _lock:
            first_answer = _stats[mode] == 0
            _stats[mode] += 1
        etag = '"v1"' if mode != "swap" or first_answer else '"v2"'
        if mode == "weak":
            etag = 'W/"v1"'
        if mode == "slow":
            time.sleep(0.02)
        match = _RANGE.fullmatch(self.headers.get("range", ""))
        if mode == "no-range" or match is None:
            self._send(200, path.read_bytes(), {"etag": etag})
            return
        if_match = self.headers.get("if-match")
        if if_match is not None and (if_match != etag or etag.startswith("W/")):
            self._send(412, b"precondition failed", {})
            return
        start, end = int(match.group(1)), min(int(match.group(2)), size - 1)
        if start >= size:
            self._send(416, b"", {"content-range": f"bytes */{size}"})
            return
        claimed = (start, end)
        if mode in ("shift", "lie") and end + 1 < size:
            start, end = start + 1, end + 1
            if mode == "shift":
                claimed = (start, end)
        with path.open("rb") as f:
            f.seek(start)
            body = bytearray(f.read(end + 1 - start))
        if mode == "flip" and start > 0:
            body[len(body) // 2] ^= 0x01
        total = size + 1 if mode == "grow" and not first_answer else size
        headers = {"content-range": f"bytes {claimed[0]}-{claimed[1]}/{total}", "etag": etag}
        key = (rel, start, end)
        with _lock:
            again = key in _seen
            _seen.add(key)
        if mode == "truncate" or (mode == "drop-once" and not again):
            self.send_response(206)
            for name, value in {**headers, "content-length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(bytes(body[: len(body) // 2]))
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self._send(206, bytes(body), headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        mode = self.path.split("/")[1] if self.path.count("/") >= 2 else "-"
        with _lock:
            _stats[f"bytes:{mode}"] += len(body)
        self.send_response(status)
        for name, value in {**headers, "content-length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
