"""Fixtures for the web tests: a real `ferry serve` on a real loop-mounted XFS, with real Unix users.

Fixture names are a contract with the browser tests (test_browser.py): keep them stable.

- ferry_bin     (session)  path of the ferry binary: $FERRY_BIN, else <repo>/.build/debug/ferry
- xfs_sandbox   (session)  a 3 GiB loop XFS with projects/alpha, beta, gamma = project 100, 200, 300
- start_server  (function) factory: start_server(auth="token", roots=None, extra_toml="", env=None, workers=None)
- server        (function) start_server() with the defaults
- unix_user     (function) factory: unix_user(password=None) creates a user with useradd, removed at teardown

These tests need root (loop devices, project IDs, useradd) and fail, never skip, without it.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"ferry serve: listening on (http://\S+)")
LOGIN_LINE = re.compile(r"ferry serve: log in at (\S+)")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
PROJECTS = {"alpha": 100, "beta": 200, "gamma": 300}


def run(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command; on failure the error names the command and shows what it printed."""
    result = subprocess.run(list(args), capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}")
    return result


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"{what} needs root (loop devices, XFS project IDs, useradd); run the web tests as root",
                    pytrace=False)


# --------------------------------------------------------------------------------------------------
# ferry_bin


@pytest.fixture(scope="session")
def ferry_bin() -> Path:
    path = Path(os.environ.get("FERRY_BIN") or REPO / ".build" / "debug" / "ferry")
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"the ferry binary is missing: {path} (build it with `swift build --product ferry` "
                    f"and `--product ferry-engine`, "
                    f"or point FERRY_BIN at one)", pytrace=False)
    return path


# --------------------------------------------------------------------------------------------------
# xfs_sandbox


class XFSSandbox:
    """A loop-mounted XFS. `projects/<name>` carries its project ID with the inherit flag, mode 1777."""

    def __init__(self, work: Path):
        self.work = work
        self.image = work / "fs.img"
        self.mnt = work / "mnt"
        self.projects = self.mnt / "projects"
        self.loop: str | None = None
        self.mounted = False
        self.prjquota = False

    def project(self, name: str) -> Path:
        if name not in PROJECTS:
            raise KeyError(f"no project directory {name!r} in the sandbox (have {', '.join(PROJECTS)})")
        return self.projects / name

    def project_id(self, name: str) -> int:
        return PROJECTS[name]

    def fresh(self, project: str, prefix: str = "t") -> Path:
        """A new, uniquely named directory inside a project directory (the sandbox is shared by the session)."""
        path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.project(project)))
        path.chmod(0o1777)
        return path

    def up(self) -> None:
        self.work.chmod(0o755)  # mkdtemp makes it 0700: the test users must reach the projects
        run("truncate", "-s", "3G", str(self.image))
        run("mkfs.xfs", "-q", "-m", "reflink=0", str(self.image))
        self.loop = run("losetup", "--find", "--show", str(self.image)).stdout.strip()
        self.mnt.mkdir()
        # Project quota accounting where the kernel has it (figures from quotactl); else a plain mount
        # (figures from statvfs). The project IDs and the inherit flag work either way.
        if run("mount", "-t", "xfs", "-o", "prjquota", self.loop, str(self.mnt), check=False).returncode == 0:
            self.prjquota = True
        else:
            run("mount", "-t", "xfs", self.loop, str(self.mnt))
        self.mounted = True
        self.projects.mkdir()
        for name, project_id in PROJECTS.items():
            directory = self.projects / name
            directory.mkdir()
            run("xfs_io", "-c", f"chproj {project_id}", "-c", "chattr +P", str(directory))
            directory.chmod(0o1777)

    def down(self) -> None:
        errors = []
        if self.mounted:
            if run("umount", str(self.mnt), check=False).returncode != 0:
                # Something still has a file open (a server that did not stop): detach lazily.
                result = run("umount", "-l", str(self.mnt), check=False)
                if result.returncode != 0:
                    errors.append(f"umount {self.mnt}: {result.stderr.strip()}")
            self.mounted = False
        if self.loop:
            result = run("losetup", "-d", self.loop, check=False)
            if result.returncode != 0:
                errors.append(f"losetup -d {self.loop}: {result.stderr.strip()}")
            self.loop = None
        shutil.rmtree(self.work, ignore_errors=True)
        if errors:
            raise AssertionError("tearing down the XFS sandbox: " + "; ".join(errors))


@pytest.fixture(scope="session")
def xfs_sandbox():
    require_root("the XFS sandbox")
    sandbox = XFSSandbox(Path(tempfile.mkdtemp(prefix="ferry-web-", dir="/var/tmp")))
    try:
        sandbox.up()
        yield sandbox
    finally:
        sandbox.down()


@pytest.fixture
def fresh_dir(xfs_sandbox):
    """fresh_dir(project, prefix): a new 1777 directory in a project, removed after the test."""
    made = []

    def make(project: str, prefix: str = "t") -> Path:
        made.append(xfs_sandbox.fresh(project, prefix))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def project_of(path: Path) -> int:
    """The XFS project ID of a file or directory, read with xfs_io (independently of ferry)."""
    out = run("xfs_io", "-r", "-c", "lsproj", str(path)).stdout
    match = re.search(r"projid\s*=\s*(\d+)", out)
    assert match, f"xfs_io lsproj {path}: unexpected output {out!r}"
    return int(match.group(1))


# --------------------------------------------------------------------------------------------------
# start_server


class ServerError(AssertionError):
    pass


class FerryServer:
    """One `ferry serve` process (and its restarts) with its config file and database."""

    def __init__(self, ferry_bin: Path, workdir: Path, config_path: Path, database: Path, auth: str,
                 env: dict[str, str], workers: int | None, proxy_header: str, proxy_secret: str | None = None,
                 arguments: list[str] | None = None):
        self.ferry_bin = ferry_bin
        # What follows the program instead of `serve --config CONFIG` (e.g. `serve --demo …`).
        self.arguments = arguments
        self.workdir = workdir
        self.config_path = config_path
        self.database = database
        self.auth = auth
        self.env = env
        self.workers = workers
        self.proxy_header = proxy_header
        self.proxy_secret = proxy_secret
        self.url: str | None = None
        self.token: str | None = None
        self.process: subprocess.Popen | None = None
        # Start the next process with SIGHUP ignored, as nohup does.
        self.ignore_hangup = False
        self.starts = 0
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    # -- output

    def log(self) -> str:
        """Everything every start of this server has printed so far (stdout and stderr)."""
        with self._cond:
            return "".join(self._lines)

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in iter(process.stdout.readline, ""):
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    # -- life cycle

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> "FerryServer":
        assert not self.running, "the server is already running"
        command = [str(self.ferry_bin)] + (self.arguments or ["serve", "--config", str(self.config_path)]) + ["--listen", "127.0.0.1:0"]
        if self.workers is not None:
            command += ["--workers", str(self.workers)]
        with self._cond:
            first_line = len(self._lines)
            self._lines.append(f"--- start {self.starts + 1}: {' '.join(command)}\n")
        ignoring = (lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if self.ignore_hangup else None
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        errors="replace", bufsize=1, env=self.env, cwd=self.workdir, preexec_fn=ignoring)
        self.starts += 1
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        self.url = None
        self.token = None
        deadline = time.monotonic() + START_TIMEOUT
        with self._cond:
            while True:
                output = "".join(self._lines[first_line:])
                listening = LISTENING.search(output)
                login = LOGIN_LINE.search(output)
                if listening and (self.auth != "token" or login):
                    break
                if self.process.poll() is not None and not self._reader.is_alive():
                    raise ServerError(f"ferry serve exited {self.process.returncode} before listening; "
                                      f"its output:\n{self.log()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.process.kill()
                    self.process.wait()
                    raise ServerError(f"ferry serve did not print 'ferry serve: listening on http://…'"
                                      f"{' and the login line' if self.auth == 'token' else ''} within "
                                      f"{START_TIMEOUT:.0f} s; its output:\n{self.log()}")
                self._cond.wait(min(remaining, 0.5))
        self.url = listening.group(1).rstrip("/")
        if self.auth == "token":
            match = re.search(r"[?&]token=([^&\s]+)", login.group(1))
            if not match:
                raise ServerError(f"no token in the login line {login.group(0)!r}; output:\n{self.log()}")
            self.token = requests.utils.unquote(match.group(1))
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait for the process, and require a clean exit (status 0)."""
        if self.process is None or self.process.poll() is not None:
            if self.process is not None and self.process.returncode != 0:
                raise ServerError(f"ferry serve had already exited {self.process.returncode}; output:\n{self.log()}")
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise ServerError(f"ferry serve did not exit within {timeout:.0f} s of SIGTERM; output:\n{self.log()}")
        if self._reader:
            self._reader.join(5)
        if status != 0:
            raise ServerError(f"ferry serve exited {status} after SIGTERM (expected 0); output:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown at all, as if the machine lost power under the process."""
        if self.running:
            self.process.kill()
            self.process.wait()
            if self._reader:
                self._reader.join(5)

    def restart(self) -> "FerryServer":
        """Stops the server (if it still runs) and starts it again on the same config and database."""
        if self.running:
            self.stop()
        return self.start()

    def _teardown(self) -> None:
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # -- clients

    def api(self, path: str) -> str:
        return f"{self.url}{path}"

    def as_proxy(self, user: str) -> dict[str, str]:
        """The headers the site's proxy adds for `user`: its user header and, if set, its secret."""
        headers = {self.proxy_header: user}
        if self.proxy_secret:
            headers["X-Ferry-Proxy-Secret"] = self.proxy_secret
        return headers

    def bearer(self) -> dict[str, str]:
        """Headers for a token-mode API client without a session (no CSRF token needed)."""
        assert self.token, "bearer() needs a token-mode server"
        return {"Authorization": f"Bearer {self.token}"}

    def session(self, user: str | None = None, password: str | None = None) -> requests.Session:
        """A logged-in requests.Session with the X-CSRF-Token header set.

        token mode: GET /login?token=…; pam mode: POST /login with user and password; proxy mode: the
        proxy header on every request (the client is 127.0.0.1, so list it in proxy_addresses).
        """
        s = requests.Session()
        if self.auth == "token":
            r = s.get(self.api("/login"), params={"token": self.token}, allow_redirects=False, timeout=30)
            assert r.status_code == 303, f"GET /login?token=… answered {r.status_code}: {r.text[:500]}"
        elif self.auth == "pam":
            assert user and password is not None, "a pam-mode session needs a user and a password"
            r = s.post(self.api("/login"), data={"username": user, "password": password},
                       allow_redirects=False, timeout=30)
            assert r.status_code == 303, f"POST /login as {user} answered {r.status_code}: {r.text[:500]}"
        elif self.auth == "proxy":
            assert user, "a proxy-mode session needs a user"
            s.headers.update(self.as_proxy(user))
        else:
            raise AssertionError(f"unknown auth mode {self.auth}")
        r = s.get(self.api("/api/session"), timeout=30)
        assert r.status_code == 200, f"GET /api/session answered {r.status_code}: {r.text[:500]}"
        body = r.json()
        assert body.get("csrfToken"), f"GET /api/session has no csrfToken: {body}"
        s.headers["X-CSRF-Token"] = body["csrfToken"]
        s.ferry_user = body.get("user")  # type: ignore[attr-defined]
        return s


def toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture
def start_server(ferry_bin, xfs_sandbox, tmp_path_factory):
    started: list[FerryServer] = []

    def start(auth: str = "token", roots: list[tuple[str, str]] | list[dict] | None = None,
              extra_toml: str = "", env: dict[str, str] | None = None, workers: int | None = None,
              admins: list[str] | None = None, proxy_addresses: list[str] | None = None,
              proxy_header: str = "X-Remote-User", pam_service: str | None = None,
              proxy_secret: str | None = "the-proxys-own-secret-42", proxy_secret_file: str | None = None,
              config_mode: int = 0o600) -> FerryServer:
        """Writes a config (sqlite database in a fresh temp dir) and starts `ferry serve` on a free port.

        roots: [path], [(path, name)] or [{"path":…, "name":…, "backend":…}]; default: the sandbox's
        projects dir named "Projects".
        admins, proxy_addresses, proxy_header, pam_service: the [auth] table's keys (proxy_addresses
        defaults to ["127.0.0.1"] in proxy mode), proxy_secret (written with proxy_addresses, which
        a loopback address requires; None leaves it out), or proxy_secret_file (its path instead,
        the file written by the caller; proxy_secret is then what the test client sends).
        config_mode: the config file's mode (a secret in it is refused unless only its owner reads it).
        extra_toml: appended before the [auth] table, so it may set top-level keys (lease_seconds = 2).
        """
        workdir = tmp_path_factory.mktemp("ferry-serve")
        workdir.chmod(0o755)
        database = workdir / "ferry.sqlite"
        if roots is None:
            roots = [{"path": str(xfs_sandbox.projects), "name": "Projects"}]
        lines = [f"database = {toml_string('sqlite://' + str(database))}"]
        if extra_toml:
            lines.append(extra_toml.strip())
        lines.append("")
        lines.append("[auth]")
        lines.append(f"mode = {toml_string(auth)}")
        if admins is not None:
            lines.append("admins = [" + ", ".join(toml_string(a) for a in admins) + "]")
        if auth == "proxy" or proxy_addresses is not None:
            addresses = proxy_addresses if proxy_addresses is not None else ["127.0.0.1"]
            lines.append(f"proxy_header = {toml_string(proxy_header)}")
            lines.append("proxy_addresses = [" + ", ".join(toml_string(a) for a in addresses) + "]")
            if proxy_secret_file is not None:
                lines.append(f"proxy_secret_file = {toml_string(proxy_secret_file)}")
            elif proxy_secret is not None:
                lines.append(f"proxy_secret = {toml_string(proxy_secret)}")
        else:
            proxy_secret = None
        if pam_service is not None:
            lines.append(f"pam_service = {toml_string(pam_service)}")
        for root in roots:
            if isinstance(root, (str, Path)):
                root = {"path": str(root), "name": Path(root).name}
            elif isinstance(root, tuple):
                root = {"path": str(root[0]), "name": root[1]}
            lines.append("")
            lines.append("[[roots]]")
            for key, value in root.items():
                lines.append(f"{key} = {toml_string(str(value))}")
        config_path = workdir / "ferry.toml"
        config_path.write_text("\n".join(lines) + "\n")
        config_path.chmod(config_mode)
        # The server reads FERRY_* overrides: nothing from the caller's environment may leak in.
        process_env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        process_env.update(env or {})
        server = FerryServer(ferry_bin, workdir, config_path, database, auth, process_env, workers, proxy_header, proxy_secret)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server._teardown()


@pytest.fixture
def server(start_server) -> FerryServer:
    return start_server()


# --------------------------------------------------------------------------------------------------
# unix_user


class UnixUser:
    def __init__(self, name: str, password: str | None):
        entry = pwd.getpwnam(name)
        self.name = name
        self.password = password
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid
        self.home = Path(entry.pw_dir)

    def __repr__(self) -> str:
        return f"UnixUser({self.name}, uid={self.uid})"


def processes_of(uid: int) -> list[int]:
    """The pids of the processes whose real uid is `uid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                for line in status:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(entry))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


@pytest.fixture
def unix_user():
    require_root("creating Unix users")
    created: list[str] = []

    def create(password: str | None = None, prefix: str = "fy") -> UnixUser:
        name = f"{prefix}{secrets.token_hex(4)}"
        run("useradd", "-m", "-s", "/bin/sh", name)
        created.append(name)
        if password is not None:
            run("chpasswd", input=f"{name}:{password}\n")
        return UnixUser(name, password)

    yield create
    problems = []
    for name in created:
        # A task's process that has just reported its end may still be exiting: given a few
        # seconds, then killed, so that userdel does not find the user busy.
        uid = pwd.getpwnam(name).pw_uid
        deadline = time.monotonic() + 10
        while processes_of(uid) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in processes_of(uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while processes_of(uid) and time.monotonic() < deadline:
            time.sleep(0.05)
        result = run("userdel", "-r", name, check=False)
        try:
            pwd.getpwnam(name)
            problems.append(f"userdel -r {name} exited {result.returncode}: {result.stderr.strip()}")
        except KeyError:
            pass
    if problems:
        raise AssertionError("; ".join(problems))


# --------------------------------------------------------------------------------------------------
# Helpers shared by the test files (import them: `from conftest import expect_error, …`).

OPENAPI_PATH = REPO / "Sources" / "FerryServer" / "Web" / "openapi.yaml"


def describe(r: requests.Response) -> str:
    return f"{r.request.method} {r.request.url} → {r.status_code} {r.headers.get('content-type', '')}: {r.text[:800]}"


def expect(r: requests.Response, status: int) -> dict | list | None:
    """Requires the status and returns the JSON body (None if the body is empty or not JSON)."""
    assert r.status_code == status, f"expected {status}: {describe(r)}"
    if not r.content or "json" not in r.headers.get("content-type", ""):
        return None
    return r.json()


def expect_error(r: requests.Response, status: int, *codes: str) -> dict:
    """Requires a JSON error `{"error": {"code", "message"}}` with the status and one of the codes."""
    assert r.status_code == status, f"expected {status} {'/'.join(codes)}: {describe(r)}"
    try:
        body = r.json()
    except ValueError:
        raise AssertionError(f"the error body is not JSON: {describe(r)}")
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str), \
        f"not an error object {{\"error\": {{\"code\", \"message\"}}}}: {describe(r)}"
    assert error["message"].strip(), f"the error has an empty message: {describe(r)}"
    if codes:
        assert error["code"] in codes, f"expected code {' or '.join(codes)}, got {error['code']!r}: {describe(r)}"
    return error


def wait_for_task(client: requests.Session, server: FerryServer, task_id: str, timeout: float = 180.0,
                  until=lambda task: task["terminal"]) -> dict:
    """Polls GET /api/tasks/{id} until `until(task)` holds; returns the task detail."""
    deadline = time.monotonic() + timeout
    task = None
    while time.monotonic() < deadline:
        task = expect(client.get(server.api(f"/api/tasks/{task_id}"), timeout=30), 200)
        if until(task):
            return task
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not reach the expected state within {timeout:.0f} s; "
                         f"last seen: {task}\nserver output:\n{server.log()[-4000:]}")


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root (not following symlinks): type, mode, owner, size, mtime, link target, content hash."""
    import hashlib
    import stat as st
    snapshot: dict[str, tuple] = {}
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            extra: object = None
            if st.S_ISLNK(info.st_mode):
                extra = os.readlink(path)
            elif st.S_ISREG(info.st_mode):
                with open(path, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            snapshot[os.path.relpath(path, root)] = (
                st.S_IFMT(info.st_mode), st.S_IMODE(info.st_mode), info.st_uid, info.st_gid, info.st_size,
                info.st_mtime_ns, extra)
    return snapshot


def file_checksums(root: Path) -> dict[str, str]:
    """SHA-256 of every regular file under root, by relative path (streamed: files may be large)."""
    import hashlib
    sums = {}
    for directory, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(directory, name)
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            sums[os.path.relpath(path, root)] = digest.hexdigest()
    return sums


def read_sse(response: requests.Response, stop=lambda event, data: event == "end", max_seconds: float = 180.0):
    """Reads server-sent events from a streaming response until stop(event, data) or the time is up.

    Returns [(event, data)] with data parsed as JSON where it is JSON. The caller opens the request
    with stream=True and a read timeout, which bounds each wait for a line."""
    import json
    events = []
    event, data_lines = "message", []
    deadline = time.monotonic() + max_seconds
    for raw in response.iter_lines(decode_unicode=False):
        line = raw.decode("utf-8")
        if line == "":
            if data_lines:
                text = "\n".join(data_lines)
                try:
                    data = json.loads(text)
                except ValueError:
                    data = text
                events.append((event, data))
                if stop(event, data):
                    return events
            elif event != "message":
                events.append((event, None))
                if stop(event, None):
                    return events
            event, data_lines = "message", []
        elif line.startswith(":"):
            pass
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data_lines.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])
        if time.monotonic() > deadline:
            break
    return events


def openapi_document() -> dict:
    import yaml
    return yaml.safe_load(OPENAPI_PATH.read_text())


def schema_validator(name: str):
    """A JSON Schema validator for components/schemas/<name> of the OpenAPI document."""
    import jsonschema
    document = openapi_document()
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


def assert_matches_schema(instance, name: str) -> None:
    errors = sorted(schema_validator(name).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"does not match the OpenAPI schema {name}: " + "; ".join(
        f"{'/'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors[:5]) + f"\ninstance: {instance}"


def write(path: Path, data: bytes | str = b"", mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        path.chmod(mode)
    return path


def transfer(kind: str, sources: list, destination, **options) -> dict:
    body = {"kind": kind, "sources": [str(s) for s in sources], "destination": str(destination)}
    if options:
        body["options"] = options
    return body


def list_all_tasks(client, server) -> list[dict]:
    body = expect(client.get(server.api("/api/tasks"), params={"state": "all", "limit": 500}, timeout=30), 200)
    return body["tasks"]


def get_path(client, server, endpoint: str, raw_path: bytes | str, **params) -> requests.Response:
    """GET /api/<endpoint>?path=… with the path percent-encoded byte for byte (NUL, 0xFF survive)."""
    raw = raw_path.encode() if isinstance(raw_path, str) else raw_path
    query = "path=" + quote(raw, safe="/")
    for key, value in params.items():
        query += f"&{key}={quote(str(value))}"
    return client.get(f"{server.url}/api/{endpoint}?{query}", timeout=30)
