"""Tests of the test bed's stand-ins, driving the real pieces: docker-registry, moto_server, the
fleet simulator, the docker shim, the slot app, curl and the aws CLI.

Run with scripts/test-sim (uses the venv made by scripts/bootstrap).
"""

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import boto3
import botocore.config
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import registry as reg  # noqa: E402

DOCKER = os.path.join(HERE, "docker")
_addr_counter = itertools.count(2)
_ADDR_BASE = f"127.{(os.getpid() % 200) + 30}.{int(time.time()) % 250}"


def next_addr():
    return f"{_ADDR_BASE}.{next(_addr_counter)}"


def new_instance_id():
    return "i-" + uuid.uuid4().hex[:17]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_ready(proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("READY "):
            return int(line.split()[1])
    raise RuntimeError("process did not print READY")


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def http_get(url, headers=None, timeout=5):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:  # refused, reset: nobody listening (yet)
        return 0, str(e)


def post_json(url, obj):
    req = urllib.request.Request(url, data=json.dumps(obj).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Bed:
    pass


@pytest.fixture(scope="session")
def bed(tmp_path_factory):
    work = tmp_path_factory.mktemp("bed")
    b = Bed()
    b.work = str(work)
    procs = []
    logs = []

    def spawn(argv, name, piped=False):
        log = open(os.path.join(b.work, f"{name}.log"), "w")
        logs.append(log)
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if piped else log,
                             stderr=log, text=True)
        procs.append(p)
        return p

    moto_port = free_port()
    spawn([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
          "moto")
    b.moto_url = f"http://127.0.0.1:{moto_port}"
    rp = spawn([sys.executable, os.path.join(HERE, "registry.py"), "serve", "--port", "0", "--dir",
                os.path.join(b.work, "registry")], "registry", piped=True)
    b.registry = f"127.0.0.1:{read_ready(rp)}"
    wait_http(f"{b.moto_url}/moto-api/")
    sp = spawn([sys.executable, os.path.join(HERE, "fleetsim.py"), "--port", "0", "--moto-url", b.moto_url,
                "--workdir", os.path.join(b.work, "sim"), "--registry-url", f"http://{b.registry}"],
               "fleetsim", piped=True)
    b.sim_url = f"http://127.0.0.1:{read_ready(sp)}"
    b.sim_proc = sp
    # AWS allows TimeoutSeconds >= 30; the tests relax that to exercise delivery timeouts quickly.
    post_json(f"{b.sim_url}/_sim/config", {"min_timeout_seconds": 1})
    cfg = botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"})
    kw = dict(region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing", config=cfg)
    b.ssm = boto3.client("ssm", endpoint_url=b.sim_url, **kw)
    b.moto_ssm = boto3.client("ssm", endpoint_url=b.moto_url, **kw)
    b.ec2 = boto3.client("ec2", endpoint_url=b.moto_url, **kw)
    # botocore checks TimeoutSeconds >= 30 client-side; this one lets a test send less
    kw["config"] = cfg.merge(botocore.config.Config(parameter_validation=False))
    b.ssm_unchecked = boto3.client("ssm", endpoint_url=b.sim_url, **kw)
    yield b
    sp.terminate()
    try:
        sp.wait(5)
    except subprocess.TimeoutExpired:
        pass
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    # Containers started straight through the docker shim (and their restart supervisors) are no
    # host's: nothing of this bed may outlive the session, so whatever names its directory goes.
    kill_under(b.work)
    for log in logs:
        log.close()


def kill_under(path):
    """SIGKILLs every process whose command line names `path` or that runs in a directory under it
    (the docker shim's restart supervisors: `docker __supervise <id>`, run from the host's docker
    state), until none is left."""
    needle = path.encode()
    root = os.path.realpath(path)
    for _ in range(50):
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    named = needle in f.read()
                cwd = os.readlink(f"/proc/{name}/cwd")
            except OSError:
                continue
            if named or cwd == root or cwd.startswith(root + os.sep):
                pids.append(int(name))
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        time.sleep(0.1)


def add_host(bed, org="acme", **kw):
    iid = new_instance_id()
    status, body = post_json(f"{bed.sim_url}/_sim/hosts", dict({"instance_id": iid, "addr": next_addr(),
                                                                 "org": org}, **kw))
    assert status == 201, body
    return body


def host_env(bed, host):
    env = {"PATH": os.environ["PATH"], "TENANT_HOST_ROOT": host["sandbox"], "TENANT_HOST_ADDR": host["addr"]}
    return env


def docker(bed, host, *args, input=None, check=True):
    p = subprocess.run([sys.executable, DOCKER, *args], env=host_env(bed, host), capture_output=True, text=True,
                       input=input, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def wait_for(fn, timeout=15, interval=0.05):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(interval)


def wait_invocation(bed, cid, iid, timeout=20):
    def done():
        try:
            inv = bed.ssm.get_command_invocation(CommandId=cid, InstanceId=iid)
        except bed.ssm.exceptions.InvocationDoesNotExist:
            return None
        return inv if inv["Status"] in ("Success", "Failed", "TimedOut", "Cancelled") else None
    return wait_for(done, timeout)


def make_doc(bed, lines, params=None, timeout_seconds=None):
    name = "test-" + uuid.uuid4().hex[:10]
    inputs = {"runCommand": lines}
    if timeout_seconds:
        inputs["timeoutSeconds"] = str(timeout_seconds)
    content = {"schemaVersion": "2.2", "description": "test", "parameters": params or {},
               "mainSteps": [{"action": "aws:runShellScript", "name": "run", "inputs": inputs}]}
    bed.ssm.create_document(Name=name, DocumentType="Command", DocumentFormat="JSON", Content=json.dumps(content))
    return name


def run_doc(bed, host, lines, params=None, values=None, **kw):
    name = make_doc(bed, lines, params)
    cid = bed.ssm.send_command(DocumentName=name, InstanceIds=[host["instance_id"]], Parameters=values or {},
                               **kw)["Command"]["CommandId"]
    return cid, wait_invocation(bed, cid, host["instance_id"])


# --- registry and docker shim -----------------------------------------------------------------------

def test_push_single_and_pull_by_digest(bed):
    digest = reg.push_image(bed.registry, "platform-tenant", "single", {"sim.version": "1.0"})
    assert digest.startswith("sha256:")
    assert reg.resolve(bed.registry, "platform-tenant", "single") == digest
    host = add_host(bed)
    ref = f"{bed.registry}/platform-tenant@{digest}"
    out = docker(bed, host, "pull", ref).stdout
    assert f"Digest: {digest}" in out
    img = json.loads(docker(bed, host, "image", "inspect", ref).stdout)[0]
    assert img["RepoDigests"] == [ref]
    media, body, _ = reg.get_manifest(bed.registry, "platform-tenant", digest)
    assert img["Id"] == json.loads(body)["config"]["digest"]  # Id is the config digest
    assert img["Config"]["Labels"]["sim.version"] == "1.0"
    assert docker(bed, host, "images", "--format", "{{.ID}}").stdout.strip() == img["Id"][7:19]


def test_multiarch_index_pulls_amd64(bed):
    digest = reg.push_image(bed.registry, "platform-tenant", "multi", {"sim.version": "2.0"}, multiarch=True)
    media, body, _ = reg.get_manifest(bed.registry, "platform-tenant", "multi")
    assert media == reg.OCI_INDEX
    index = json.loads(body)
    assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == ["amd64", "arm64"]
    host = add_host(bed)
    docker(bed, host, "pull", f"{bed.registry}/platform-tenant:multi")
    img = json.loads(docker(bed, host, "image", "inspect", f"{bed.registry}/platform-tenant:multi").stdout)[0]
    assert img["Architecture"] == "amd64"
    assert img["RepoDigests"] == [f"{bed.registry}/platform-tenant@{digest}"]
    amd = next(m for m in index["manifests"] if m["platform"]["architecture"] == "amd64")
    _, amd_body, _ = reg.get_manifest(bed.registry, "platform-tenant", amd["digest"])
    assert img["Id"] == json.loads(amd_body)["config"]["digest"] != digest  # config digest != index digest


def test_pull_unknown_digest_fails(bed):
    host = add_host(bed)
    p = docker(bed, host, "pull", f"{bed.registry}/platform-tenant@sha256:{'0' * 64}", check=False)
    assert p.returncode == 1
    assert "manifest unknown" in p.stderr and p.stderr.startswith("Error response from daemon")
    p = docker(bed, host, "run", "-d", "--name", "x", f"{bed.registry}/platform-tenant:no-such-tag", check=False)
    assert p.returncode == 125
    assert docker(bed, host, "ps", "-aq").stdout == ""


def test_tag_move(bed):
    d1 = reg.push_image(bed.registry, "platform-tenant", "move-a", {})
    reg.push_image(bed.registry, "platform-tenant", "move-b", {})
    assert reg.tag_image(bed.registry, "platform-tenant", d1, "move-b") == d1
    assert reg.resolve(bed.registry, "platform-tenant", "move-b") == d1


# --- slot app behaviours ------------------------------------------------------------------------------

def run_slot(bed, host, labels, name, port, env=(), extra=()):
    digest = reg.push_image(bed.registry, "platform-tenant", f"t-{uuid.uuid4().hex[:8]}", labels)
    ref = f"{bed.registry}/platform-tenant@{digest}"
    args = ["run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "--label", f"tenant.digest={digest}"]
    for e in env:
        args += ["-e", e]
    p = docker(bed, host, *args, *extra, ref)
    return digest, p.stdout.strip()


def test_slot_healthy_and_unhealthy(bed):
    host = add_host(bed)
    digest, cid = run_slot(bed, host, {"sim.health": "healthy", "sim.version": "3"}, "blue", 8080)
    assert len(cid) == 64
    status, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        http_get(f"http://{host['addr']}:8080/health")))
    h = json.loads(body)
    assert h["status"] == "ok" and h["digest"] == digest and h["version"] == "3"
    assert http_get(f"http://{host['addr']}:8080/")[0] == 200
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                        f"http://{host['addr']}:8080/redirect"], capture_output=True, text=True, timeout=10)
    assert p.stdout.startswith("302 http://") and ".invalid" in p.stdout  # external, never followed here
    _, cid2 = run_slot(bed, host, {"sim.health": "unhealthy"}, "green", 8081)
    wait_for(lambda: http_get(f"http://{host['addr']}:8081/health")[0] == 500)
    # host-wide fault: every slot's health fails
    post_json(f"{bed.sim_url}/_sim/hosts/{host['instance_id']}/faults", {"unhealthy": True})
    assert http_get(f"http://{host['addr']}:8080/health")[0] == 500
    post_json(f"{bed.sim_url}/_sim/hosts/{host['instance_id']}/faults", {"unhealthy": False})
    assert http_get(f"http://{host['addr']}:8080/health")[0] == 200
    fmt = '{{.Names}} {{.Label "tenant.digest"}} {{.State}}'
    rows = docker(bed, host, "ps", "--filter", "label=tenant.digest", "--format", fmt).stdout.split("\n")
    assert f"blue {digest} running" in rows
    # the same port again is refused like docker does
    p = docker(bed, host, "run", "-d", "--name", "dup", "-p", "127.0.0.1:8080:8080",
               f"{bed.registry}/platform-tenant@{digest}", check=False)
    assert p.returncode == 125 and "port is already allocated" in p.stderr
    # stop / rm / inspect honesty
    docker(bed, host, "stop", "-t", "2", "blue")
    st = json.loads(docker(bed, host, "inspect", "blue").stdout)[0]["State"]
    assert st["Running"] is False and st["Status"] == "exited"
    p = docker(bed, host, "rm", "green", check=False)
    assert p.returncode == 1 and "container is running" in p.stderr
    assert "Created" in docker(bed, host, "ps", "-a", "--filter", "name=dup", "--format", "{{.Status}}").stdout
    docker(bed, host, "rm", "-f", "green", "blue", "dup")
    assert docker(bed, host, "ps", "-aq").stdout == ""


def test_slot_bearer(bed):
    host = add_host(bed)
    run_slot(bed, host, {"sim.bearer-env": "API_TOKEN"}, "slot", 8080, env=["API_TOKEN=t0k$en \"x\""])
    wait_for(lambda: http_get(f"http://{host['addr']}:8080/health")[0] == 200)
    assert http_get(f"http://{host['addr']}:8080/api/orgs")[0] == 401
    assert http_get(f"http://{host['addr']}:8080/api/orgs", {"Authorization": "Bearer wrong"})[0] == 401
    code, body = http_get(f"http://{host['addr']}:8080/api/orgs", {"Authorization": 'Bearer t0k$en "x"'})
    assert code == 200 and isinstance(json.loads(body), list)


def test_slot_missing_env_exits(bed, tmp_path):
    host = add_host(bed)
    envf = tmp_path / "env"
    envf.write_text("PRESENT=1\n# comment\n  QUOTED=\"kept as is\" \n")
    run_slot(bed, host, {"sim.requires-env": "PRESENT,MOLECULE_CP_SHARED_SECRET"}, "slot", 8080,
             extra=["--env-file", str(envf)])
    st = wait_for(lambda: (lambda s: s if not s["Running"] else None)(
        json.loads(docker(bed, host, "inspect", "slot").stdout)[0]["State"]))
    assert st["ExitCode"] == 1 and st["Status"] == "exited"
    logs = docker(bed, host, "logs", "slot")
    assert "MOLECULE_CP_SHARED_SECRET" in logs.stdout
    env = json.loads(docker(bed, host, "inspect", "-f", "{{json .Config.Env}}", "slot").stdout)
    assert "QUOTED=\"kept as is\" " in env and "PRESENT=1" in env


def test_slot_start_delay(bed):
    host = add_host(bed)
    t0 = time.time()
    run_slot(bed, host, {"sim.start-delay-seconds": "1.5"}, "slow", 8080)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host['addr']}:8080/health", timeout=1).read()
    wait_for(lambda: http_get(f"http://{host['addr']}:8080/health")[0] == 200, timeout=10)
    assert time.time() - t0 >= 1.4


def test_restart_policy_restarts_crashed_app(bed):
    host = add_host(bed)
    run_slot(bed, host, {}, "svc", 8080, extra=["--restart", "unless-stopped"])
    pid = wait_for(lambda: json.loads(docker(bed, host, "inspect", "svc").stdout)[0]["State"]["Pid"])
    os.kill(pid, 9)
    new = wait_for(lambda: (lambda s: s["Pid"] if s["Running"] and s["Pid"] != pid else None)(
        json.loads(docker(bed, host, "inspect", "svc").stdout)[0]["State"]))
    assert new != pid
    assert json.loads(docker(bed, host, "inspect", "svc").stdout)[0]["RestartCount"] >= 1


def test_image_prune_keeps_used(bed):
    host = add_host(bed)
    d1 = reg.push_image(bed.registry, "platform-tenant", "p1", {})
    d2 = reg.push_image(bed.registry, "platform-tenant", "p2", {})
    docker(bed, host, "pull", f"{bed.registry}/platform-tenant@{d1}")
    docker(bed, host, "pull", f"{bed.registry}/platform-tenant@{d2}")
    docker(bed, host, "run", "-d", "--name", "keep", "-p", "8080:8080", f"{bed.registry}/platform-tenant@{d1}")
    out = docker(bed, host, "image", "prune", "-a", "-f").stdout
    assert "Total reclaimed space" in out
    left = docker(bed, host, "images", "--digests", "--format", "{{.Digest}}").stdout.split()
    assert left == [d1]


# --- the simulator ------------------------------------------------------------------------------------

def test_send_command_runs_docker_curl_and_aws(bed):
    host = add_host(bed, org="acme")
    digest = reg.push_image(bed.registry, "platform-tenant", "e2e", {"sim.version": "9"})
    bed.ssm.put_parameter(Name="/tenants/acme/rev-1", Type="SecureString", Value="TOKEN=s3cret\n")
    params = {"revision": {"type": "String", "allowedPattern": "^[a-z0-9-]{1,64}$"},
              "image": {"type": "String"}}
    lines = [
        "set -euo pipefail",
        "org=$(cat \"$TENANT_HOST_ROOT/etc/tenant-operator/org\")",
        "envf=\"$TENANT_HOST_ROOT/tmp/env\"",
        "aws ssm get-parameter --name \"/tenants/$org/{{ revision }}\" --with-decryption "
        "--query Parameter.Value --output text > \"$envf\"",
        "docker pull -q {{ image }} >/dev/null",
        "docker run -d --name slot-blue -p 127.0.0.1:8080:8080 --env-file \"$envf\" "
        "--label tenant.digest=" + digest + " {{ image }} >/dev/null",
        "rm -f \"$envf\"",
        "for i in $(seq 50); do curl -sf \"http://$TENANT_HOST_ADDR:8080/health\" >/dev/null && break; sleep 0.1; done",
        "h=$(curl -sf \"http://$TENANT_HOST_ADDR:8080/health\")",
        "echo \"{\\\"org\\\":\\\"$org\\\",\\\"health\\\":$h}\"",
    ]
    name = make_doc(bed, lines, params)
    sent = bed.ssm.send_command(DocumentName=name, InstanceIds=[host["instance_id"]], Comment="intent:tok-123",
                                Parameters={"revision": ["rev-1"],
                                            "image": [f"{bed.registry}/platform-tenant@{digest}"]},
                                TimeoutSeconds=60)["Command"]
    assert sent["Status"] in ("Pending", "InProgress") and sent["Comment"] == "intent:tok-123"
    inv = wait_invocation(bed, sent["CommandId"], host["instance_id"])
    assert inv["Status"] == "Success", inv["StandardErrorContent"]
    out = json.loads(inv["StandardOutputContent"].strip())
    assert out["org"] == "acme" and out["health"]["digest"] == digest
    assert inv["ResponseCode"] == 0 and inv["ExecutionEndDateTime"]
    env = json.loads(docker(bed, host, "inspect", "-f", "{{json .Config.Env}}", "slot-blue").stdout)
    assert "TOKEN=s3cret" in env
    assert not os.path.exists(os.path.join(host["sandbox"], "tmp/env"))
    # ListCommands finds the command by the token in its comment; ListCommandInvocations details
    cmds = bed.ssm.list_commands(InstanceId=host["instance_id"])["Commands"]
    assert [c["CommandId"] for c in cmds if "tok-123" in c["Comment"]] == [sent["CommandId"]]
    invs = bed.ssm.list_command_invocations(CommandId=sent["CommandId"], Details=True)["CommandInvocations"]
    assert invs[0]["CommandPlugins"][0]["Name"] == "run" and "acme" in invs[0]["CommandPlugins"][0]["Output"]
    # a pattern violation is refused before anything runs
    with pytest.raises(bed.ssm.exceptions.InvalidParameters):
        bed.ssm.send_command(DocumentName=name, InstanceIds=[host["instance_id"]],
                             Parameters={"revision": ["../other-org/x"], "image": ["x"]})


def test_document_versions(bed):
    name = make_doc(bed, ["echo v1"])
    c2 = {"schemaVersion": "2.2", "mainSteps": [{"action": "aws:runShellScript", "name": "run",
                                                  "inputs": {"runCommand": ["echo v2"]}}]}
    d = bed.ssm.update_document(Name=name, Content=json.dumps(c2), DocumentVersion="$LATEST")["DocumentDescription"]
    assert d["DocumentVersion"] == "2" and d["LatestVersion"] == "2" and d["DefaultVersion"] == "1"
    with pytest.raises(bed.ssm.exceptions.DuplicateDocumentContent):
        bed.ssm.update_document(Name=name, Content=json.dumps(c2), DocumentVersion="$LATEST")
    with pytest.raises(bed.ssm.exceptions.DocumentAlreadyExists):
        bed.ssm.create_document(Name=name, Content=json.dumps(c2), DocumentType="Command")
    assert "echo v1" in bed.ssm.get_document(Name=name)["Content"]
    got = bed.ssm.get_document(Name=name, DocumentVersion="$LATEST")
    assert got["DocumentVersion"] == "2" and "echo v2" in got["Content"]
    bed.ssm.update_document_default_version(Name=name, DocumentVersion="2")
    desc = bed.ssm.describe_document(Name=name)["Document"]
    assert desc["DefaultVersion"] == "2" and desc["HashType"] == "Sha256" and len(desc["Hash"]) == 64
    host = add_host(bed)
    cid = bed.ssm.send_command(DocumentName=name, InstanceIds=[host["instance_id"]])["Command"]["CommandId"]
    assert wait_invocation(bed, cid, host["instance_id"])["StandardOutputContent"] == "v2\n"
    cid = bed.ssm.send_command(DocumentName=name, DocumentVersion="1",
                               InstanceIds=[host["instance_id"]])["Command"]["CommandId"]
    inv = wait_invocation(bed, cid, host["instance_id"])
    assert inv["StandardOutputContent"] == "v1\n" and inv["DocumentVersion"] == "1"
    with pytest.raises(bed.ssm.exceptions.InvalidDocument):
        bed.ssm.describe_document(Name="no-such-doc")


def test_failure_and_output_truncation(bed):
    host = add_host(bed)
    cid, inv = run_doc(bed, host, ["head -c 30000 /dev/zero | tr '\\0' a", "head -c 10000 /dev/zero | tr '\\0' e >&2",
                                   "exit 3"])
    assert inv["Status"] == "Failed" and inv["ResponseCode"] == 3
    assert len(inv["StandardOutputContent"]) == 24000 and set(inv["StandardOutputContent"]) == {"a"}
    assert len(inv["StandardErrorContent"]) == 8000
    cmd = bed.ssm.list_commands(CommandId=cid)["Commands"][0]
    assert cmd["Status"] == "Failed" and cmd["ErrorCount"] == 1


def test_execution_timeout_and_cancel(bed):
    host = add_host(bed)
    name = make_doc(bed, ["sleep 30"], timeout_seconds=1)
    cid = bed.ssm.send_command(DocumentName=name, InstanceIds=[host["instance_id"]])["Command"]["CommandId"]
    inv = wait_invocation(bed, cid, host["instance_id"], timeout=10)
    assert inv["Status"] == "TimedOut" and inv["StatusDetails"] == "ExecutionTimedOut"
    name = make_doc(bed, ["sleep 30"])
    cid = bed.ssm.send_command(DocumentName=name, InstanceIds=[host["instance_id"]])["Command"]["CommandId"]
    wait_for(lambda: bed.ssm.get_command_invocation(CommandId=cid, InstanceId=host["instance_id"])["Status"]
             == "InProgress")
    bed.ssm.cancel_command(CommandId=cid)
    assert wait_invocation(bed, cid, host["instance_id"], timeout=10)["Status"] == "Cancelled"


def test_hostile_parameter_values_are_literal(bed):
    host = add_host(bed)
    hostile = "$(touch pwned) `touch pwned2` {{ other }} ' \" \\ ; rm -rf / #"
    params = {"value": {"type": "String"}, "other": {"type": "String", "default": "EXPANDED"}}
    lines = ["cat <<'EOF'", "{{ value }}", "EOF"]
    cid, inv = run_doc(bed, host, lines, params, {"value": [hostile]})
    assert inv["Status"] == "Success"
    assert inv["StandardOutputContent"] == hostile + "\n"  # substituted once, never re-expanded
    assert not os.path.exists(os.path.join(host["sandbox"], "pwned"))
    # SSM resolves {{ssm:...}} inside parameter values with the sender's rights (why the operator
    # never puts a user's value in a command)
    bed.ssm.put_parameter(Name="/shared/secretish", Type="String", Value="resolved!")
    cid, inv = run_doc(bed, host, lines, params, {"value": ["x {{ssm:/shared/secretish}} y"]})
    assert inv["StandardOutputContent"] == "x resolved! y\n"
    with pytest.raises(bed.ssm.exceptions.InvalidParameters):
        bed.ssm.send_command(DocumentName=make_doc(bed, lines, params), InstanceIds=[host["instance_id"]],
                             Parameters={"nope": ["x"]})


def test_fifty_instance_limit_and_unknown_instances(bed):
    name = make_doc(bed, ["true"])
    ids = [new_instance_id() for _ in range(51)]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bed.ssm.send_command(DocumentName=name, InstanceIds=ids)
    assert e.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(bed.ssm.exceptions.InvalidInstanceId):
        bed.ssm.send_command(DocumentName=name, InstanceIds=ids[:1])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bed.ssm.send_command(DocumentName=name, InstanceIds=ids[:1], Comment="x" * 101)
    assert e.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(bed.ssm.exceptions.InvocationDoesNotExist):
        bed.ssm.get_command_invocation(CommandId=str(uuid.uuid4()), InstanceId=ids[0])


def test_throttling(bed):
    host = add_host(bed)
    iid = host["instance_id"]
    post_json(f"{bed.sim_url}/_sim/hosts/{iid}/faults", {"throttle_next": 2})
    name = make_doc(bed, ["echo hi"])
    for _ in range(2):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            bed.ssm.send_command(DocumentName=name, InstanceIds=[iid])
        assert e.value.response["Error"]["Code"] == "ThrottlingException"
    cid = bed.ssm.send_command(DocumentName=name, InstanceIds=[iid])["Command"]["CommandId"]
    assert wait_invocation(bed, cid, iid)["Status"] == "Success"
    post_json(f"{bed.sim_url}/_sim/faults", {"throttle_next": 1})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        bed.ssm.get_parameters_by_path(Path="/")  # forwarded calls are throttled too
    assert e.value.response["Error"]["Code"] == "ThrottlingException"
    bed.ssm.get_parameters_by_path(Path="/")
    # the SDK's own retry gets through a short burst
    retrying = boto3.client("ssm", endpoint_url=bed.sim_url, region_name="us-east-1", aws_access_key_id="t",
                            aws_secret_access_key="t",
                            config=botocore.config.Config(retries={"total_max_attempts": 5, "mode": "standard"}))
    post_json(f"{bed.sim_url}/_sim/hosts/{iid}/faults", {"throttle_next": 2})
    assert retrying.get_command_invocation(CommandId=cid, InstanceId=iid)["Status"] == "Success"


def test_agent_offline_then_back_and_delivery_timeout(bed):
    host = add_host(bed)
    iid = host["instance_id"]
    post_json(f"{bed.sim_url}/_sim/hosts/{iid}/faults", {"agent_offline": True})
    info = bed.ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [iid]}])["InstanceInformationList"]
    assert info[0]["PingStatus"] == "ConnectionLost"
    name = make_doc(bed, ["echo delivered"])
    cid = bed.ssm.send_command(DocumentName=name, InstanceIds=[iid], TimeoutSeconds=60)["Command"]["CommandId"]
    # A witness online beside it runs the same document through to the end; the offline one has not.
    witness = add_host(bed, org="witness")["instance_id"]
    wcid = bed.ssm.send_command(DocumentName=name, InstanceIds=[witness], TimeoutSeconds=60)["Command"]["CommandId"]
    assert wait_invocation(bed, wcid, witness)["Status"] == "Success"
    assert bed.ssm.get_command_invocation(CommandId=cid, InstanceId=iid)["Status"] == "Pending"
    post_json(f"{bed.sim_url}/_sim/hosts/{iid}/faults", {"agent_offline": False})
    inv = wait_invocation(bed, cid, iid)
    assert inv["Status"] == "Success" and inv["StandardOutputContent"] == "delivered\n"
    # offline past the delivery timeout
    post_json(f"{bed.sim_url}/_sim/hosts/{iid}/faults", {"agent_offline": True})
    cid = bed.ssm_unchecked.send_command(DocumentName=name, InstanceIds=[iid],
                                         TimeoutSeconds=1)["Command"]["CommandId"]
    inv = wait_invocation(bed, cid, iid, timeout=5)
    assert inv["Status"] == "TimedOut" and inv["StatusDetails"] == "DeliveryTimedOut"
    cmd = bed.ssm.list_commands(CommandId=cid)["Commands"][0]
    assert cmd["DeliveryTimedOutCount"] == 1 and cmd["ErrorCount"] == 0
    post_json(f"{bed.sim_url}/_sim/hosts/{iid}/faults", {"agent_offline": False, "fail_next_delivery": 1})
    cid = bed.ssm.send_command(DocumentName=name, InstanceIds=[iid])["Command"]["CommandId"]
    assert wait_invocation(bed, cid, iid)["StatusDetails"] == "Undeliverable"


def test_one_at_a_time_per_host_parallel_across_hosts(bed):
    a, b = add_host(bed), add_host(bed)
    name = make_doc(bed, ["sleep 0.6"])
    c1 = bed.ssm.send_command(DocumentName=name, InstanceIds=[a["instance_id"], b["instance_id"]],
                              Comment="batch-1")["Command"]["CommandId"]
    c2 = bed.ssm.send_command(DocumentName=name, InstanceIds=[a["instance_id"]], Comment="batch-2")["Command"]["CommandId"]
    for cid, iid in ((c1, a["instance_id"]), (c1, b["instance_id"]), (c2, a["instance_id"])):
        assert wait_invocation(bed, cid, iid)["Status"] == "Success"
    status, tl = 0, json.loads(urllib.request.urlopen(f"{bed.sim_url}/_sim/timeline").read())
    ev = {(e["command_id"], e["instance_id"]): e for e in tl}
    a1, b1, a2 = ev[(c1, a["instance_id"])], ev[(c1, b["instance_id"])], ev[(c2, a["instance_id"])]
    assert a2["start"] >= a1["end"]  # serial on one host
    assert b1["start"] < a1["end"] and a1["start"] < b1["end"]  # parallel across hosts
    assert a1["comment"] == "batch-1" and a1["document_version"] == "1"
    pending = bed.ssm.list_commands(Filters=[{"key": "Status", "value": "Pending"}])["Commands"]
    assert all(c["Status"] == "Pending" for c in pending)


def test_parameter_store_is_forwarded_to_moto(bed):
    bed.ssm.put_parameter(Name="/fwd/x", Type="SecureString", Value="v1")
    assert bed.moto_ssm.get_parameter(Name="/fwd/x", WithDecryption=True)["Parameter"]["Value"] == "v1"
    bed.ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId="/fwd/x", Tags=[{"Key": "k", "Value": "v"}])
    assert bed.ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId="/fwd/x")["TagList"]
    bed.ssm.delete_parameter(Name="/fwd/x")
    with pytest.raises(bed.ssm.exceptions.ParameterNotFound):
        bed.ssm.get_parameter(Name="/fwd/x")


def test_legacy_host(bed):
    digest = reg.push_image(bed.registry, "platform-tenant", "latest", {"sim.version": "legacy"})
    host = add_host(bed, org="old-org", state="legacy")
    code, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        http_get(f"http://{host['addr']}:8080/health")))
    assert json.loads(body)["digest"] == digest
    c = json.loads(docker(bed, host, "inspect", "molecule-tenant").stdout)[0]
    assert c["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert "ORG_SLUG=old-org" in c["Config"]["Env"]


def host_info(bed, host):
    with urllib.request.urlopen(f"{bed.sim_url}/_sim/hosts/{host['instance_id']}") as r:
        return json.loads(r.read())


def cron_stays_idle(bed, host):
    """The entry's time comes three times with the entry not active, and the updater never runs.
    (Ticks are counted in order: once one has passed the entry, no run of an earlier tick appears.)"""
    passed = host_info(bed, host)["cron"]["passed"]
    wait_for(lambda: host_info(bed, host)["cron"]["passed"] >= passed + 1, timeout=60)
    runs = host_info(bed, host)["cron"]["runs"]
    wait_for(lambda: host_info(bed, host)["cron"]["passed"] >= passed + 3, timeout=60)
    assert host_info(bed, host)["cron"]["runs"] == runs


def test_legacy_cron_follows_latest_until_its_entry_is_disabled(bed):
    reg.push_image(bed.registry, "platform-tenant", "latest", {"sim.version": "legacy-1"})
    host = add_host(bed, org="cron-org", state="legacy", cron_interval_seconds=1,
                    legacy_args=["-v", "/srv/data:/data", "--network", "host-net", "--add-host", "db.internal:10.0.0.5",
                                 "--label", "team=core"], legacy_env={"SECRET_TOKEN": "s3cr3t"})
    c = json.loads(docker(bed, host, "inspect", "molecule-tenant").stdout)[0]
    assert c["HostConfig"]["Binds"] == ["/srv/data:/data"]
    assert c["HostConfig"]["NetworkMode"] == "host-net"
    assert c["HostConfig"]["ExtraHosts"] == ["db.internal:10.0.0.5"]
    assert c["Config"]["Labels"]["team"] == "core"
    assert "SECRET_TOKEN=s3cr3t" in c["Config"]["Env"]
    assert host_info(bed, host)["cron"]["entry"] == "active"
    wait_for(lambda: host_info(bed, host)["cron"]["runs"] >= 1, timeout=10)
    # the tag moves: the next cron run restarts the container on the new digest, with the same options
    new = reg.push_image(bed.registry, "platform-tenant", "latest", {"sim.version": "legacy-2"})

    def serves_new():
        code, body = http_get(f"http://{host['addr']}:8080/health")
        return code == 200 and json.loads(body)["digest"] == new
    wait_for(serves_new, timeout=20, interval=0.2)
    c2 = json.loads(docker(bed, host, "inspect", "molecule-tenant").stdout)[0]
    assert c2["Id"] != c["Id"] and c2["HostConfig"]["Binds"] == ["/srv/data:/data"]
    log = open(os.path.join(host["sandbox"], "var/log/molecule-auto-update.log")).read()
    assert "updated" in log
    # commented out, the entry no longer fires
    entry = os.path.join(host["sandbox"], "etc/cron.d/molecule-autoupdate")
    with open(entry) as f:
        line = f.read()
    with open(entry, "w") as f:
        f.write("# " + line)
    assert host_info(bed, host)["cron"]["entry"] == "disabled"
    cron_stays_idle(bed, host)
    os.remove(entry)
    assert host_info(bed, host)["cron"]["entry"] == "absent"


def test_legacy_args_are_checked(bed):
    iid = new_instance_id()
    status, body = post_json(f"{bed.sim_url}/_sim/hosts", {"instance_id": iid, "addr": next_addr(), "org": "x",
                                                           "state": "legacy", "legacy_args": ["--privileged", "x"]})
    assert status == 400, body


# --- the operator's host agent on a legacy host (adoption) --------------------------------------------

AGENT = os.path.join(HERE, "..", "..", "operator", "assets", "host-agent.sh")


def agent_doc(bed):
    """The operator's document as document.rs builds it (header + the fixed script)."""
    lines = ["#!/bin/bash", "AGENT_ACTION='{{ action }}'", "AGENT_DIGEST='{{ digest }}'", "AGENT_VERSION=test",
             "PARAM_ROOT=/tenant-operator"] + open(AGENT).read().splitlines()
    params = {"action": {"type": "String", "allowedValues": ["observe", "apply", "switch", "prune", "inspect-legacy",
                                                              "adopt", "unadopt"]},
              "digest": {"type": "String", "default": "", "allowedPattern": "^(sha256:[a-f0-9]{64})?$"}}
    return make_doc(bed, lines, params)


def agent(bed, doc, host, action, digest=""):
    cid = bed.ssm.send_command(DocumentName=doc, InstanceIds=[host["instance_id"]],
                               Parameters={"action": [action], "digest": [digest]})["Command"]["CommandId"]
    inv = wait_invocation(bed, cid, host["instance_id"], timeout=60)
    return json.loads(inv["StandardOutputContent"].strip().splitlines()[-1]), inv


def b64s(s):
    import base64
    return base64.b64encode(s.encode()).decode()


def revision_value(image, base, envrev="e" * 32, extra=()):
    """A revision parameter's value: everything but the digest, which the command carries."""
    return "\n".join(["tenant-operator-revision v2", f"image {b64s(image)}", f"envrev {envrev}",
                      "name app", "ports 8080 8081 8000", "cport 8080", f"health {b64s('/health')}", "timeout 20",
                      "strategy inplace", "keepwarm 600", "restart unless-stopped", "dockersock 0",
                      "importedenv 1", *extra, f"base {base}"]) + "\n"


def test_agent_inspects_adopts_and_releases_a_legacy_host(bed):
    digest = reg.push_image(bed.registry, "platform-tenant", "latest", {"sim.version": "adopt-1"})
    host = add_host(bed, org="adopt-org", state="legacy", cron_interval_seconds=1,
                    legacy_args=["-v", "/srv/data:/data", "--add-host", "db.internal:10.0.0.5"],
                    legacy_env={"SECRET_TOKEN": "t0p-s3cr3t", "MULTI": "a b"})
    doc = agent_doc(bed)
    legacy_id = json.loads(docker(bed, host, "inspect", "molecule-tenant").stdout)[0]["Id"]
    rep, inv = agent(bed, doc, host, "inspect-legacy")
    assert rep["status"] == "ok", inv
    lg = rep["legacy"]
    assert lg["digest"] == digest and lg["image"] == f"{bed.registry}/platform-tenant"
    assert lg["envNames"] == ["MULTI", "ORG_SLUG", "SECRET_TOKEN"]
    assert lg["ports"] == [{"host": 8080, "container": 8080}]
    assert lg["volumes"] == [{"hostPath": "/srv/data", "containerPath": "/data", "readOnly": False}]
    assert lg["extraHosts"] == [{"hostname": "db.internal", "ip": "10.0.0.5"}]
    assert lg["restartPolicy"] == "unless-stopped" and lg["dropped"] == []
    assert rep["managed"] is False and rep["unmanagedContainers"] == 1 and rep["cron"] == "active"
    assert "t0p-s3cr3t" not in json.dumps(inv)
    # adopt: the revision is stored by the operator; the host stores the env under its own prefix
    base = "a" * 32
    bed.ssm.put_parameter(Name="/tenant-operator/adopt-org/revision", Type="SecureString",
                          Value=revision_value(lg["image"], base))
    rep, inv = agent(bed, doc, host, "adopt", digest)
    assert rep["status"] == "ok" and rep["detail"] == "adopted", inv
    # The host names the revision by the parameter's base and the digest, as the operator does.
    assert rep["revision"] == base + digest[7:39] and rep["applied"] == rep["revision"], rep
    assert rep["managed"] is True and rep["adopted"] is True and rep["cron"] == "disabled"
    assert rep["active"] == "blue" and rep["slots"]["blue"]["digest"] == digest
    assert rep["slots"]["blue"]["health"] == "healthy" and rep["unmanagedContainers"] == 0
    assert json.loads(docker(bed, host, "inspect", "molecule-tenant").stdout)[0]["Id"] == legacy_id
    stored = bed.moto_ssm.get_parameter(Name="/tenant-operator/adopt-org/imported-env",
                                        WithDecryption=True)["Parameter"]["Value"]
    assert b64s("t0p-s3cr3t") in stored and "t0p-s3cr3t" not in stored
    assert "t0p-s3cr3t" not in json.dumps(inv)
    for root, _, files in os.walk(os.path.join(host["sandbox"], "var/log")):
        for f in files:
            assert "t0p-s3cr3t" not in open(os.path.join(root, f), errors="replace").read(), f
    cron_stays_idle(bed, host)
    # again: harmless
    rep, _ = agent(bed, doc, host, "adopt", digest)
    assert rep["detail"] == "already-adopted"
    # an apply of a new digest replaces the adopted container with the imported options and env
    new = reg.push_image(bed.registry, "platform-tenant", "next", {"sim.version": "adopt-2"})
    bed.ssm.put_parameter(Name="/tenant-operator/adopt-org/revision", Type="SecureString", Overwrite=True,
                          Value=revision_value(lg["image"], "b" * 32,
                                               extra=[f"vol {b64s('/srv/data')} {b64s('/data')} rw"]))
    rep, inv = agent(bed, doc, host, "apply", new)
    assert rep["status"] == "ok", inv
    assert rep["applied"] == "b" * 32 + new[7:39], rep
    c = json.loads(docker(bed, host, "inspect", "app-blue").stdout)[0]
    assert "SECRET_TOKEN=t0p-s3cr3t" in c["Config"]["Env"] and "MULTI=a b" in c["Config"]["Env"]
    assert c["HostConfig"]["Binds"] == ["/srv/data:/data"]
    assert docker(bed, host, "inspect", "molecule-tenant", check=False).returncode != 0
    assert rep["adopted"] is False and rep["slots"]["blue"]["digest"] == new
    # release: the cron entry comes back and fires again; the serving container has its old name
    rep, inv = agent(bed, doc, host, "unadopt")
    assert rep["status"] == "ok" and rep["managed"] is False and rep["cron"] == "active", inv
    assert docker(bed, host, "inspect", "app-blue", check=False).returncode != 0  # renamed molecule-tenant
    runs = host_info(bed, host)["cron"]["runs"]
    wait_for(lambda: host_info(bed, host)["cron"]["runs"] > runs, timeout=60)

    def cron_took_over():  # the updater follows :latest again, as before the adoption
        code, body = http_get(f"http://{host['addr']}:8080/health")
        return code == 200 and json.loads(body)["digest"] == digest
    wait_for(cron_took_over, timeout=20, interval=0.2)


def test_agent_inspect_drops_what_it_cannot_report_safely(bed):
    reg.push_image(bed.registry, "platform-tenant", "latest", {"sim.version": "hostile"})
    host = add_host(bed, org="hostile-org", state="legacy", cron_interval_seconds=3600,
                    legacy_args=["--label", 'note=$(id)"`x`', "-v", "/srv/a b:/data", "--label", "ok=fine"],
                    legacy_env={"BAD-NAME": "v", "GOOD": "{{ssm:/other/secret}}"})
    doc = agent_doc(bed)
    rep, inv = agent(bed, doc, host, "inspect-legacy")
    assert rep["status"] == "ok", inv
    lg = rep["legacy"]
    assert lg["dropped"] == ["env", "label", "volume"], lg
    assert lg["labels"] == {"ok": "fine"} and lg["volumes"] == []
    assert lg["envNames"] == ["GOOD", "ORG_SLUG"]
    assert "ssm:" not in inv["StandardOutputContent"] and "$(id)" not in inv["StandardOutputContent"]
    # nothing changed on the host
    assert rep["managed"] is False and rep["cron"] == "active"
