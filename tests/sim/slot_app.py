#!/usr/bin/env python3
"""The tiny real HTTP app a simulated container runs (started by the `docker` shim).

Behaviour comes from the image's config labels (passed by the shim as a JSON file):
  sim.health=healthy|unhealthy   GET /health answers 200 or 500
  sim.requires-env=K1,K2         exits 1 at start, naming the missing key, when one is absent
  sim.bearer-env=KEY             every path but /health needs `Authorization: Bearer $KEY` (else 401)
  sim.start-delay-seconds=N      listens only after N seconds
  sim.fail-paths=/p1,/p2         those paths answer 500 (after the bearer check): a broken build
  sim.version=...                reported by /health and /
Endpoints: /health (JSON), /api/orgs (JSON list), / (text), /redirect (302 to an external URL).
The container's environment is exactly what `docker run` was given; everything else comes in argv.
A host-wide fault file (written by the simulator) can force /health to fail.
"""

import argparse
import hmac
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    server_version = "slot-app/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # to our own log (stderr = the container's log file)
        log("%s %s" % (self.address_string(), fmt % args))

    def _send(self, code, body, ctype="application/json", headers=None):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, code, obj, headers=None):
        self._send(code, json.dumps(obj) + "\n", headers=headers)

    def _authorized(self) -> bool:
        app = self.server.app
        key = app.labels.get("sim.bearer-env")
        if not key:
            return True
        expected = os.environ.get(key, "")
        got = self.headers.get("Authorization", "")
        return bool(expected) and hmac.compare_digest(got.encode(), f"Bearer {expected}".encode())

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path == "/health":
            healthy = app.healthy()
            self._json(200 if healthy else 500, {
                "status": "ok" if healthy else "unhealthy",
                "digest": app.repo_digest,
                "image_id": app.image_id,
                "version": app.labels.get("sim.version", ""),
                "container": app.name,
            })
            return
        if not self._authorized():
            self._json(401, {"error": "unauthorized"}, headers={"WWW-Authenticate": "Bearer"})
            return
        if path in [p.strip() for p in (app.labels.get("sim.fail-paths") or "").split(",") if p.strip()]:
            self._json(500, {"error": "broken", "path": path})
        elif path == "/api/orgs":
            slug = os.environ.get("ORG_SLUG") or os.environ.get("MOLECULE_ORG_SLUG") or "example-org"
            self._json(200, [{"slug": slug, "version": app.labels.get("sim.version", "")}])
        elif path == "/redirect":
            self._send(302, "redirecting\n", "text/plain",
                       headers={"Location": "http://redirect-target.invalid/landing"})
        elif path == "/":
            self._send(200, f"slot app {app.labels.get('sim.version', '')} ({app.name})\n", "text/plain")
        else:
            self._json(404, {"error": "not found", "path": path})

    def do_POST(self):
        if not self._authorized():
            self._json(401, {"error": "unauthorized"}, headers={"WWW-Authenticate": "Bearer"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self._json(200, {"echo": body.decode(errors="replace")})


class App:
    def __init__(self, args):
        with open(args.config) as f:
            cfg = json.load(f)
        self.labels = cfg.get("labels") or {}
        self.image_id = cfg.get("image_id", "")
        self.repo_digest = cfg.get("repo_digest", "")
        self.name = cfg.get("name", "")
        self.fault_file = args.fault_file

    def healthy(self) -> bool:
        if self.labels.get("sim.health", "healthy") == "unhealthy":
            return False
        if self.fault_file:
            try:
                with open(self.fault_file) as f:
                    if f.read().strip() == "unhealthy":
                        return False
            except OSError:
                pass
        return True


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True, help="JSON: labels, image_id, repo_digest, name")
    p.add_argument("--bind", action="append", default=[], help="ADDR:PORT (repeatable)")
    p.add_argument("--fault-file")
    args = p.parse_args()
    app = App(args)
    log(f"starting {app.name} image={app.image_id} version={app.labels.get('sim.version', '')}")

    missing = [k for k in (app.labels.get("sim.requires-env") or "").split(",")
               if k.strip() and k.strip() not in os.environ]
    if missing:
        msg = f"fatal: required environment variable {missing[0].strip()} is not set"
        print(msg, flush=True)
        log(msg)
        return 1

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    delay = float(app.labels.get("sim.start-delay-seconds") or 0)
    if delay > 0:
        log(f"start delay {delay}s")
        if stop.wait(delay):
            return 0

    servers = []
    for b in args.bind:
        addr, _, port = b.rpartition(":")
        srv = ThreadingHTTPServer((addr, int(port)), Handler)
        srv.daemon_threads = True
        srv.app = app
        servers.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        log(f"listening on {addr}:{port}")
    print(f"listening on {', '.join(args.bind) or 'nothing'}", flush=True)
    stop.wait()
    log("SIGTERM: shutting down")
    for srv in servers:
        srv.shutdown()
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
