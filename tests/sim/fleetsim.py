#!/usr/bin/env python3
"""Fleet simulator: the SSM Run Command API over simulated hosts that really run the document.

    fleetsim.py --port P --moto-url URL --workdir DIR --registry-url http://127.0.0.1:PORT

Serves the AWS JSON 1.1 protocol on POST / (X-Amz-Target: AmazonSSM.<Operation>) for the Run
Command and document operations; every other SSM operation (Parameter Store, tags, ...) is forwarded
verbatim to moto_server. Each simulated host has a sandbox <workdir>/hosts/<instance-id>/ and its own
loopback address; a command's script runs under /bin/bash there with the `docker` shim and `aws` CLI
on PATH. The admin API lives under /_sim/ (see tests/sim/README.md). Prints `READY <port>` when
listening. Only the Python standard library is needed (PyYAML is used for YAML documents if present).
"""

import argparse
import base64
import hashlib
import http.client
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.realpath(__file__))
ACCOUNT = "123456789012"
REGION = "us-east-1"
STDOUT_LIMIT = 24000
STDERR_LIMIT = 8000
PLUGIN_OUTPUT_LIMIT = 2500
MAX_INSTANCES = 50
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}
log = logging.getLogger("fleetsim")


class ApiError(Exception):
    def __init__(self, type_, message, status=400):
        super().__init__(message)
        self.type = type_
        self.message = message
        self.status = status


def iso_ms(t):
    if not t:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def parse_iso(s):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?$", s or "")
    if not m:
        raise ApiError("ValidationException", f"invalid date: {s}")
    import calendar
    t = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return t + (float("0" + m.group(2)) if m.group(2) else 0.0)


def validation(field, value, constraint):
    shown = json.dumps(value) if not isinstance(value, str) else value
    return ApiError("ValidationException",
                    f"1 validation error detected: Value '{shown}' at '{field}' failed to satisfy "
                    f"constraint: {constraint}")


# --- documents -----------------------------------------------------------------------------------

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.:/-]+)\s*\}\}")


def load_content(content, fmt):
    try:
        if fmt == "YAML":
            import yaml  # PyYAML ships with moto in the test bed's venv
            doc = yaml.safe_load(content)
        else:
            doc = json.loads(content)
    except Exception as e:  # noqa: BLE001 - any parse failure is the caller's bad content
        raise ApiError("InvalidDocumentContent", f"Document content is not valid {fmt}: {e}")
    if not isinstance(doc, dict):
        raise ApiError("InvalidDocumentContent", "Document content must be an object")
    return doc


def validate_command_doc(doc):
    sv = str(doc.get("schemaVersion", ""))
    if sv != "2.2":
        raise ApiError("InvalidDocumentSchemaVersion",
                       f"schemaVersion {sv!r}: the simulator runs Command documents of schemaVersion 2.2")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError("InvalidDocumentContent", "parameters must be a map")
    for name, p in params.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+", name) or not isinstance(p, dict):
            raise ApiError("InvalidDocumentContent", f"invalid parameter definition {name!r}")
        if p.get("type") not in ("String", "StringList", "Integer", "Boolean", "MapList", "StringMap"):
            raise ApiError("InvalidDocumentContent", f"parameter {name}: invalid type {p.get('type')!r}")
    steps = doc.get("mainSteps")
    if not isinstance(steps, list) or not steps:
        raise ApiError("InvalidDocumentContent", "mainSteps must be a non-empty list")
    names = set()
    for st in steps:
        if not isinstance(st, dict) or not st.get("name") or not st.get("action"):
            raise ApiError("InvalidDocumentContent", "each step needs name and action")
        if st["name"] in names:
            raise ApiError("InvalidDocumentContent", f"duplicate step name {st['name']}")
        names.add(st["name"])
        if st["action"] != "aws:runShellScript":
            raise ApiError("InvalidDocumentContent",
                           f"action {st['action']}: the simulator supports aws:runShellScript only")
        inputs = st.get("inputs") or {}
        rc = inputs.get("runCommand")
        if not isinstance(rc, (list, str)):
            raise ApiError("InvalidDocumentContent", f"step {st['name']}: inputs.runCommand is required")
    for ref in PLACEHOLDER.findall(json.dumps(steps)):
        if ":" in ref:
            continue
        if ref not in params:
            raise ApiError("InvalidDocumentContent", f"Parameter {ref} is not defined in the document")


def doc_parameters(doc):
    out = []
    for name, p in (doc.get("parameters") or {}).items():
        d = {"Name": name, "Type": p.get("type"), "Description": p.get("description", "")}
        if "default" in p:
            dv = p["default"]
            d["DefaultValue"] = dv if isinstance(dv, str) else json.dumps(dv) if not isinstance(dv, list) \
                else ",".join(str(x) for x in dv)
        out.append(d)
    return out


class Document:
    def __init__(self, name, doc_type, target_type, tags):
        self.name = name
        self.type = doc_type
        self.target_type = target_type
        self.tags = tags or []
        self.versions = []  # dicts
        self.default = 1

    def add_version(self, content, fmt, version_name=None, display_name=None):
        doc = load_content(content, fmt)
        validate_command_doc(doc)
        h = hashlib.sha256(content.encode()).hexdigest()
        v = {"version": len(self.versions) + 1, "content": content, "format": fmt, "doc": doc,
             "hash": h, "sha1": hashlib.sha1(content.encode()).hexdigest(), "created": time.time(),
             "version_name": version_name, "display_name": display_name}
        self.versions.append(v)
        return v

    def get(self, version=None, version_name=None):
        if version_name:
            for v in self.versions:
                if v["version_name"] == version_name:
                    return v
            raise ApiError("InvalidDocumentVersion", f"Document version name {version_name} does not exist")
        if version in (None, "", "$DEFAULT"):
            return self.versions[self.default - 1]
        if version == "$LATEST":
            return self.versions[-1]
        if not re.fullmatch(r"[1-9][0-9]*", str(version)) or int(version) > len(self.versions):
            raise ApiError("InvalidDocumentVersion", f"Document version {version} does not exist")
        return self.versions[int(version) - 1]

    def description(self, v):
        d = {
            "Sha1": v["sha1"], "Hash": v["hash"], "HashType": "Sha256", "Name": self.name,
            "Owner": ACCOUNT, "CreatedDate": v["created"], "Status": "Active",
            "DocumentVersion": str(v["version"]), "Description": v["doc"].get("description", ""),
            "Parameters": doc_parameters(v["doc"]), "PlatformTypes": ["Linux", "MacOS"],
            "DocumentType": self.type, "SchemaVersion": str(v["doc"].get("schemaVersion")),
            "LatestVersion": str(len(self.versions)), "DefaultVersion": str(self.default),
            "DocumentFormat": v["format"], "Tags": self.tags,
        }
        if self.target_type:
            d["TargetType"] = self.target_type
        if v["version_name"]:
            d["VersionName"] = v["version_name"]
        if v["display_name"]:
            d["DisplayName"] = v["display_name"]
        return d


def render_steps(doc, values, types):
    """Substitute {{ name }} exactly once (values are never re-expanded)."""
    def sub_str(s):
        def repl(m):
            name = m.group(1)
            if name not in values:
                return m.group(0)
            v = values[name]
            return ",".join(v) if isinstance(v, list) else v
        return PLACEHOLDER.sub(repl, s)

    steps = []
    for st in doc["mainSteps"]:
        inputs = dict(st.get("inputs") or {})
        rc = inputs.get("runCommand")
        lines = []
        for item in ([rc] if isinstance(rc, str) else rc):
            item = str(item)
            m = re.fullmatch(r"\s*\{\{\s*([A-Za-z0-9_]+)\s*\}\}\s*", item)
            if m and types.get(m.group(1)) == "StringList":
                lines.extend(values.get(m.group(1), []))
            else:
                lines.append(sub_str(item))
        rendered = {k: sub_str(v) if isinstance(v, str) else v for k, v in inputs.items() if k != "runCommand"}
        rendered["runCommand"] = lines
        steps.append({"name": st["name"], "action": st["action"], "inputs": rendered})
    return steps


# --- hosts and invocations -------------------------------------------------------------------------

class Host:
    def __init__(self, sim, instance_id, addr, state, org, sandbox):
        self.sim = sim
        self.id = instance_id
        self.addr = addr
        self.state = state
        self.org = org
        self.sandbox = sandbox
        self.registered = time.time()
        self.faults = {"agent_offline": False, "delivery_delay_seconds": 0.0, "throttle_next": 0,
                       "fail_next_delivery": 0, "unhealthy": False,
                       # The next N commands: never delivered in time; out of time on the host at
                       # once (killed as SSM kills a step past its timeoutSeconds); stdout garbled;
                       # stdout past SSM's 24,000-character limit (the report at its end is cut off).
                       "delivery_timeout_next": 0, "execution_timeout_next": 0, "garble_next": 0, "pad_next": 0,
                       # When set, the counted faults above (and fail_next_delivery) wait for a
                       # command whose `action` parameter is this one (an apply, not an observe).
                       "fault_action": ""}
        self.offline_since = None
        self.queue = []  # Invocation objects waiting for delivery, in order
        self.running = None
        self.removed = False
        self.thread = threading.Thread(target=self.worker, name=f"host-{instance_id}", daemon=True)
        self.cron_interval = 0.0  # legacy hosts: seconds between cron firings (compressed clock)
        self.cron_last = time.time()
        self.cron_runs = []
        self.cron_lock = threading.Lock()
        self.cron_passed = 0  # firings due while the entry was not active (a tick that ran nothing)
        self.cron_proc = None  # the updater while it runs (its own process group: removal kills it)

    @property
    def online(self):
        return not self.faults["agent_offline"]

    def info(self):
        return {"instance_id": self.id, "addr": self.addr, "state": self.state, "org": self.org,
                "sandbox": self.sandbox, "online": self.online, "faults": dict(self.faults),
                "queued": [i.command.id for i in self.queue],
                "running": self.running.command.id if self.running else None,
                "cron": {"entry": self.sim.cron_state(self), "interval_seconds": self.cron_interval,
                         "runs": len(self.cron_runs), "passed": self.cron_passed, "last": self.cron_runs[-1] if self.cron_runs else None}}

    def env(self):
        sim = self.sim
        return {
            "PATH": f"{sim.bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": os.path.join(self.sandbox, "root"),
            "LANG": "C.UTF-8",
            "TENANT_HOST_ROOT": self.sandbox,
            "TENANT_HOST_ADDR": self.addr,
            "AWS_ENDPOINT_URL": sim.moto_url,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "ASIASIMULATEDHOST",
            "AWS_SECRET_ACCESS_KEY": "simulated-instance-role-secret",
            "AWS_SESSION_TOKEN": f"simulated-session-{self.id}",
            "AWS_CONFIG_FILE": os.path.join(self.sandbox, "root", ".aws", "config"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(self.sandbox, "root", ".aws", "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_PAGER": "",
            # The test bed's warden kills what carries its marker once the run is over.
            **({"TESTBED_RUN": os.environ["TESTBED_RUN"]} if "TESTBED_RUN" in os.environ else {}),
        }

    def worker(self):
        sim = self.sim
        while True:
            with sim.cond:
                while not self.removed and not (self.online and self.queue):
                    sim.cond.wait(1.0)
                if self.removed:
                    return
                inv = self.queue[0]
                delay = self.faults["delivery_delay_seconds"]
            if delay > 0:
                # The delay is read again while waiting: lowering the fault shortens a wait under way.
                start = time.time()
                with sim.cond:
                    while (time.time() < start + self.faults["delivery_delay_seconds"] and not self.removed
                           and inv.status == "Pending"):
                        sim.cond.wait(0.1)
            with sim.cond:
                if self.removed:
                    return
                if inv in self.queue:
                    self.queue.remove(inv)
                if inv.status != "Pending":
                    continue  # cancelled or delivery-timed-out meanwhile
                if not self.online:
                    self.queue.insert(0, inv)
                    continue
                wanted = self.faults["fault_action"]
                if wanted and (inv.command.parameters or {}).get("action") not in ([wanted], wanted):
                    counted = False
                else:
                    counted = True
                if counted and self.faults["fail_next_delivery"] > 0:
                    self.faults["fail_next_delivery"] -= 1
                    inv.finish("Failed", "Undeliverable", -1)
                    sim.cond.notify_all()
                    continue
                if counted and self.faults["delivery_timeout_next"] > 0:
                    self.faults["delivery_timeout_next"] -= 1
                    inv.finish("TimedOut", "DeliveryTimedOut", -1)
                    sim.cond.notify_all()
                    continue
                for k in ("execution_timeout_next", "garble_next", "pad_next"):
                    if counted and self.faults[k] > 0:
                        self.faults[k] -= 1
                        inv.faults.add(k)
                inv.status, inv.details = "InProgress", "InProgress"
                inv.start = time.time()
                self.running = inv
            try:
                self.execute(inv)
            except Exception as e:  # noqa: BLE001 - a simulator bug must not kill the host thread
                log.exception("invocation %s on %s crashed", inv.command.id, self.id)
                with sim.cond:
                    inv.stderr += f"\nsimulator error: {e}"
                    inv.pending_final = ("Failed", "Failed", 1)
            # an offline agent cannot report: the final status waits until it is back
            with sim.cond:
                while not self.online and not self.removed:
                    sim.cond.wait(0.2)
                if inv.pending_final:
                    inv.finish(*inv.pending_final)
                self.running = None
                sim.cond.notify_all()

    def execute(self, inv):
        cmd = inv.command
        base = os.path.join(self.sandbox, "var", "lib", "amazon", "ssm", self.id, "document",
                            "orchestration", cmd.id)
        env = self.env()
        os.makedirs(env["HOME"], exist_ok=True)
        overall = ("Success", "Success", 0)
        for step in cmd.steps:
            plug = inv.plugins[step["name"]]
            if overall[0] != "Success":
                plug.update(Status="Cancelled", StatusDetails="Cancelled", ResponseCode=-1)
                continue
            d = os.path.join(base, step["name"].replace("/", "_"))
            os.makedirs(d, exist_ok=True)
            script = os.path.join(d, "_script.sh")
            with open(script, "w") as f:
                f.write("\n".join(step["inputs"]["runCommand"]) + "\n")
            os.chmod(script, 0o700)
            cwd = self.sandbox
            wd = step["inputs"].get("workingDirectory")
            if wd:
                cwd = os.path.join(self.sandbox, wd.lstrip("/"))
            try:
                timeout = float(step["inputs"].get("timeoutSeconds") or 3600)
            except ValueError:
                timeout = 3600.0
            if "execution_timeout_next" in inv.faults:
                timeout = 0.05
            out_path, err_path = os.path.join(d, "stdout"), os.path.join(d, "stderr")
            plug.update(Status="InProgress", StatusDetails="InProgress", ResponseStartDateTime=time.time())
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                try:
                    proc = subprocess.Popen(["/bin/bash", script], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=err, start_new_session=True, close_fds=True)
                except OSError as e:
                    err.write(f"failed to run script: {e}\n".encode())
                    proc = None
                with self.sim.cond:
                    inv.proc = proc
                deadline = time.time() + timeout
                outcome = None
                while proc is not None:
                    rc = proc.poll()
                    if rc is not None:
                        break
                    if inv.cancel_requested:
                        outcome = ("Cancelled", "Cancelled", -1)
                    elif time.time() > deadline:
                        outcome = ("TimedOut", "ExecutionTimedOut", -1)
                    if outcome:
                        kill_group(proc.pid)
                        proc.wait()
                        break
                    time.sleep(0.02)
                rc = proc.returncode if proc is not None else 1
            with open(out_path, "rb") as f:
                raw = f.read(STDOUT_LIMIT * 4 + 16)
            if "garble_next" in inv.faults:
                raw = bytes(range(256)) * 3
            if "pad_next" in inv.faults:
                raw = b"#" * (STDOUT_LIMIT + 1000) + b"\n" + raw
            stdout = raw.decode("utf-8", errors="replace")[:STDOUT_LIMIT]
            with open(err_path, "rb") as f:
                stderr = f.read(STDERR_LIMIT * 4 + 16).decode("utf-8", errors="replace")[:STDERR_LIMIT]
            if outcome is None:
                outcome = ("Success", "Success", 0) if rc == 0 else ("Failed", "Failed", rc)
            output = stdout
            if stderr:
                output += "\n----------ERROR-------\n" + stderr
            if outcome[1] == "ExecutionTimedOut":
                output += "\nfailed to run commands: exit status 1\nCommand execution timed out."
            plug.update(Status=outcome[0], StatusDetails=outcome[1], ResponseCode=outcome[2],
                        ResponseFinishDateTime=time.time(), Output=output[:PLUGIN_OUTPUT_LIMIT],
                        stdout=stdout, stderr=stderr)
            with self.sim.cond:
                inv.stdout = (inv.stdout + stdout)[:STDOUT_LIMIT]
                inv.stderr = (inv.stderr + stderr)[:STDERR_LIMIT]
                inv.response_code = outcome[2]
            overall = outcome
        with self.sim.cond:
            inv.pending_final = overall
            inv.proc = None


def kill_group(pid, sig=signal.SIGKILL):
    try:
        os.killpg(pid, sig)
    except OSError:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def kill_host_containers(sandbox):
    """Stop every container process the docker shim started in this sandbox."""
    cdir = os.path.join(sandbox, "var", "lib", "docker-sim", "containers")
    try:
        ids = os.listdir(cdir)
    except OSError:
        return
    for cid in ids:
        try:
            with open(os.path.join(cdir, cid, "state.json")) as f:
                rt = json.load(f)
        except (OSError, ValueError):
            continue
        if rt.get("SupervisorPid"):
            kill_group(rt["SupervisorPid"])
        if rt.get("Pid"):
            kill_group(rt["Pid"])


class Command:
    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.invocations = {}


class Invocation:
    def __init__(self, command, host):
        self.command = command
        self.host = host
        self.status = "Pending"
        self.details = "Pending"
        self.start = None
        self.end = None
        self.response_code = -1
        self.stdout = ""
        self.stderr = ""
        self.proc = None
        self.cancel_requested = False
        self.pending_final = None
        self.faults = set()  # faults of its host that this invocation carries (see Host.faults)
        self.plugins = {s["name"]: {"Name": s["name"], "Status": "Pending", "StatusDetails": "Pending",
                                    "ResponseCode": -1, "Output": ""} for s in command.steps}

    def finish(self, status, details, code):
        self.status, self.details, self.response_code = status, details, code
        self.end = time.time()
        for p in self.plugins.values():
            if p["Status"] in ("Pending", "InProgress"):
                p.update(Status="Cancelled" if status == "Cancelled" else status,
                         StatusDetails=details, ResponseCode=code)

    def get_result(self, plugin_name=None):
        c = self.command
        stdout, stderr, code = self.stdout, self.stderr, self.response_code
        status, details = self.status, self.details
        if plugin_name:
            p = self.plugins.get(plugin_name)
            if p is None:
                raise ApiError("InvalidPluginName", f"Plugin {plugin_name} not found")
            stdout, stderr = p.get("stdout", ""), p.get("stderr", "")
            code, status, details = p["ResponseCode"], p["Status"], p["StatusDetails"]
        end = self.end if status in TERMINAL else None
        return {
            "CommandId": c.id, "InstanceId": self.host.id, "Comment": c.comment,
            "DocumentName": c.document_name, "DocumentVersion": c.document_version,
            "PluginName": plugin_name or c.steps[0]["name"], "ResponseCode": code,
            "ExecutionStartDateTime": iso_ms(self.start),
            "ExecutionElapsedTime": f"PT{((end or time.time()) - self.start):.3f}S" if self.start else "",
            "ExecutionEndDateTime": iso_ms(end),
            "Status": status, "StatusDetails": details,
            "StandardOutputContent": stdout if status in TERMINAL else "",
            "StandardOutputUrl": "", "StandardErrorContent": stderr if status in TERMINAL else "",
            "StandardErrorUrl": "",
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
        }

    def listing(self, details):
        c = self.command
        d = {
            "CommandId": c.id, "InstanceId": self.host.id, "InstanceName": "", "Comment": c.comment,
            "DocumentName": c.document_name, "DocumentVersion": c.document_version,
            "RequestedDateTime": c.requested, "Status": self.status, "StatusDetails": self.details,
            "TraceOutput": "", "StandardOutputUrl": "", "StandardErrorUrl": "", "CommandPlugins": [],
            "ServiceRole": "", "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [],
                                                      "NotificationType": ""},
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
        }
        if details:
            for p in self.plugins.values():
                q = {k: v for k, v in p.items() if k not in ("stdout", "stderr")}
                if self.status not in TERMINAL:
                    q["Output"] = ""
                q.update(StandardOutputUrl="", StandardErrorUrl="", OutputS3Region=REGION,
                         OutputS3BucketName="", OutputS3KeyPrefix="")
                d["CommandPlugins"].append(q)
        return d

    def timeline(self):
        c = self.command
        return {"instance_id": self.host.id, "command_id": c.id, "comment": c.comment,
                "document_name": c.document_name, "document_version": c.document_version,
                "parameters": c.parameters, "requested": c.requested, "start": self.start, "end": self.end,
                "status": self.status, "status_details": self.details, "response_code": self.response_code,
                "revision": self.reported_revision()}

    def reported_revision(self):
        """The revision the host's report names (what an apply applied; the command names only the
        digest): the `revision` of the last JSON line of stdout, "" if there is none."""
        lines = self.stdout.strip().splitlines()
        try:
            rep = json.loads(lines[-1]) if lines else {}
        except ValueError:
            return ""
        rev = rep.get("revision") if isinstance(rep, dict) else None
        return rev if isinstance(rev, str) else ""


def command_status(c):
    invs = list(c.invocations.values())
    statuses = [i.status for i in invs]
    if any(s not in TERMINAL for s in statuses):
        if any(i.cancel_requested for i in invs):
            return "Cancelling", "Cancelling"
        if all(s == "Pending" for s in statuses):
            return "Pending", "Pending"
        return "InProgress", "InProgress"
    details = [i.details for i in invs]
    if all(s == "Success" for s in statuses):
        return "Success", "Success"
    if len(set(details)) == 1:
        return statuses[0], details[0]
    for s in ("Failed", "TimedOut", "Cancelled"):
        if s in statuses:
            return s, s
    return statuses[0], details[0]


# --- the simulator -------------------------------------------------------------------------------

class Sim:
    def __init__(self, args):
        self.moto_url = args.moto_url.rstrip("/")
        self.registry = urllib.parse.urlparse(args.registry_url).netloc if args.registry_url else ""
        self.workdir = os.path.abspath(args.workdir)
        self.bin_dir = os.path.join(self.workdir, "bin")
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.min_timeout = 30
        self.cron_interval = 5.0
        self.reset_state()
        self.setup_bin()
        threading.Thread(target=self.reaper, name="reaper", daemon=True).start()
        threading.Thread(target=self.cron_loop, name="cron", daemon=True).start()

    def reset_state(self):
        self.docs = {}
        self.commands = {}
        self.hosts = {}
        self.throttle_next = 0

    def setup_bin(self):
        os.makedirs(self.bin_dir, exist_ok=True)
        docker = os.path.join(self.bin_dir, "docker")
        with open(docker, "w") as f:
            f.write(f"#!/bin/sh\nexec {sys.executable} {os.path.join(HERE, 'docker')} \"$@\"\n")
        os.chmod(docker, 0o755)
        aws = shutil.which("aws", path=os.path.dirname(sys.executable)) or shutil.which("aws")
        link = os.path.join(self.bin_dir, "aws")
        if aws and not os.path.exists(link):
            os.symlink(aws, link)

    def reaper(self):
        """Delivery timeouts: an invocation not started within the command's TimeoutSeconds."""
        while True:
            time.sleep(0.1)
            with self.cond:
                now = time.time()
                changed = False
                for h in self.hosts.values():
                    for inv in list(h.queue):
                        if inv.status == "Pending" and now >= inv.command.expires:
                            h.queue.remove(inv)
                            inv.finish("TimedOut", "DeliveryTimedOut", -1)
                            changed = True
                if changed:
                    self.cond.notify_all()

    # -- admin ------------------------------------------------------------------------------------
    def add_host(self, body):
        iid = body.get("instance_id")
        addr = body.get("addr")
        if not iid or not re.fullmatch(r"(mi|i)-[0-9a-f]{8,17}", iid):
            raise ApiError("BadRequest", f"instance_id {iid!r} is not an instance id")
        if not addr or not re.fullmatch(r"127\.\d+\.\d+\.\d+", addr):
            raise ApiError("BadRequest", "addr must be a loopback address (127.x.y.z)")
        state = body.get("state") or "fresh"
        if state not in ("fresh", "legacy"):
            raise ApiError("BadRequest", "state must be fresh or legacy")
        org = body.get("org") or ""
        sandbox = os.path.join(self.workdir, "hosts", iid)
        with self.cond:
            if iid in self.hosts:
                raise ApiError("Conflict", f"host {iid} is already registered", 409)
            if any(h.addr == addr for h in self.hosts.values()):
                raise ApiError("Conflict", f"address {addr} is already used by another host", 409)
        for d in ("etc/tenant-operator", "var/lib/docker-sim/faults", "var/log", "root", "tmp", "opt"):
            os.makedirs(os.path.join(sandbox, d), exist_ok=True)
        if org:
            with open(os.path.join(sandbox, "etc/tenant-operator/org"), "w") as f:
                f.write(org + "\n")
        with open(os.path.join(sandbox, "var/lib/docker-sim/sim.json"), "w") as f:
            json.dump({"default_registry": self.registry, "python": sys.executable,
                       "slot_app": os.path.join(HERE, "slot_app.py"),
                       "fault_file": os.path.join(sandbox, "var/lib/docker-sim/faults/health")}, f)
        host = Host(self, iid, addr, state, org, sandbox)
        if state == "legacy":
            self.make_legacy(host, body)
        with self.cond:
            self.hosts[iid] = host
            host.thread.start()
        log.info("host %s registered at %s (%s, org=%s)", iid, addr, state, org)
        return host.info()

    # Extra `docker run` flags a legacy host may have been started with (the hand-written user-data).
    LEGACY_FLAGS = {"-v", "--network", "--add-host", "--label", "--restart"}

    def make_legacy(self, host, body):
        """The pre-operator setup: one hand-started container on :8080 with env frozen at first boot, and
        the cron auto-updater (seed 000, option B) that pulls `:latest` and restarts it when it moved."""
        image = body.get("legacy_image") or f"{self.registry}/platform-tenant:latest"
        args = body.get("legacy_args") or []
        if not isinstance(args, list) or len(args) % 2 or any(not isinstance(a, str) for a in args) \
                or any(args[i] not in self.LEGACY_FLAGS for i in range(0, len(args), 2)):
            raise ApiError("BadRequest", f"legacy_args: pairs of {sorted(self.LEGACY_FLAGS)} and a value")
        if "--restart" not in args:
            args = ["--restart", "unless-stopped"] + args
        env_file = os.path.join(host.sandbox, "etc/molecule/tenant.env")
        os.makedirs(os.path.dirname(env_file), exist_ok=True)
        with open(env_file, "w") as f:
            f.write(f"ORG_SLUG={host.org}\n")
            for k, v in (body.get("legacy_env") or {}).items():
                f.write(f"{k}={v}\n")
        run = " ".join(["docker run -d --name molecule-tenant -p 127.0.0.1:8080:8080",
                        " ".join(shlex.quote(a) for a in args), "--env-file", shlex.quote(env_file),
                        shlex.quote(image)])
        script = f"docker pull {shlex.quote(image)} >/dev/null && {run}"
        p = subprocess.run(["/bin/bash", "-c", script], cwd=host.sandbox, env=host.env(),
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            kill_host_containers(host.sandbox)
            shutil.rmtree(host.sandbox, ignore_errors=True)
            raise ApiError("BadRequest", f"legacy host set-up failed: {p.stderr.strip()}")
        # The auto-updater as the fleet runs it today: /usr/local/bin/molecule-auto-update.sh and its
        # cron entry. Paths are the sandbox's (a real host has them at the root).
        sb = host.sandbox
        updater = os.path.join(sb, "usr/local/bin/molecule-auto-update.sh")
        os.makedirs(os.path.dirname(updater), exist_ok=True)
        logf = os.path.join(sb, "var/log/molecule-auto-update.log")
        with open(updater, "w") as f:
            f.write(f"""#!/bin/bash
# molecule-auto-update.sh: pull :latest, compare, restart blindly when it moved (no pin, no hold-back)
IMAGE={shlex.quote(image)}
LOG={shlex.quote(logf)}
ts() {{ date -u +%Y-%m-%dT%H:%M:%SZ; }}
if ! docker pull "$IMAGE" >/dev/null 2>&1; then echo "$(ts) pull failed" >> "$LOG"; exit 1; fi
new="$(docker inspect --type image --format '{{{{.Id}}}}' "$IMAGE" 2>/dev/null)"
cur="$(docker inspect --format '{{{{.Image}}}}' molecule-tenant 2>/dev/null)"
if [ -n "$cur" ] && [ "$new" = "$cur" ]; then echo "$(ts) unchanged $new" >> "$LOG"; exit 0; fi
docker stop molecule-tenant >/dev/null 2>&1; docker rm -f molecule-tenant >/dev/null 2>&1
{run} >/dev/null || {{ echo "$(ts) run failed" >> "$LOG"; exit 1; }}
echo "$(ts) updated $cur -> $new" >> "$LOG"
""")
        os.chmod(updater, 0o755)
        cron = os.path.join(sb, "etc/cron.d/molecule-autoupdate")
        os.makedirs(os.path.dirname(cron), exist_ok=True)
        with open(cron, "w") as f:
            f.write("*/5 * * * * root /usr/local/bin/molecule-auto-update.sh\n")
        host.cron_interval = float(body.get("cron_interval_seconds") or self.cron_interval)

    def cron_state(self, host):
        """`active` when the cron entry exists with an uncommented line naming the updater."""
        path = os.path.join(host.sandbox, "etc/cron.d/molecule-autoupdate")
        try:
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return "absent"
        live = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")
                and "molecule-auto-update.sh" in ln]
        return "active" if live else "disabled"

    def cron_loop(self):
        """A compressed clock for cron: each legacy host's entry fires every `cron_interval` seconds."""
        while True:
            time.sleep(0.2)
            try:
                self.cron_tick()
            except Exception:  # noqa: BLE001 - one bad host must not stop cron on every host
                log.exception("cron tick failed")

    def cron_tick(self):
        now = time.time()
        with self.cond:
            due = [h for h in self.hosts.values() if h.cron_interval and not h.removed
                   and now - h.cron_last >= h.cron_interval]
            for h in due:
                h.cron_last = now
        for h in due:
            if self.cron_state(h) != "active":
                with self.cond:
                    h.cron_passed += 1
                continue
            if not h.cron_lock.acquire(blocking=False):
                # the previous run is still going (cron would start another; flock-less scripts race)
                log.info("cron on %s: skipped, the previous run is still going", h.id)
                continue
            # Counted here, in tick order, when it starts: a run is visible before it finishes, and
            # once a tick has passed a disabled entry no run of an earlier tick can appear.
            run = {"start": time.time(), "end": None, "rc": None}
            with self.cond:
                h.cron_runs.append(run)
                del h.cron_runs[:-200]
            try:
                threading.Thread(target=self.cron_run, args=(h, run), daemon=True).start()
            except RuntimeError:
                h.cron_lock.release()
                raise

    def cron_run(self, host, run):
        """Runs the updater once; the caller holds `host.cron_lock`, released here."""
        try:
            start = run["start"]
            updater = os.path.join(host.sandbox, "usr/local/bin/molecule-auto-update.sh")
            with self.cond:
                if host.removed:
                    return
                try:
                    p = subprocess.Popen(["/bin/bash", updater], cwd=host.sandbox, env=host.env(),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
                except OSError:
                    p = None
                host.cron_proc = p
            try:
                rc = p.wait(timeout=120) if p else -1
            except subprocess.TimeoutExpired:
                kill_group(p.pid)
                rc = -1
            with self.cond:
                host.cron_proc = None
                run.update(end=time.time(), rc=rc)
            log.info("cron on %s: molecule-auto-update.sh -> %s in %.1fs", host.id, rc, time.time() - start)
        finally:
            host.cron_lock.release()

    def set_faults(self, iid, body):
        with self.cond:
            h = self.hosts.get(iid)
            if h is None:
                raise ApiError("NotFound", f"no host {iid}", 404)
            for k, v in body.items():
                if k not in h.faults:
                    raise ApiError("BadRequest", f"unknown fault {k}; known: {sorted(h.faults)}")
                h.faults[k] = type(h.faults[k])(v)
            if h.faults["agent_offline"] and h.offline_since is None:
                h.offline_since = time.time()
            if not h.faults["agent_offline"]:
                h.offline_since = None
            with open(os.path.join(h.sandbox, "var/lib/docker-sim/faults/health"), "w") as f:
                f.write("unhealthy\n" if h.faults["unhealthy"] else "")
            self.cond.notify_all()
            return h.info()

    def remove_all(self):
        with self.cond:
            hosts = list(self.hosts.values())
            for h in hosts:
                h.removed = True
                for inv in h.queue:
                    inv.cancel_requested = True
            for c in self.commands.values():
                for inv in c.invocations.values():
                    if inv.proc is not None:
                        kill_group(inv.proc.pid)
            # A cron run in flight would start the legacy container again after the kill below.
            for h in hosts:
                if h.cron_proc is not None:
                    kill_group(h.cron_proc.pid)
            self.cond.notify_all()
        for h in hosts:
            kill_host_containers(h.sandbox)

    def reset(self):
        self.remove_all()
        with self.cond:
            hosts = list(self.hosts.values())
            self.reset_state()
        for h in hosts:
            shutil.rmtree(h.sandbox, ignore_errors=True)

    def timeline(self):
        with self.cond:
            out = []
            for c in sorted(self.commands.values(), key=lambda c: c.requested):
                for inv in c.invocations.values():
                    out.append(inv.timeline())
            return out

    # -- throttling ------------------------------------------------------------------------------
    def check_throttle(self, op, body):
        with self.cond:
            if self.throttle_next > 0:
                self.throttle_next -= 1
                raise ApiError("ThrottlingException", "Rate exceeded")
            named = set()
            if isinstance(body.get("InstanceIds"), list):
                named.update(x for x in body["InstanceIds"] if isinstance(x, str))
            if isinstance(body.get("InstanceId"), str):
                named.add(body["InstanceId"])
            for f in body.get("InstanceInformationFilterList") or []:
                if f.get("key") == "InstanceIds":
                    named.update(f.get("valueSet") or [])
            for f in body.get("Filters") or []:
                if isinstance(f, dict) and f.get("Key") == "InstanceIds":
                    named.update(f.get("Values") or [])
            for iid in named:
                h = self.hosts.get(iid)
                if h and h.faults["throttle_next"] > 0:
                    h.faults["throttle_next"] -= 1
                    raise ApiError("ThrottlingException", "Rate exceeded")

    # -- SSM operations ----------------------------------------------------------------------------
    def doc_name(self, name):
        if not isinstance(name, str) or not name:
            raise validation("name", name, "Member must not be null")
        if name.startswith("arn:"):
            name = name.rsplit("/", 1)[-1]
        return name

    def get_doc(self, name):
        name = self.doc_name(name)
        d = self.docs.get(name)
        if d is None:
            raise ApiError("InvalidDocument", f"Document with name {name} does not exist.")
        return d

    def op_CreateDocument(self, b):
        name = b.get("Name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z0-9_\-.]{3,128}", name):
            raise validation("name", name, "Member must satisfy regular expression pattern: ^[a-zA-Z0-9_\\-.]{3,128}$")
        if re.match(r"(?i)(aws|amazon|amzn)", name):
            raise ApiError("ValidationException", f"Document name {name} uses a reserved prefix")
        content = b.get("Content")
        if not isinstance(content, str) or not content:
            raise validation("content", content, "Member must not be null")
        doc_type = b.get("DocumentType") or "Command"
        if doc_type != "Command":
            raise ApiError("InvalidDocumentContent", f"DocumentType {doc_type}: the simulator runs Command documents")
        fmt = b.get("DocumentFormat") or "JSON"
        with self.cond:
            if name in self.docs:
                raise ApiError("DocumentAlreadyExists", "Document with same name " + name + " already exists")
            d = Document(name, doc_type, b.get("TargetType"), b.get("Tags"))
            v = d.add_version(content, fmt, b.get("VersionName"), b.get("DisplayName"))
            self.docs[name] = d
            return {"DocumentDescription": d.description(v)}

    def op_UpdateDocument(self, b):
        content = b.get("Content")
        if not isinstance(content, str) or not content:
            raise validation("content", content, "Member must not be null")
        with self.cond:
            d = self.get_doc(b.get("Name"))
            ver = b.get("DocumentVersion")
            if ver not in (None, "$LATEST", str(len(d.versions))):
                raise ApiError("InvalidDocumentVersion",
                               "The document version is not valid or does not exist. Only the latest version "
                               "can be updated.")
            h = hashlib.sha256(content.encode()).hexdigest()
            if any(v["hash"] == h for v in d.versions):
                raise ApiError("DuplicateDocumentContent",
                               "The content of the document matches another version. Change the content and try again.")
            if b.get("VersionName") and any(v["version_name"] == b["VersionName"] for v in d.versions):
                raise ApiError("DuplicateDocumentVersionName", "The version name has already been used.")
            v = d.add_version(content, b.get("DocumentFormat") or d.versions[-1]["format"], b.get("VersionName"),
                              b.get("DisplayName"))
            return {"DocumentDescription": d.description(v)}

    def op_UpdateDocumentDefaultVersion(self, b):
        with self.cond:
            d = self.get_doc(b.get("Name"))
            ver = b.get("DocumentVersion")
            if ver in (None, "$DEFAULT", "$LATEST"):
                raise ApiError("InvalidDocumentVersion", f"Document version {ver} is not valid here")
            v = d.get(ver)
            d.default = v["version"]
            out = {"Name": d.name, "DefaultVersion": str(d.default)}
            if v["version_name"]:
                out["DefaultVersionName"] = v["version_name"]
            return {"Description": out}

    def op_DescribeDocument(self, b):
        with self.cond:
            d = self.get_doc(b.get("Name"))
            return {"Document": d.description(d.get(b.get("DocumentVersion"), b.get("VersionName")))}

    def op_GetDocument(self, b):
        with self.cond:
            d = self.get_doc(b.get("Name"))
            v = d.get(b.get("DocumentVersion"), b.get("VersionName"))
            fmt = b.get("DocumentFormat") or v["format"]
            content = v["content"]
            if fmt != v["format"]:
                if fmt == "JSON":
                    content = json.dumps(v["doc"], indent=2)
                elif fmt == "YAML":
                    import yaml
                    content = yaml.safe_dump(v["doc"], sort_keys=False)
                else:
                    raise validation("documentFormat", fmt, "Member must satisfy enum value set: [YAML, JSON, TEXT]")
            out = {"Name": d.name, "CreatedDate": v["created"], "DocumentVersion": str(v["version"]),
                   "Status": "Active", "Content": content, "DocumentType": d.type, "DocumentFormat": fmt}
            if v["version_name"]:
                out["VersionName"] = v["version_name"]
            if v["display_name"]:
                out["DisplayName"] = v["display_name"]
            return out

    def resolve_ssm_refs(self, value):
        """SSM resolves {{ssm:name}} inside command parameter values, with the sender's rights."""
        def repl(m):
            name = m.group(1)
            status, body = self.moto_call("GetParameter", {"Name": name, "WithDecryption": False})
            if status != 200:
                raise ApiError("InvalidParameters", f"Parameter {name} could not be resolved")
            p = json.loads(body).get("Parameter") or {}
            if p.get("Type") == "SecureString":
                raise ApiError("InvalidParameters", f"SecureString parameter {name} is not supported here")
            return p.get("Value", "")
        return re.sub(r"\{\{\s*ssm:([A-Za-z0-9_./-]+)\s*\}\}", repl, value)

    def op_SendCommand(self, b):
        ids = b.get("InstanceIds")
        if ids is not None and not isinstance(ids, list):
            raise validation("instanceIds", ids, "Member must be a list")
        if ids is not None and len(ids) > MAX_INSTANCES:
            raise validation("instanceIds", ids, f"Member must have length less than or equal to {MAX_INSTANCES}")
        comment = b.get("Comment") or ""
        if len(comment) > 100:
            raise validation("comment", comment, "Member must have length less than or equal to 100")
        timeout = b.get("TimeoutSeconds")
        if timeout is not None and (not isinstance(timeout, int) or timeout < self.min_timeout or timeout > 2592000):
            raise validation("timeoutSeconds", timeout,
                             f"Member must have value greater than or equal to {self.min_timeout}"
                             if isinstance(timeout, int) and timeout < self.min_timeout
                             else "Member must have value less than or equal to 2592000")
        targets = b.get("Targets") or []
        if targets:
            if ids:
                raise ApiError("InvalidParameters", "Specify either InstanceIds or Targets, not both")
            ids = []
            for t in targets:
                if t.get("Key") != "InstanceIds":
                    raise ApiError("InvalidParameters", "the simulator supports only InstanceIds targets")
                ids.extend(t.get("Values") or [])
            if len(ids) > MAX_INSTANCES:
                raise validation("targets", ids, f"Member must have length less than or equal to {MAX_INSTANCES}")
        if not ids:
            raise ApiError("InvalidInstanceId", "No instance ids or targets were given")
        if len(set(ids)) != len(ids):
            raise ApiError("DuplicateInstanceId", "Instance Id is duplicated")
        params_in = b.get("Parameters") or {}
        if not isinstance(params_in, dict) or any(not isinstance(v, list) for v in params_in.values()):
            raise ApiError("InvalidParameters", "Parameters must map names to lists of strings")
        with self.cond:
            d = self.get_doc(b.get("DocumentName"))
            v = d.get(b.get("DocumentVersion"))
            if b.get("DocumentHash") and b["DocumentHash"] != (v["hash"] if b.get("DocumentHashType", "Sha256") == "Sha256" else v["sha1"]):
                raise ApiError("InvalidDocument", "The document hash does not match the document")
            unknown = [i for i in ids if i not in self.hosts]
            if unknown:
                raise ApiError("InvalidInstanceId", f"Instances {unknown} not in a valid state for account {ACCOUNT}")
        doc = v["doc"]
        declared = doc.get("parameters") or {}
        values, types = {}, {}
        for name, p in declared.items():
            types[name] = p.get("type")
            if "default" in p:
                dv = p["default"]
                values[name] = [str(x) for x in dv] if isinstance(dv, list) else str(dv).lower() if isinstance(dv, bool) else str(dv)
        for name, vals in params_in.items():
            if name not in declared:
                raise ApiError("InvalidParameters", f"Parameter \"{name}\" is not defined in the document")
            vals = [self.resolve_ssm_refs(str(x)) for x in vals]
            p = declared[name]
            if p.get("type") == "StringList":
                values[name] = vals
            else:
                if len(vals) != 1:
                    raise ApiError("InvalidParameters", f"Parameter \"{name}\" takes exactly one value")
                values[name] = vals[0]
        for name, p in declared.items():
            if name not in values:
                raise ApiError("InvalidParameters", f"Parameter \"{name}\" is required")
            checks = values[name] if isinstance(values[name], list) else [values[name]]
            pat = p.get("allowedPattern")
            if pat and any(re.search(pat, x) is None for x in checks):
                raise ApiError("InvalidParameters",
                               f"Parameter \"{name}\" value does not match the allowed pattern {pat}")
            allowed = p.get("allowedValues")
            if allowed and any(x not in allowed for x in checks):
                raise ApiError("InvalidParameters", f"Parameter \"{name}\" value is not an allowed value")
        steps = render_steps(doc, values, types)
        now = time.time()
        timeout = timeout or 3600
        cmd = Command(id=str(uuid.uuid4()), document_name=d.name, document_version=str(v["version"]),
                      comment=comment, parameters=params_in, instance_ids=list(ids), requested=now,
                      expires=now + timeout, timeout=timeout, steps=steps,
                      max_concurrency=b.get("MaxConcurrency") or "50", max_errors=b.get("MaxErrors") or "0",
                      service_role=b.get("ServiceRoleArn") or "", targets=targets,
                      output_bucket=b.get("OutputS3BucketName") or "",
                      output_prefix=b.get("OutputS3KeyPrefix") or "")
        with self.cond:
            for iid in ids:
                h = self.hosts[iid]
                inv = Invocation(cmd, h)
                cmd.invocations[iid] = inv
                h.queue.append(inv)
            self.commands[cmd.id] = cmd
            self.cond.notify_all()
            log.info("SendCommand %s doc=%s v%s instances=%s comment=%r", cmd.id, d.name, v["version"], ids, comment)
            return {"Command": self.command_json(cmd)}

    def command_json(self, c):
        status, details = command_status(c)
        invs = list(c.invocations.values())
        return {
            "CommandId": c.id, "DocumentName": c.document_name, "DocumentVersion": c.document_version,
            "Comment": c.comment, "ExpiresAfter": c.expires, "Parameters": c.parameters,
            "InstanceIds": c.instance_ids, "Targets": c.targets, "RequestedDateTime": c.requested,
            "Status": status, "StatusDetails": details, "OutputS3Region": REGION,
            "OutputS3BucketName": c.output_bucket, "OutputS3KeyPrefix": c.output_prefix,
            "MaxConcurrency": c.max_concurrency, "MaxErrors": c.max_errors, "TargetCount": len(invs),
            "CompletedCount": sum(1 for i in invs if i.status in TERMINAL),
            "ErrorCount": sum(1 for i in invs if i.status in ("Failed", "TimedOut")
                              and i.details != "DeliveryTimedOut"),
            "DeliveryTimedOutCount": sum(1 for i in invs if i.details == "DeliveryTimedOut"),
            "ServiceRole": c.service_role,
            "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""},
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
            "TimeoutSeconds": c.timeout,
        }

    def check_command_id(self, cid):
        if cid is not None and (not isinstance(cid, str) or not re.fullmatch(r"[0-9a-f-]{36}", cid)):
            raise ApiError("InvalidCommandId", f"Command id {cid} is not valid")

    def _filters(self, filters):
        preds = []
        for f in filters or []:
            key, val = f.get("key"), f.get("value")
            if key not in ("InvokedAfter", "InvokedBefore", "Status", "ExecutionStage", "DocumentName"):
                raise ApiError("InvalidFilterKey", f"Filter key {key} is not valid")
            if key == "InvokedAfter":
                t = parse_iso(val)
                preds.append(lambda c, s, t=t: c.requested >= t)
            elif key == "InvokedBefore":
                t = parse_iso(val)
                preds.append(lambda c, s, t=t: c.requested <= t)
            elif key == "Status":
                preds.append(lambda c, s, v=val: s == v)
            elif key == "ExecutionStage":
                if val not in ("Executing", "Complete"):
                    raise ApiError("InvalidFilterValue", f"ExecutionStage {val} is not valid")
                preds.append(lambda c, s, v=val: (s in TERMINAL) == (v == "Complete"))
            elif key == "DocumentName":
                preds.append(lambda c, s, v=val: c.document_name == v)
        return preds

    @staticmethod
    def _page(items, b, default=50):
        mr = b.get("MaxResults") or default
        if not isinstance(mr, int) or mr < 1 or mr > 50:
            raise validation("maxResults", mr, "Member must have value less than or equal to 50")
        start = 0
        if b.get("NextToken"):
            try:
                start = int(base64.b64decode(b["NextToken"]).decode())
            except (ValueError, UnicodeDecodeError):
                raise ApiError("InvalidNextToken", "The specified token isn't valid.")
        page = items[start:start + mr]
        nxt = base64.b64encode(str(start + mr).encode()).decode() if start + mr < len(items) else None
        return page, nxt

    def op_ListCommands(self, b):
        self.check_command_id(b.get("CommandId"))
        with self.cond:
            preds = self._filters(b.get("Filters"))
            out = []
            for c in sorted(self.commands.values(), key=lambda c: c.requested, reverse=True):
                if b.get("CommandId") and c.id != b["CommandId"]:
                    continue
                if b.get("InstanceId") and b["InstanceId"] not in c.invocations:
                    continue
                s, _ = command_status(c)
                if all(p(c, s) for p in preds):
                    out.append(self.command_json(c))
            page, nxt = self._page(out, b)
            res = {"Commands": page}
            if nxt:
                res["NextToken"] = nxt
            return res

    def op_ListCommandInvocations(self, b):
        self.check_command_id(b.get("CommandId"))
        with self.cond:
            preds = self._filters(b.get("Filters"))
            out = []
            for c in sorted(self.commands.values(), key=lambda c: c.requested, reverse=True):
                if b.get("CommandId") and c.id != b["CommandId"]:
                    continue
                for iid, inv in c.invocations.items():
                    if b.get("InstanceId") and iid != b["InstanceId"]:
                        continue
                    if all(p(c, inv.status) for p in preds):
                        out.append(inv.listing(bool(b.get("Details"))))
            page, nxt = self._page(out, b)
            res = {"CommandInvocations": page}
            if nxt:
                res["NextToken"] = nxt
            return res

    def op_GetCommandInvocation(self, b):
        cid, iid = b.get("CommandId"), b.get("InstanceId")
        if not cid:
            raise validation("commandId", cid, "Member must not be null")
        if not iid:
            raise validation("instanceId", iid, "Member must not be null")
        self.check_command_id(cid)
        with self.cond:
            c = self.commands.get(cid)
            inv = c.invocations.get(iid) if c else None
            if inv is None:
                raise ApiError("InvocationDoesNotExist", "")
            return inv.get_result(b.get("PluginName"))

    def op_CancelCommand(self, b):
        cid = b.get("CommandId")
        self.check_command_id(cid)
        with self.cond:
            c = self.commands.get(cid)
            if c is None:
                raise ApiError("InvalidCommandId", f"Command {cid} does not exist")
            targets = b.get("InstanceIds") or list(c.invocations)
            for iid in targets:
                inv = c.invocations.get(iid)
                if inv is None:
                    raise ApiError("InvalidInstanceId", f"Instance {iid} is not part of command {cid}")
                if inv.status == "Pending":
                    if inv in inv.host.queue:
                        inv.host.queue.remove(inv)
                    inv.finish("Cancelled", "Cancelled", -1)
                elif inv.status == "InProgress":
                    inv.cancel_requested = True
            self.cond.notify_all()
            return {}

    def op_DescribeInstanceInformation(self, b):
        with self.cond:
            want_ids, want_ping = None, None
            for f in b.get("InstanceInformationFilterList") or []:
                key, vals = f.get("key"), f.get("valueSet") or []
                if key == "InstanceIds":
                    want_ids = set(vals)
                elif key == "PingStatus":
                    want_ping = set(vals)
                elif key not in ("PlatformTypes", "ResourceType", "AgentVersion", "ActivationIds",
                                 "IamRole", "AssociationStatus"):
                    raise ApiError("InvalidInstanceInformationFilterValue", f"filter key {key} is not valid")
            for f in b.get("Filters") or []:
                key, vals = f.get("Key"), f.get("Values") or []
                if key == "InstanceIds":
                    want_ids = set(vals) if want_ids is None else want_ids & set(vals)
                elif key == "PingStatus":
                    want_ping = set(vals)
            out = []
            for h in sorted(self.hosts.values(), key=lambda h: h.registered):
                if want_ids is not None and h.id not in want_ids:
                    continue
                ping = "Online" if h.online else "ConnectionLost"
                if want_ping is not None and ping not in want_ping:
                    continue
                out.append({
                    "InstanceId": h.id, "PingStatus": ping,
                    "LastPingDateTime": time.time() if h.online else h.offline_since,
                    "AgentVersion": "3.3.1142.0", "IsLatestVersion": True, "PlatformType": "Linux",
                    "PlatformName": "Amazon Linux", "PlatformVersion": "2023", "ResourceType": "EC2Instance",
                    "IPAddress": h.addr, "ComputerName": f"ip-{h.addr.replace('.', '-')}.ec2.internal",
                    "IamRole": "", "RegistrationDate": h.registered, "SourceId": h.id, "SourceType": "AWS::EC2::Instance",
                })
            mr = b.get("MaxResults") or 50
            if not isinstance(mr, int) or mr < 5 or mr > 50:
                raise validation("maxResults", mr, "Member must have value between 5 and 50")
            b = dict(b, MaxResults=mr)
            page, nxt = self._page(out, b)
            res = {"InstanceInformationList": page}
            if nxt:
                res["NextToken"] = nxt
            return res

    # -- moto ---------------------------------------------------------------------------------------
    def moto_call(self, op, payload):
        u = urllib.parse.urlparse(self.moto_url)
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
        try:
            conn.request("POST", "/", body=json.dumps(payload).encode(), headers={
                "X-Amz-Target": f"AmazonSSM.{op}", "Content-Type": "application/x-amz-json-1.1",
                "Authorization": "AWS4-HMAC-SHA256 Credential=AKIASIMULATOR/20260101/us-east-1/ssm/aws4_request, "
                                 "SignedHeaders=host, Signature=0"})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def forward(self, method, path, headers, body):
        u = urllib.parse.urlparse(self.moto_url)
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=60)
        try:
            hdrs = {k: v for k, v in headers.items() if k.lower() not in ("connection", "keep-alive",
                                                                            "transfer-encoding")}
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return r.status, r.getheaders(), r.read()
        finally:
            conn.close()


OPS = {"CreateDocument", "UpdateDocument", "UpdateDocumentDefaultVersion", "DescribeDocument", "GetDocument",
       "SendCommand", "ListCommands", "GetCommandInvocation", "ListCommandInvocations",
       "DescribeInstanceInformation", "CancelCommand"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fleetsim/1"

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    def _reply(self, status, body, ctype="application/x-amz-json-1.1", extra=None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for k, v in (extra or []):
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        sim = self.server.sim
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path == "/_sim/health":
                return self._reply(200, {"ok": True}, "application/json")
            if path == "/_sim/hosts":
                with sim.cond:
                    return self._reply(200, [h.info() for h in sim.hosts.values()], "application/json")
            m = re.fullmatch(r"/_sim/hosts/([^/]+)", path)
            if m:
                with sim.cond:
                    h = sim.hosts.get(m.group(1))
                    if h is None:
                        raise ApiError("NotFound", f"no host {m.group(1)}", 404)
                    return self._reply(200, h.info(), "application/json")
            if path == "/_sim/timeline":
                return self._reply(200, sim.timeline(), "application/json")
            if path == "/_sim/faults":
                with sim.cond:
                    return self._reply(200, {"throttle_next": sim.throttle_next}, "application/json")
            return self._reply(404, {"error": "not found"}, "application/json")
        except ApiError as e:
            return self._reply(e.status, {"error": e.type, "message": e.message}, "application/json")

    def do_POST(self):
        sim = self.server.sim
        raw = self._body()
        path = self.path.split("?", 1)[0]
        if path.startswith("/_sim/"):
            return self.admin(sim, path.rstrip("/"), raw)
        target = self.headers.get("X-Amz-Target", "")
        op = target.split(".", 1)[1] if target.startswith("AmazonSSM.") else None
        try:
            body = json.loads(raw or b"{}") if op else {}
            if not isinstance(body, dict):
                raise ApiError("SerializationException", "request body must be a JSON object")
        except ValueError:
            return self._reply(400, {"__type": "SerializationException", "message": "invalid JSON"})
        try:
            sim.check_throttle(op, body)
            if op in OPS:
                log.info("%s %s", op, json.dumps(body)[:500])
                res = getattr(sim, f"op_{op}")(body)
                return self._reply(200, res)
        except ApiError as e:
            log.info("%s -> %s: %s", op, e.type, e.message)
            return self._reply(e.status, {"__type": e.type, "message": e.message})
        except Exception as e:  # noqa: BLE001
            log.exception("%s crashed", op)
            return self._reply(500, {"__type": "InternalServerError", "message": str(e)})
        # everything else: Parameter Store and friends, verbatim to moto
        try:
            status, headers, data = sim.forward("POST", self.path, dict(self.headers.items()), raw)
        except OSError as e:
            return self._reply(500, {"__type": "InternalServerError", "message": f"moto unreachable: {e}"})
        log.info("forwarded %s -> %s", op or self.path, status)
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def admin(self, sim, path, raw):
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self._reply(400, {"error": "invalid JSON"}, "application/json")
        try:
            if path == "/_sim/hosts":
                return self._reply(201, sim.add_host(body), "application/json")
            m = re.fullmatch(r"/_sim/hosts/([^/]+)/faults", path)
            if m:
                return self._reply(200, sim.set_faults(m.group(1), body), "application/json")
            if path == "/_sim/faults":
                with sim.cond:
                    sim.throttle_next = int(body.get("throttle_next", 0))
                return self._reply(200, {"throttle_next": sim.throttle_next}, "application/json")
            if path == "/_sim/config":
                with sim.cond:
                    if "min_timeout_seconds" in body:
                        sim.min_timeout = int(body["min_timeout_seconds"])
                    if "cron_interval_seconds" in body:
                        sim.cron_interval = float(body["cron_interval_seconds"])
                return self._reply(200, {"min_timeout_seconds": sim.min_timeout,
                                         "cron_interval_seconds": sim.cron_interval}, "application/json")
            if path == "/_sim/reset":
                sim.reset()
                return self._reply(200, {"ok": True}, "application/json")
            return self._reply(404, {"error": "not found"}, "application/json")
        except ApiError as e:
            return self._reply(e.status if e.status != 400 else 400, {"error": e.type, "message": e.message},
                               "application/json")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--moto-url", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--registry-url", default="")
    p.add_argument("--log-file", help="default: <workdir>/fleetsim.log")
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    logging.basicConfig(filename=args.log_file or os.path.join(args.workdir, "fleetsim.log"),
                        level=logging.INFO, format="%(asctime)s %(threadName)s %(message)s")
    sim = Sim(args)
    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    srv.daemon_threads = True
    srv.sim = sim

    def shutdown(signum, _frame):
        log.info("signal %s: stopping hosts and containers", signum)
        sim.remove_all()
        os._exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    print(f"READY {srv.server_address[1]}", flush=True)
    log.info("listening on %s:%s (moto %s, registry %s)", args.host, srv.server_address[1], args.moto_url,
             sim.registry)
    srv.serve_forever()


if __name__ == "__main__":
    main()
