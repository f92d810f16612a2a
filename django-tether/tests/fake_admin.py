"""A small local HTTP server standing in for `tether serve --admin` in unit tests.

It records every request and answers from a table the test fills; the real
server is exercised by the end-to-end test (tests/tests/django_site.rs).
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Recorded:
    def __init__(self, method, path, query, headers, body):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<%s %s?%s>" % (self.method, self.path, self.query)


class FakeAdmin:
    def __init__(self):
        self.requests = []
        self.routes = {}
        self.sessions = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded = Recorded(self.command, parts.path, parse_qs(parts.query), dict(self.headers), body)
                with fake.lock:
                    fake.requests.append(recorded)
                status, headers, payload = fake.answer(recorded)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def answer(self, req):
        route = self.routes.get((req.method, req.path))
        if route is not None:
            result = route(req) if callable(route) else route
            status, payload = result[0], result[1]
            content_type = result[2] if len(result) > 2 else "application/json"
            if not isinstance(payload, bytes):
                payload = json.dumps(payload).encode()
            return status, {"Content-Type": content_type}, payload
        if req.method == "GET" and req.path == "/sessions":
            items = [s for s in self.sessions if "username" not in req.query or s["username"] == req.query["username"][0]]
            return 200, {"Content-Type": "application/json"}, json.dumps({"sessions": items}).encode()
        if req.method == "POST" and req.path == "/revoke":
            return 200, {"Content-Type": "application/json"}, b'{"revoked": []}'
        return 404, {"Content-Type": "application/json"}, b'{"error": "not_found", "message": "no route"}'

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def session_json(id, username, user_id, peer="192.0.2.10:50112", since_ms=1_765_000_000_000):
    return {
        "id": id,
        "username": username,
        "user_id": user_id,
        "is_superuser": False,
        "peer": peer,
        "mechanism": "SCRAM-SHA-256",
        "connected_since": "2025-12-06T05:46:40Z",
        "connected_since_unix_ms": since_ms,
        "calls_in": 3,
        "calls_out": 1,
        "calls_in_flight": 0,
    }
