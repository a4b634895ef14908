#!/usr/bin/env python3
"""Helpers for the real OCI registry (Debian's `docker-registry`, distribution 2.8) on loopback.

    registry.py serve --port P --dir D [--storage D2] [--htpasswd USER PASSWORD | --token-realm URL
                      --token-cert PEM [--token-service S] [--token-issuer I]]
                                              run a registry (serving D2's storage; with basic or
                                              token auth); prints `READY <port>` once /v2/ answers
    registry.py push --registry 127.0.0.1:P --repo platform-tenant --tag T [--label k=v ...]
                     [--multiarch] [--version X]
                                              build and push a tiny image; prints its digest
    registry.py tag --registry 127.0.0.1:P --repo R --src-ref REF --dst-tag T
                                              point tag T at the manifest REF (tag or digest)
    registry.py resolve --registry 127.0.0.1:P --repo R --ref REF
                                              print the digest REF resolves to

Importable: `push_image(...)`, `tag_image(...)`, `resolve(...)`, `MANIFEST_ACCEPT`.
Only the Python standard library is used.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
# Without the OCI types in Accept, distribution answers MANIFEST_UNKNOWN for OCI manifests.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])


class RegistryError(Exception):
    pass


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _request(method, url, data=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# --- push ---------------------------------------------------------------------------------------

def _tiny_layer(repo: str, version: str, arch: str) -> bytes:
    """A deterministic gzip tar with one file whose content names the version and arch."""
    content = f"platform tenant stand-in\nrepo={repo}\nversion={version}\narch={arch}\n".encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("app/VERSION")
        info.size = len(content)
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def push_blob(registry: str, repo: str, data: bytes) -> str:
    digest = sha256(data)
    base = f"http://{registry}/v2/{repo}/blobs"
    status, _, _ = _request("HEAD", f"{base}/{digest}")
    if status == 200:
        return digest
    status, headers, body = _request("POST", f"{base}/uploads/", data=b"")
    if status != 202:
        raise RegistryError(f"blob upload start failed: {status} {body[:300]!r}")
    location = headers.get("Location") or headers.get("location")
    if not location:
        raise RegistryError("blob upload start: no Location header")
    if location.startswith("/"):
        location = f"http://{registry}{location}"
    sep = "&" if "?" in location else "?"
    status, _, body = _request(
        "PUT", f"{location}{sep}digest={digest}", data=data,
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
    if status != 201:
        raise RegistryError(f"blob upload failed: {status} {body[:300]!r}")
    return digest


def put_manifest(registry: str, repo: str, ref: str, body: bytes, media_type: str) -> str:
    status, headers, resp = _request(
        "PUT", f"http://{registry}/v2/{repo}/manifests/{ref}", data=body,
        headers={"Content-Type": media_type})
    if status != 201:
        raise RegistryError(f"manifest put failed: {status} {resp[:300]!r}")
    digest = sha256(body)
    got = headers.get("Docker-Content-Digest") or headers.get("docker-content-digest")
    if got and got != digest:
        raise RegistryError(f"registry reports digest {got}, expected {digest}")
    return digest


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _image_manifest(registry, repo, labels, version, arch, env=None, created=None):
    layer = _tiny_layer(repo, version, arch)
    layer_digest = push_blob(registry, repo, layer)
    diff_id = sha256(gzip.decompress(layer))
    config = {
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": {
            "Env": list(env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
            "Cmd": ["/app/slot-app"],
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": dict(labels),
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": f"tests/sim/registry.py push {version}"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = push_blob(registry, repo, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def push_image(registry: str, repo: str, tag: str, labels=None, multiarch=False, version=None,
               env=None) -> str:
    """Push a tiny image (or a two-platform OCI index) under `tag`; returns the tag's digest."""
    labels = dict(labels or {})
    version = version or labels.get("sim.version") or tag
    labels.setdefault("sim.version", version)
    created = _now_rfc3339()
    if not multiarch:
        body = _image_manifest(registry, repo, labels, version, "amd64", env, created)
        return put_manifest(registry, repo, tag, body, OCI_MANIFEST)
    entries = []
    for arch in ("amd64", "arm64"):
        body = _image_manifest(registry, repo, labels, version, arch, env, created)
        digest = put_manifest(registry, repo, sha256(body), body, OCI_MANIFEST)
        entries.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body),
                        "platform": {"architecture": arch, "os": "linux"}})
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    body = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    return put_manifest(registry, repo, tag, body, OCI_INDEX)


def get_manifest(registry: str, repo: str, ref: str):
    """Returns (media type, bytes, digest) or raises RegistryError."""
    status, headers, body = _request("GET", f"http://{registry}/v2/{repo}/manifests/{ref}",
                                     headers={"Accept": MANIFEST_ACCEPT})
    if status != 200:
        raise RegistryError(f"manifest {repo}:{ref}: HTTP {status} {body[:200]!r}")
    media = (headers.get("Content-Type") or headers.get("content-type") or "").split(";")[0]
    return media, body, sha256(body)


def resolve(registry: str, repo: str, ref: str) -> str:
    return get_manifest(registry, repo, ref)[2]


def tag_image(registry: str, repo: str, src_ref: str, dst_tag: str) -> str:
    media, body, digest = get_manifest(registry, repo, src_ref)
    put_manifest(registry, repo, dst_tag, body, media)
    return digest


def delete_manifest(registry: str, repo: str, digest: str) -> None:
    status, _, body = _request("DELETE", f"http://{registry}/v2/{repo}/manifests/{digest}")
    if status != 202:
        raise RegistryError(f"manifest delete failed: {status} {body[:200]!r}")


# --- serve --------------------------------------------------------------------------------------

def free_port(host="127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_config(port: int, directory: str, storage=None, auth=None) -> str:
    """`auth`: None, {"htpasswd": path} or {"token": {"realm", "service", "issuer", "rootcertbundle"}}.
    `storage`: another registry's directory to serve (default: this one's own)."""
    storage = os.path.abspath(os.path.join(storage or directory, "storage"))
    os.makedirs(storage, exist_ok=True)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "config.yml")
    auth_yaml = ""
    if auth and "htpasswd" in auth:
        auth_yaml = f"""auth:
  htpasswd:
    realm: test-registry
    path: {json.dumps(os.path.abspath(auth["htpasswd"]))}
"""
    elif auth and "token" in auth:
        t = auth["token"]
        auth_yaml = f"""auth:
  token:
    realm: {json.dumps(t["realm"])}
    service: {json.dumps(t["service"])}
    issuer: {json.dumps(t["issuer"])}
    rootcertbundle: {json.dumps(os.path.abspath(t["rootcertbundle"]))}
"""
    with open(path, "w") as f:
        f.write(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
{auth_yaml}http:
  addr: 127.0.0.1:{port}
""")
    return path


def write_htpasswd(path: str, user: str, password: str) -> None:
    """An htpasswd file with one bcrypt entry (the only kind distribution accepts)."""
    import bcrypt  # the test bed's venv (tests/sim/requirements.txt)
    with open(path, "w") as f:
        f.write(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n")


def wait_ready(registry: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _, _ = _request("GET", f"http://{registry}/v2/", timeout=1)
            if status in (200, 401):  # 401: it answers, and wants credentials
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def serve(port: int, directory: str, storage=None, auth=None) -> None:
    """Becomes docker-registry (exec, same pid); a forked child prints READY once /v2/ answers."""
    if port == 0:
        port = free_port()
    config = write_config(port, directory, storage, auth)
    child = os.fork()
    if child == 0:
        ok = wait_ready(f"127.0.0.1:{port}")
        if ok:
            print(f"READY {port}", flush=True)
            os._exit(0)
        print(f"registry on 127.0.0.1:{port} did not answer /v2/", file=sys.stderr, flush=True)
        os._exit(1)
    os.execvp("docker-registry", ["docker-registry", "serve", config])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--dir", required=True)
    s.add_argument("--storage", help="serve the storage of the registry in this directory")
    s.add_argument("--htpasswd", nargs=2, metavar=("USER", "PASSWORD"), help="basic auth, one user")
    s.add_argument("--token-realm", help="token auth: the realm's URL")
    s.add_argument("--token-service", default="test-registry")
    s.add_argument("--token-issuer", default="test-realm")
    s.add_argument("--token-cert", help="token auth: the realm's certificate (PEM)")
    pu = sub.add_parser("push")
    pu.add_argument("--registry", required=True)
    pu.add_argument("--repo", default="platform-tenant")
    pu.add_argument("--tag", required=True)
    pu.add_argument("--label", action="append", default=[], help="k=v (repeatable)")
    pu.add_argument("--env", action="append", default=None, help="K=V baked into the image config")
    pu.add_argument("--multiarch", action="store_true")
    pu.add_argument("--version")
    t = sub.add_parser("tag")
    t.add_argument("--registry", required=True)
    t.add_argument("--repo", default="platform-tenant")
    t.add_argument("--src-ref", required=True)
    t.add_argument("--dst-tag", required=True)
    r = sub.add_parser("resolve")
    r.add_argument("--registry", required=True)
    r.add_argument("--repo", default="platform-tenant")
    r.add_argument("--ref", required=True)
    a = p.parse_args(argv)
    try:
        if a.cmd == "serve":
            auth = None
            if a.htpasswd:
                os.makedirs(a.dir, exist_ok=True)
                path = os.path.join(a.dir, "htpasswd")
                write_htpasswd(path, *a.htpasswd)
                auth = {"htpasswd": path}
            elif a.token_realm:
                if not a.token_cert:
                    p.error("--token-realm needs --token-cert")
                auth = {"token": {"realm": a.token_realm, "service": a.token_service, "issuer": a.token_issuer,
                                  "rootcertbundle": a.token_cert}}
            serve(a.port, a.dir, a.storage, auth)
        elif a.cmd == "push":
            labels = {}
            for kv in a.label:
                k, sep, v = kv.partition("=")
                if not sep:
                    p.error(f"--label wants k=v, got {kv!r}")
                labels[k] = v
            print(push_image(a.registry, a.repo, a.tag, labels, a.multiarch, a.version, a.env))
        elif a.cmd == "tag":
            print(tag_image(a.registry, a.repo, a.src_ref, a.dst_tag))
        elif a.cmd == "resolve":
            print(resolve(a.registry, a.repo, a.ref))
    except (RegistryError, OSError) as e:
        print(f"registry.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
