#!/usr/bin/env python3
"""A token realm for the real OCI registry (Debian's `docker-registry` with `auth: token`), and a
trap that only records who called it.

    tokenrealm.py realm --dir D --user U --password P --service S --issuer I
        serves GET /token: Basic U:P gets a bearer token (RS256, signed by a key made here, its
        certificate in D/realm.crt for the registry's `rootcertbundle`, the chain in the token's
        `x5c` header) granting the `scope` asked for; anything else gets 401.
    tokenrealm.py trap --dir D
        answers every request 401 and records it.

Both print `READY <port>` once listening and append one JSON line per request to D/requests.jsonl:
method, path, query, the Authorization scheme (or null) and, for the realm, whether the credentials
were right. Never the credentials themselves.
"""

import argparse
import base64
import datetime
import hmac
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_key(directory):
    """An RSA key and a self-signed certificate for it (the registry's root of trust)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tenant-operator test token realm")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    with open(os.path.join(directory, "realm.crt"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def token(key, cert, issuer, service, subject, scope):
    """A registry token (distribution's token auth: JWT, RS256, `x5c` chain, `access` claims)."""
    access = []
    for s in scope:
        kind, _, rest = s.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind == "repository" and name:
            access.append({"type": "repository", "name": name, "actions": [a for a in actions.split(",") if a]})
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256",
              "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]}
    claims = {"iss": issuer, "sub": subject, "aud": service, "exp": now + 300, "nbf": now - 60, "iat": now,
              "jti": uuid.uuid4().hex, "access": access}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(sig)}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def record(self, **extra):
        auth = self.headers.get("Authorization")
        url = urlsplit(self.path)
        line = {"method": self.command, "path": url.path, "query": parse_qs(url.query),
                "authorization": auth.split(" ", 1)[0] if auth else None, **extra}
        srv = self.server
        with srv.lock:
            with open(os.path.join(srv.dir, "requests.jsonl"), "a") as f:
                f.write(json.dumps(line) + "\n")

    def answer(self, code, body: bytes, ctype="application/json", extra=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def credentials_ok(self):
        auth = self.headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        srv = self.server
        ok = hmac.compare_digest(user.encode(), srv.user.encode()) and \
            hmac.compare_digest(password.encode(), srv.password.encode())
        return user if ok else None

    def do_GET(self):  # noqa: N802 - http.server's name
        srv = self.server
        if srv.trap:
            self.record()
            self.answer(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            return
        url = urlsplit(self.path)
        if url.path != "/token":
            self.record()
            self.answer(404, b"{}")
            return
        user = self.credentials_ok()
        self.record(credentials_ok=user is not None)
        if user is None:
            self.answer(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                        extra={"WWW-Authenticate": 'Basic realm="token"'})
            return
        q = parse_qs(url.query)
        t = token(srv.key, srv.cert, srv.issuer, q.get("service", [srv.service])[0], user, q.get("scope", []))
        self.answer(200, json.dumps({"token": t, "access_token": t, "expires_in": 300}).encode())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("realm")
    r.add_argument("--dir", required=True)
    r.add_argument("--user", required=True)
    r.add_argument("--password", required=True)
    r.add_argument("--service", required=True)
    r.add_argument("--issuer", required=True)
    t = sub.add_parser("trap")
    t.add_argument("--dir", required=True)
    a = p.parse_args(argv)
    os.makedirs(a.dir, exist_ok=True)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.dir = a.dir
    srv.lock = threading.Lock()
    srv.trap = a.cmd == "trap"
    if not srv.trap:
        srv.user, srv.password, srv.service, srv.issuer = a.user, a.password, a.service, a.issuer
        srv.key, srv.cert = make_key(a.dir)
    print(f"READY {srv.server_address[1]}", flush=True)
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
