"""Who may do what: real Unix users (useradd), the kernel as the authorizer, sessions, CSRF, proxy trust,
login rate limiting.

Run as root: python3 -m pytest Tests/web/test_security.py
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
import urllib.parse

import pytest
import requests

from conftest import describe, expect, expect_error, get_path, list_all_tasks, transfer, tree_snapshot, wait_for_task, write


@pytest.fixture
def alpha_dir(fresh_dir):
    return fresh_dir("alpha", "sec")


@pytest.fixture
def beta_dir(fresh_dir):
    return fresh_dir("beta", "sec")


@pytest.fixture
def two_users(unix_user):
    return unix_user(), unix_user()


@pytest.fixture
def proxy_server(start_server):
    return start_server(auth="proxy", admins=["root"])


# --------------------------------------------------------------------------------------------------
# the kernel is the authorizer


def test_user_cannot_reach_another_users_private_directory(proxy_server, two_users, alpha_dir, beta_dir):
    a, b = two_users
    server = proxy_server
    private = alpha_dir / "b-private"
    write(private / "secret.txt", "B's data")
    write(private / "inner" / "more.txt", "more")
    for path in [private, private / "inner", private / "secret.txt", private / "inner" / "more.txt"]:
        os.chown(path, b.uid, b.gid)
    private.chmod(0o700)
    loose = write(alpha_dir / "b-file", "B's 0600 file", 0o600)
    os.chown(loose, b.uid, b.gid)
    before = tree_snapshot(alpha_dir), tree_snapshot(beta_dir)

    as_b = server.session(user=b.name)
    expect(get_path(as_b, server, "files", str(private)), 200)  # B may: the refusal below is about who asks

    as_a = server.session(user=a.name)
    assert expect(as_a.get(server.api("/api/session"), timeout=30), 200)["user"] == a.name
    attempts = [get_path(as_a, server, "files", str(private)),
                get_path(as_a, server, "files", str(private / "inner")),
                get_path(as_a, server, "stat", str(private / "secret.txt")),
                get_path(as_a, server, "quota", str(private / "secret.txt"))]
    for kind in ("move", "copy"):
        for source in (private, private / "secret.txt"):
            body = transfer(kind, [source], beta_dir)
            attempts.append(as_a.post(server.api("/api/preflight"), json=body, timeout=60))
            attempts.append(as_a.post(server.api("/api/tasks"), json=body, timeout=60))
    failures = []
    for r in attempts:
        try:
            if r.request.url.endswith("/api/preflight") and r.status_code == 200:
                # The pre-flight may answer with its verdict: refused, for the same reason.
                verdict = r.json()
                assert verdict["allowed"] is False and verdict["refusal"]["code"] == "permission.denied", \
                    f"pre-flight of B's private data was not refused with permission.denied: {r.text[:300]}"
            else:
                expect_error(r, 403, "permission.denied")
            assert "B's data" not in r.text
        except AssertionError as error:
            failures.append(str(error).splitlines()[0])
    assert list_all_tasks(as_a, server) == [], "a request for B's private data created a task"

    # B's 0600 file in a shared directory: its name and size are visible (as with ls), its content is
    # not. The pre-flight needs only metadata, so the request may be accepted, but the task, running
    # as A, cannot read the file: it fails and nothing is copied.
    for kind in ("move", "copy"):
        r = as_a.post(server.api("/api/tasks"), json=transfer(kind, [loose], beta_dir), timeout=60)
        if r.status_code == 201:
            done = wait_for_task(as_a, server, r.json()["id"])
            assert done["status"] in ("failed", "rolled_back"), f"A's {kind} of B's 0600 file: {done}"
            assert done["error"] and done["error"]["code"], done
        else:
            expect_error(r, 403, "permission.denied")

    # Within project 100 a move would be a rename: the sticky, world-writable parent lets only B do it.
    (alpha_dir / "a-dest").mkdir()
    os.chown(alpha_dir / "a-dest", a.uid, a.gid)
    r = as_a.post(server.api("/api/tasks"), json=transfer("move", [private], alpha_dir / "a-dest"), timeout=60)
    if r.status_code == 201:
        done = wait_for_task(as_a, server, r.json()["id"], timeout=60)
        assert done["status"] != "completed", f"A moved B's private directory: {done}"
    else:
        expect_error(r, 403, "permission.denied")
    assert list((alpha_dir / "a-dest").iterdir()) == []
    (alpha_dir / "a-dest").rmdir()
    assert (tree_snapshot(alpha_dir), tree_snapshot(beta_dir)) == before, "B's data or the destination changed"
    assert not failures, "A reached B's private data, or was refused without 403 permission.denied:\n" + "\n".join(failures)


def test_task_runs_as_its_owner(proxy_server, unix_user, alpha_dir, beta_dir, xfs_sandbox):
    a = unix_user()
    server = proxy_server
    as_a = server.session(user=a.name)
    # Readable by everyone, owned by root: a copy made as A belongs to A; one made as root would keep root.
    public = write(alpha_dir / "public.txt", "everyone may read this", 0o644)
    assert os.stat(public).st_uid == 0
    target = beta_dir / "a-target"
    target.mkdir()
    os.chown(target, a.uid, a.gid)

    task = expect(as_a.post(server.api("/api/tasks"), json=transfer("copy", [public], target), timeout=60), 201)
    assert task["owner"] == a.name
    done = wait_for_task(as_a, server, task["id"])
    assert done["status"] == "completed", done
    copied = os.stat(target / "public.txt")
    assert (copied.st_uid, copied.st_gid) == (a.uid, a.gid), \
        f"the copy belongs to uid {copied.st_uid} gid {copied.st_gid}, not to A ({a.uid}:{a.gid}): the task did not run as A"
    assert (target / "public.txt").read_text() == "everyone may read this"

    # A may not write where only root may: the task is refused or fails, and nothing appears there.
    closed = beta_dir / "root-only"
    closed.mkdir(mode=0o755)
    r = as_a.post(server.api("/api/tasks"), json=transfer("copy", [public], closed), timeout=60)
    if r.status_code == 201:
        done = wait_for_task(as_a, server, r.json()["id"])
        assert done["status"] in ("failed", "rolled_back"), f"A wrote into a root-only directory: {done}"
    else:
        expect_error(r, 403, "permission.denied")
    assert list(closed.iterdir()) == [], "something was written into a directory A may not write"


def test_users_see_only_their_own_tasks(start_server, two_users, alpha_dir, beta_dir):
    a, b = two_users
    server = start_server(auth="proxy", admins=["root"], workers=0)
    as_a, as_b, as_root = (server.session(user=u) for u in (a.name, b.name, "root"))
    source = write(alpha_dir / "a-src" / "f", "a")
    os.chown(source.parent, a.uid, a.gid)
    os.chown(source, a.uid, a.gid)
    task = expect(as_a.post(server.api("/api/tasks"), json=transfer("copy", [source.parent], beta_dir), timeout=60), 201)
    tid = task["id"]

    assert [t["id"] for t in list_all_tasks(as_a, server)] == [tid]
    assert list_all_tasks(as_b, server) == []
    r = as_b.get(server.api("/api/tasks"), params={"owner": a.name, "state": "all"}, timeout=30)
    if r.status_code == 200:
        assert tid not in [t["id"] for t in r.json()["tasks"]]
    else:
        expect_error(r, 403, "forbidden")
    # Another user's task: 403 `forbidden` (the spec), or 404 `task.not_found` (its id does not leak).
    for method, suffix in [("get", ""), ("post", "/cancel"), ("post", "/retry"), ("get", "/stream")]:
        with getattr(as_b, method)(server.api(f"/api/tasks/{tid}{suffix}"), timeout=30, stream=True) as r:
            if r.status_code == 404:
                expect_error(r, 404, "task.not_found")
            else:
                expect_error(r, 403, "forbidden")
    assert expect(as_a.get(server.api(f"/api/tasks/{tid}"), timeout=30), 200)["status"] == "pending"

    # Admins see everyone's and may filter by owner.
    assert tid in [t["id"] for t in list_all_tasks(as_root, server)]
    body = expect(as_root.get(server.api("/api/tasks"), params={"owner": a.name}, timeout=30), 200)
    assert [t["id"] for t in body["tasks"]] == [tid]
    body = expect(as_root.get(server.api("/api/tasks"), params={"owner": b.name}, timeout=30), 200)
    assert body["tasks"] == []
    expect(as_root.get(server.api(f"/api/tasks/{tid}"), timeout=30), 200)


# --------------------------------------------------------------------------------------------------
# authentication


def api_requests(task_id: str, path: str) -> list[tuple[str, str, dict | None]]:
    body = {"kind": "copy", "sources": [path], "destination": path}
    return [
        ("get", "/api/session", None), ("get", "/api/roots", None),
        ("get", f"/api/files?path={path}", None), ("get", f"/api/stat?path={path}", None),
        ("get", f"/api/quota?path={path}", None), ("post", "/api/preflight", body),
        ("get", "/api/tasks", None), ("post", "/api/tasks", body), ("get", f"/api/tasks/{task_id}", None),
        ("post", f"/api/tasks/{task_id}/cancel", None), ("post", f"/api/tasks/{task_id}/retry", None),
        ("get", f"/api/tasks/{task_id}/stream", None), ("get", "/api/stream", None),
        ("get", "/api/admin/workers", None), ("get", "/api/admin/staging", None),
        ("post", "/api/admin/janitor", {"dryRun": True}),
    ]


def test_unauthenticated_requests_get_401(start_server, alpha_dir):
    server = start_server(workers=0)
    write(alpha_dir / "src" / "f", "f")
    task = expect(requests.post(server.api("/api/tasks"), headers=server.bearer(), timeout=60,
                                json=transfer("copy", [alpha_dir / "src"], alpha_dir / "copy")), 201)
    before = tree_snapshot(alpha_dir)
    failures = []
    limited = 0
    for credentials in [{}, {"Cookie": "ferry_session=forged"}, {"Authorization": "Bearer not-the-token"},
                        {"X-Remote-User": "root"}]:
        for method, path, body in api_requests(task["id"], str(alpha_dir)):
            # stream=True: a wrongly accepted event stream must not hang the test.
            with requests.request(method, server.api(path), json=body, headers=credentials, timeout=30,
                                  stream=True) as r:
                # Wrong bearer tokens count as failed logins: past five, 429.
                if "Authorization" in credentials and r.status_code == 429:
                    expect_error(r, 429, "auth.rate_limited")
                    assert r.headers.get("Retry-After"), r.headers
                    limited += 1
                    continue
                if r.status_code != 401:
                    failures.append(f"{method.upper()} {path} with {credentials or 'nothing'} → {r.status_code}")
                    continue
                try:
                    expect_error(r, 401, "auth.required", "auth.failed")
                except AssertionError as error:
                    failures.append(str(error))
    assert not failures, "expected 401 everywhere:\n" + "\n".join(failures)
    assert limited > 0, "guesses at the bearer token were never limited"
    # The right token is never limited, even from an address that guessed.
    expect(requests.get(server.api("/api/tasks"), headers=server.bearer(), timeout=30), 200)
    # Pages send the browser to the login page.
    for page in ("/browse", "/tasks", f"/tasks/{task['id']}", "/admin"):
        r = requests.get(server.api(page), allow_redirects=False, timeout=30)
        assert r.status_code == 303, describe(r)
        assert r.headers.get("Location", "").split("?")[0].endswith("/login"), describe(r)
    # Public: health, metrics and the API description.
    for public in ("/healthz", "/metrics", "/api/openapi.yaml"):
        expect(requests.get(server.api(public), timeout=30), 200) if public == "/healthz" else None
        assert requests.get(server.api(public), timeout=30).status_code == 200, public
    assert tree_snapshot(alpha_dir) == before
    after = requests.get(server.api(f"/api/tasks/{task['id']}"), headers=server.bearer(), timeout=30).json()
    assert after["status"] == "pending" and not after["cancelRequested"], "an unauthenticated request changed the task"


def test_an_event_stream_ends_with_its_session(start_server):
    """A stream opened with a session cookie stops once the session is logged out: before, it went
    on sending the user's task updates to whoever held it (a stolen cookie, a shared machine)."""
    from conftest import read_sse
    server = start_server(workers=0)
    client = server.session()
    token = client.headers["X-CSRF-Token"]
    with client.get(server.api("/api/stream"), stream=True, timeout=(10, 30)) as stream:
        assert stream.status_code == 200, describe(stream)
        r = client.post(server.api("/logout"), data={"csrf_token": token}, allow_redirects=False, timeout=30)
        assert r.status_code == 303, describe(r)
        started = time.monotonic()
        events = read_sse(stream, max_seconds=20)
    assert events and events[-1] == ("end", {"reason": "session ended"}), events
    assert time.monotonic() - started < 10, events


def test_state_changing_requests_need_the_csrf_token(start_server, alpha_dir, beta_dir):
    server = start_server(workers=0)
    client = server.session()
    token = client.headers.pop("X-CSRF-Token")
    write(alpha_dir / "src" / "f", "f")
    body = transfer("copy", [alpha_dir / "src"], beta_dir)
    task = expect(client.post(server.api("/api/tasks"), json=body, headers={"X-CSRF-Token": token}, timeout=60), 201)
    tasks_before = list_all_tasks(client, server)
    disk_before = tree_snapshot(alpha_dir), tree_snapshot(beta_dir)
    posts = [("/api/preflight", body), ("/api/tasks", body), (f"/api/tasks/{task['id']}/cancel", None),
             (f"/api/tasks/{task['id']}/retry", None), ("/api/admin/janitor", {"dryRun": True}), ("/logout", None)]
    failures = []
    for headers in [{}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": ""}]:
        for path, payload in posts:
            r = client.post(server.api(path), json=payload, headers=headers, allow_redirects=False, timeout=60)
            try:
                expect_error(r, 403, "csrf.invalid")
            except AssertionError as error:
                failures.append(f"{path} with {headers or 'no token'}: {error}")
    assert not failures, "\n".join(failures)
    assert list_all_tasks(client, server) == tasks_before
    assert (tree_snapshot(alpha_dir), tree_snapshot(beta_dir)) == disk_before
    # The session survived the forged logout, and the right token works.
    expect(client.get(server.api("/api/session"), timeout=30), 200)
    expect(client.post(server.api(f"/api/tasks/{task['id']}/cancel"), headers={"X-CSRF-Token": token}, timeout=30), 200)
    # A plain HTML form sends the token as a field.
    r = client.post(server.api("/logout"), data={"csrf_token": token}, allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["Location"].split("?")[0].endswith("/login"), describe(r)
    expect_error(client.get(server.api("/api/session"), timeout=30), 401, "auth.required")


def set_cookie_headers(r: requests.Response) -> list[str]:
    return [v for k, v in r.raw.headers.items() if k.lower() == "set-cookie"]


def test_session_cookie_flags(server):
    r = requests.get(server.api("/login"), params={"token": server.token}, allow_redirects=False, timeout=30)
    assert r.status_code == 303, describe(r)
    cookies = [c for c in set_cookie_headers(r) if c.startswith("ferry_session=")]
    assert len(cookies) == 1, f"Set-Cookie: {set_cookie_headers(r)}"
    attributes = [part.strip().lower() for part in cookies[0].split(";")[1:]]
    assert "httponly" in attributes, cookies[0]
    assert "samesite=strict" in attributes, cookies[0]
    assert "path=/" in attributes, cookies[0]
    assert "secure" not in attributes, f"Secure on plain HTTP would lose the cookie: {cookies[0]}"

    r = requests.get(server.api("/login"), params={"token": server.token}, allow_redirects=False,
                     headers={"X-Forwarded-Proto": "https"}, timeout=30)
    cookie = [c for c in set_cookie_headers(r) if c.startswith("ferry_session=")][0]
    assert "secure" in [part.strip().lower() for part in cookie.split(";")[1:]], cookie

    r = requests.get(server.api("/login"), params={"token": "wrong"}, allow_redirects=False, timeout=30)
    assert r.status_code == 401, describe(r)
    assert not [c for c in set_cookie_headers(r) if c.startswith("ferry_session=")]


def test_secure_cookie_setting_overrides_the_forwarded_protocol(start_server):
    """A TLS proxy that sends no X-Forwarded-Proto: `secure_cookie = true` sets Secure anyway, and
    `false` never does, whatever a client claims; logging out clears the cookie the same way."""
    for setting, plain, forwarded in [("true", True, True), ("false", False, False)]:
        server = start_server(env={"FERRY_AUTH_SECURE_COOKIE": setting}, workers=0)
        for headers, expected in [({}, plain), ({"X-Forwarded-Proto": "https"}, forwarded)]:
            r = requests.get(server.api("/login"), params={"token": server.token}, allow_redirects=False,
                             headers=headers, timeout=30)
            assert r.status_code == 303, describe(r)
            cookie = [c for c in set_cookie_headers(r) if c.startswith("ferry_session=")][0]
            attributes = [part.strip().lower() for part in cookie.split(";")[1:]]
            assert ("secure" in attributes) == expected, f"secure_cookie={setting}, {headers}: {cookie}"
        # Sent by hand: a client keeps a Secure cookie away from plain HTTP.
        session_id = cookie.split(";")[0]
        token = expect(requests.get(server.api("/api/session"), headers={"Cookie": session_id}, timeout=30), 200)["csrfToken"]
        r = requests.post(server.api("/logout"), data={"csrf_token": token}, headers={"Cookie": session_id},
                          allow_redirects=False, timeout=30)
        assert r.status_code == 303, describe(r)
        cleared = [c for c in set_cookie_headers(r) if c.startswith("ferry_session=")][0]
        assert "max-age=0" in cleared.lower() and ("secure" in cleared.lower()) == plain, cleared


def login_failure_status(r: requests.Response) -> tuple[int, str | None]:
    code = None
    if r.headers.get("content-type", "").startswith("application/json"):
        code = r.json()["error"]["code"]
    return r.status_code, code


def test_login_is_rate_limited(server):
    url = server.api("/login")
    for attempt in range(5):
        r = requests.post(url, data={"token": f"guess-{attempt}"}, allow_redirects=False, timeout=30)
        status, code = login_failure_status(r)
        assert status == 401 and code in (None, "auth.failed"), f"attempt {attempt + 1}: {describe(r)}"
    r = requests.post(url, data={"token": "guess-6"}, allow_redirects=False, timeout=30)
    status, code = login_failure_status(r)
    assert status == 429 and code in (None, "auth.rate_limited"), describe(r)
    assert int(r.headers["Retry-After"]) >= 1, r.headers
    # Even the right token waits now: the limit is on the address, not on the guess.
    r = requests.post(url, data={"token": server.token}, allow_redirects=False, timeout=30)
    assert r.status_code == 429, describe(r)
    r = requests.get(url, params={"token": server.token}, allow_redirects=False, timeout=30)
    assert r.status_code == 429, describe(r)
    # API clients with the token are not logging in: they are not blocked.
    expect(requests.get(server.api("/api/session"), headers=server.bearer(), timeout=30), 200)


def test_a_login_posted_from_another_site_is_refused(start_server):
    """Login CSRF: a page elsewhere that posts the attacker's credentials to /login would log the
    victim's browser into the attacker's account. Browsers label such a request cross-site."""
    server = start_server()
    url = server.api("/login")
    for site in ("cross-site", "same-site"):
        r = requests.post(url, data={"token": server.token}, headers={"Sec-Fetch-Site": site},
                          allow_redirects=False, timeout=30)
        assert r.status_code == 403 and not set_cookie_headers(r), describe(r)
        r = requests.post(url, json={"token": server.token}, headers={"Sec-Fetch-Site": site}, timeout=30)
        assert r.status_code == 403 and r.json()["error"]["code"] == "auth.cross_site", describe(r)
    # Ferry's own form (same-origin), a typed address (none) and scripts (no header) log in.
    for headers in ({"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}):
        r = requests.post(url, data={"token": server.token}, headers=headers, allow_redirects=False, timeout=30)
        assert r.status_code == 303 and any(c.startswith("ferry_session=") for c in set_cookie_headers(r)), describe(r)


def test_pam_login(start_server, unix_user):
    user = unix_user(password="correct horse 42")
    server = start_server(auth="pam")
    session = server.session(user=user.name, password="correct horse 42")
    body = expect(session.get(server.api("/api/session"), timeout=30), 200)
    assert (body["user"], body["admin"], body["authMode"]) == (user.name, False, "pam")
    for name, password in [(user.name, "wrong"), (user.name, ""), ("no-such-user-xyz", "x")]:
        r = requests.post(server.api("/login"), data={"username": name, "password": password},
                          allow_redirects=False, timeout=30)
        assert r.status_code == 401, describe(r)
        assert "ferry_session=" not in " ".join(set_cookie_headers(r))
    # Two more failures reach the limit of five in a minute.
    for _ in range(2):
        requests.post(server.api("/login"), data={"username": user.name, "password": "nope"}, allow_redirects=False, timeout=30)
    r = requests.post(server.api("/login"), data={"username": user.name, "password": "correct horse 42"},
                      allow_redirects=False, timeout=30)
    assert r.status_code == 429, describe(r)


def test_a_pam_session_ends_when_its_account_is_locked(start_server, unix_user):
    """A password login's account is looked at again while its session is used: locked since
    (`usermod -L`), the session ends (401 on the API, the login page for pages); unlocked, the
    user logs in again."""
    user = unix_user(password="correct horse 43")
    server = start_server(auth="pam", extra_toml="account_check_seconds = 0.5")
    session = server.session(user=user.name, password="correct horse 43")
    expect(session.get(server.api("/api/session"), timeout=30), 200)
    time.sleep(1)
    expect(session.get(server.api("/api/session"), timeout=30), 200)  # checked, still usable
    subprocess.run(["usermod", "-L", user.name], check=True)
    time.sleep(1)
    r = session.get(server.api("/api/session"), timeout=30)
    expect_error(r, 401, "auth.required")
    assert "locked" in r.json()["error"]["message"], r.text
    expect_error(session.get(server.api("/api/session"), timeout=30), 401, "auth.required")  # the session is gone
    subprocess.run(["usermod", "-U", user.name], check=True)
    again = server.session(user=user.name, password="correct horse 43")
    expect(again.get(server.api("/api/session"), timeout=30), 200)


def test_failed_logins_through_the_tls_proxy_count_per_client(start_server, unix_user):
    """Behind the site's TLS proxy every client comes from the proxy's address: failed logins
    count per client it names in X-Forwarded-For (believed only from proxy_addresses), so five
    wrong passwords from one client do not lock out the others. Before, they all shared one count."""
    user = unix_user(password="correct horse 42")
    server = start_server(auth="pam", proxy_addresses=["127.0.0.1"])
    url = server.api("/login")
    def login(client: str, password: str, secret: str | None = server.proxy_secret) -> requests.Response:
        headers = {"X-Forwarded-For": f"198.51.100.7, {client}"}
        if secret:
            headers["X-Ferry-Proxy-Secret"] = secret
        return requests.post(url, data={"username": user.name, "password": password}, allow_redirects=False, timeout=30, headers=headers)
    for _ in range(5):
        assert login("192.0.2.1", "wrong").status_code == 401
    assert login("192.0.2.1", "correct horse 42").status_code == 429
    r = login("192.0.2.2", "correct horse 42")
    assert r.status_code == 303 and any(c.startswith("ferry_session=") for c in set_cookie_headers(r)), describe(r)
    # Without the proxy's secret (a local user connecting from the proxy's address, or from
    # anywhere else) the header is the client's own say: ignored, every guess counted for the peer.
    for client in ("192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14"):
        assert login(client, "wrong", secret=None).status_code == 401
    assert login("192.0.2.99", "correct horse 42", secret="not-the-proxys-secret").status_code == 429


def test_proxy_header_only_from_proxy_addresses(start_server, unix_user):
    user = unix_user()
    trusted = start_server(auth="proxy", proxy_addresses=["127.0.0.1"])
    r = requests.get(trusted.api("/api/session"), headers=trusted.as_proxy(user.name), timeout=30)
    assert expect(r, 200)["user"] == user.name
    # From a loopback address any local user can send the header: without the proxy's secret (or
    # with another, or with two) it is refused, whatever the name.
    for headers in [{"X-Remote-User": "root"}, {"X-Remote-User": "root", "X-Ferry-Proxy-Secret": "not-the-proxys-secret"},
                    {"X-Remote-User": user.name, "X-Ferry-Proxy-Secret": ""}]:
        for path in ("/api/session", "/api/tasks"):
            expect_error(requests.get(trusted.api(path), headers=headers, timeout=30), 401, "auth.failed")
    # The secret sent twice (a client's own beside the proxy's) is refused too.
    url = urllib.parse.urlsplit(trusted.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    connection.putrequest("GET", "/api/session")
    for name, value in [("X-Remote-User", "root"), ("X-Ferry-Proxy-Secret", trusted.proxy_secret),
                        ("X-Ferry-Proxy-Secret", "not-the-proxys-secret")]:
        connection.putheader(name, value)
    connection.endheaders()
    doubled = connection.getresponse()
    assert doubled.status == 401 and json.loads(doubled.read())["error"]["code"] == "auth.failed"
    connection.close()

    untrusted = start_server(auth="proxy", proxy_addresses=["192.0.2.10"])
    for headers in [{"X-Remote-User": user.name}, {"X-Remote-User": "root"},
                    {"X-Remote-User": "root", "X-Forwarded-For": "192.0.2.10"},
                    {"X-Remote-User": "root", "X-Real-IP": "192.0.2.10", "Forwarded": "for=192.0.2.10"}]:
        for path in ("/api/session", "/api/roots", "/api/tasks", "/api/admin/workers"):
            r = requests.get(untrusted.api(path), headers=headers, timeout=30)
            expect_error(r, 401, "auth.required")
    r = requests.post(untrusted.api("/api/tasks"), headers={"X-Remote-User": "root"}, timeout=30,
                      json={"kind": "copy", "sources": ["/x"], "destination": "/y"})
    expect_error(r, 401, "auth.required")


def test_proxy_addresses_need_the_proxys_secret(start_server):
    """Proxy addresses without the proxy's secret are refused at start, with what to do: every
    local user can connect from 127.0.0.1."""
    for mode in ("proxy", "pam"):
        with pytest.raises(Exception) as refused:
            start_server(auth=mode, proxy_addresses=["127.0.0.1"], proxy_secret=None)
        message = str(refused.value)
        assert "(127.0.0.1) are believed about who is asking" in message and "every local user" in message, message
        assert "proxy_secret" in message and "X-Ferry-Proxy-Secret" in message, message


def test_secrets_stay_out_of_files_others_can_read(start_server, tmp_path):
    """Whoever reads the proxy secret (with an address of the proxy, every local user on this host)
    or the token logs in as anyone: a secret written in a configuration file that others may read
    is refused at start, with what to do; one in a file of its own (mode 0600, as systemd's
    LoadCredential= makes it) is used, and such a file that others may read is refused too."""
    with pytest.raises(Exception) as refused:
        start_server(auth="proxy", config_mode=0o644)
    message = str(refused.value)
    assert "auth.proxy_secret is written in a file others may read (mode 644)" in message, message
    assert "auth.proxy_secret_file" in message and "LoadCredential=" in message, message

    secret = "a-secret-in-its-own-file-77"
    secret_file = tmp_path / "proxy-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o644)
    with pytest.raises(Exception) as refused:
        start_server(auth="proxy", proxy_secret=secret, proxy_secret_file=str(secret_file), config_mode=0o644)
    message = str(refused.value)
    assert "auth.proxy_secret_file: others than its owner may read or change it (mode 644): chmod 600 it" in message, message

    secret_file.chmod(0o600)
    server = start_server(auth="proxy", proxy_secret=secret, proxy_secret_file=str(secret_file), config_mode=0o644)
    r = requests.get(server.api("/api/session"), headers={"X-Remote-User": "root", "X-Ferry-Proxy-Secret": secret}, timeout=30)
    assert r.status_code == 200 and r.json()["user"] == "root", r.text
    r = requests.get(server.api("/api/session"), headers={"X-Remote-User": "root", "X-Ferry-Proxy-Secret": "the-proxys-own-secret-42"}, timeout=30)
    expect_error(r, 401, "auth.failed")

    # The token too, from FERRY_AUTH_TOKEN_FILE: the login URL carries the file's token.
    token_file = tmp_path / "token"
    token_file.write_text("a-token-kept-in-a-file-1234\n")
    token_file.chmod(0o400)
    server = start_server(env={"FERRY_AUTH_TOKEN_FILE": str(token_file)})
    assert server.token == "a-token-kept-in-a-file-1234", server.log()


def test_each_user_holds_a_bounded_number_of_event_streams(start_server, alpha_dir):
    """Every event stream re-reads the task store each second, so one user may hold only
    `streams_per_user` of them open; the next is refused with 429 `stream.limit`, and a stream
    that ends or whose client goes away gives its place back."""
    server = start_server(extra_toml="streams_per_user = 2", workers=0)
    write(alpha_dir / "src" / "f", "f")
    task = expect(requests.post(server.api("/api/tasks"), headers=server.bearer(), timeout=60,
                                json=transfer("copy", [alpha_dir / "src"], alpha_dir / "copy")), 201)
    client = server.session()
    streams = [client.get(server.api(path), stream=True, timeout=(10, 60))
               for path in ("/api/stream", f"/api/tasks/{task['id']}/stream")]
    try:
        assert [r.status_code for r in streams] == [200, 200], [describe(r) for r in streams]
        for path in ("/api/stream", f"/api/tasks/{task['id']}/stream"):
            with client.get(server.api(path), stream=True, timeout=(10, 60)) as refused:
                error = expect_error(refused, 429, "stream.limit")
                assert "2 event streams" in error["message"], error
        # Another client of the same user is the same user.
        with requests.get(server.api("/api/stream"), headers=server.bearer(), stream=True, timeout=(10, 60)) as refused:
            expect_error(refused, 429, "stream.limit")
    finally:
        streams[0].close()
    # The server sees the closed connection at its next write at the latest (a keep-alive every 15 s).
    deadline = time.monotonic() + 40
    while True:
        with client.get(server.api("/api/stream"), stream=True, timeout=(10, 60)) as again:
            if again.status_code == 200:
                break
            expect_error(again, 429, "stream.limit")
        assert time.monotonic() < deadline, "a closed stream never gave its place back"
        time.sleep(1)
    streams[1].close()


def test_an_admins_stream_has_everyones_tasks_only_when_asked(proxy_server, unix_user, alpha_dir, beta_dir):
    """An admin's own task list follows their own tasks; the admin page asks for everyone's (all=1),
    which only an admin gets."""
    server = proxy_server
    b = unix_user()
    source = write(alpha_dir / "b-data", os.urandom(4096))
    os.chown(source, b.uid, b.gid)
    as_b = server.session(user=b.name)
    task = expect(as_b.post(server.api("/api/tasks"), json=transfer("copy", [source], beta_dir), timeout=60), 201)
    assert wait_for_task(as_b, server, task["id"], timeout=60)["status"] == "completed"

    def seen(session, path) -> bool:
        """Whether the stream sends the task: what a stream has it sends at once, so a stream
        silent for 3 s has sent all it had."""
        try:
            with session.get(server.api(path), stream=True, timeout=(10, 3)) as r:
                assert r.status_code == 200, describe(r)
                for raw in r.iter_lines():
                    if raw.startswith(b"data:") and task["id"].encode() in raw:
                        return True
        except requests.exceptions.RequestException:
            pass
        return False

    admin = server.session(user="root")
    assert not seen(admin, "/api/stream"), "an admin's own stream carried another user's task"
    assert seen(admin, "/api/stream?all=1"), "an admin's stream with all=1 missed another user's task"
    a = unix_user()
    assert not seen(server.session(user=a.name), "/api/stream?all=1"), "all=1 gave a user someone else's task"


def test_privileged_tasks_run_only_while_their_owner_is_an_admin(start_server, unix_user, alpha_dir, beta_dir):
    """A privileged task (run with the server's rights) is authorised when it is created, by an
    admin; its owner removed from the admins since, it is not run (a pending one fails `forbidden`)
    and its owner cannot retry it; an admin's retry does not run it either."""
    a = unix_user()
    server = start_server(auth="proxy", admins=["root", a.name], workers=0)
    as_a = server.session(user=a.name)
    source = write(alpha_dir / "roots-only", "only root may read this", 0o600)
    queued = expect(as_a.post(server.api("/api/tasks"), json=transfer("copy", [source], beta_dir, privileged=True), timeout=60), 201)
    assert queued["privileged"] is True and queued["status"] == "pending", queued
    ended = expect(as_a.post(server.api("/api/tasks"), json=transfer("copy", [source], beta_dir, privileged=True), timeout=60), 201)
    ended = expect(as_a.post(server.api(f"/api/tasks/{ended['id']}/cancel"), timeout=30), 200)
    assert ended["status"] == "cancelled", ended
    # A is an admin no longer; the server runs tasks now.
    server.stop()
    text = server.config_path.read_text()
    assert f'admins = ["root", "{a.name}"]' in text, text
    server.config_path.write_text(text.replace(f'admins = ["root", "{a.name}"]', 'admins = ["root"]'))
    server.workers = 1
    server.start()
    as_a = server.session(user=a.name)
    failed = wait_for_task(as_a, server, queued["id"], timeout=60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "forbidden", failed
    assert "no longer an administrator" in failed["error"]["message"], failed
    expect_error(as_a.post(server.api(f"/api/tasks/{ended['id']}/retry"), timeout=30), 403, "forbidden")
    admin = server.session(user="root")
    retried = expect(admin.post(server.api(f"/api/tasks/{ended['id']}/retry"), timeout=30), 200)
    assert retried["status"] == "pending", retried
    failed = wait_for_task(admin, server, ended["id"], timeout=60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "forbidden", failed
    assert not (beta_dir / "roots-only").exists(), "a privileged task ran for an owner who is no longer an admin"


def test_hardening_headers_and_the_created_tasks_location(proxy_server, unix_user, alpha_dir, beta_dir):
    server = proxy_server
    user = unix_user()
    source = write(alpha_dir / "mine", b"x")
    os.chown(source, user.uid, user.gid)
    session = server.session(user=user.name)
    page = session.get(server.api("/tasks"), timeout=30)
    assert page.status_code == 200, describe(page)
    assert page.headers.get("X-Content-Type-Options") == "nosniff"
    assert page.headers.get("Referrer-Policy") == "same-origin"
    policy = page.headers.get("Content-Security-Policy", "")
    assert "base-uri 'none'" in policy and "form-action 'self'" in policy, policy
    # Behind the login proxy, signing out is the proxy's: no button that would do nothing.
    assert 'action="/logout"' not in page.text
    created = session.post(server.api("/api/tasks"), json=transfer("copy", [source], beta_dir), timeout=60)
    body = expect(created, 201)
    assert created.headers.get("Location") == f"/api/tasks/{body['id']}", describe(created)
    assert created.headers.get("X-Content-Type-Options") == "nosniff"
    wait_for_task(session, server, body["id"], timeout=60)


def test_api_errors_of_the_router_and_the_body_reader_come_in_the_envelope(proxy_server, unix_user):
    """An unknown API route (or a method a route does not take) and a form body over 64 KiB are
    answered as every API error is: {"error": {code, message}}, JSON, not sniffable."""
    server = proxy_server
    session = server.session(user=unix_user().name)
    r = session.get(server.api("/api/no-such-route"), timeout=30)
    expect_error(r, 404, "route.not_found")
    assert r.headers.get("X-Content-Type-Options") == "nosniff", r.headers
    assert "/api/openapi.yaml" in r.json()["error"]["message"], r.text
    r = session.delete(server.api("/api/roots"), timeout=30)
    assert r.status_code in (404, 405), describe(r)
    assert r.headers.get("Content-Type", "").startswith("application/json") and "code" in r.json()["error"], describe(r)
    big = {"csrf_token": "x" * (1 << 17)}
    r = requests.post(server.api("/api/tasks"), data=big, timeout=30, cookies=session.cookies,
                      headers={**{k: v for k, v in session.headers.items() if k != "X-CSRF-Token"}})
    expect_error(r, 413, "request.too_large")
