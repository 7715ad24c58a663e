"""`ferry serve --demo`, the README's first command: a sandbox (a loop XFS with three project
directories, as root) served with the embedded database, where a move across projects meets a
real EXDEV and is carried out as a task."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import FerryServer, expect, project_of, transfer, wait_for_task


def test_the_demo_serves_its_sandbox_and_moves_across_projects(ferry_bin, tmp_path):
    demo = tmp_path / "demo"
    # A site's database named in the shell is not the demo's: the demo keeps its tasks in its sandbox.
    elsewhere = tmp_path / "site" / "ferry.sqlite"
    env = dict(os.environ, FERRY_DATABASE_URL=f"sqlite://{elsewhere}")
    server = FerryServer(ferry_bin, tmp_path, tmp_path / "unused.toml", demo / "ferry.sqlite", "token", env, None,
                         "X-Remote-User", arguments=["serve", "--demo", "--demo-directory", str(demo)])
    try:
        server.start()
        client = server.session()
        roots = expect(client.get(server.api("/api/roots"), timeout=30), 200)["roots"]
        assert [root["name"] for root in roots] == ["Projects"], roots
        projects = Path(roots[0]["path"])
        assert sorted(os.listdir(projects)) == ["alpha", "beta", "gamma"]
        assert [project_of(projects / name) for name in ["alpha", "beta", "gamma"]] == [100, 200, 300]
        runs = projects / "alpha" / "simulation-results" / "runs"
        before = {name: (runs / name).read_bytes() for name in os.listdir(runs)}
        assert len(before) == 200
        incoming = projects / "beta" / "incoming"
        task = expect(client.post(server.api("/api/tasks"), json=transfer("move", [runs], incoming), timeout=60), 201)
        done = wait_for_task(client, server, task["id"])
        assert done["status"] == "completed", done
        assert done["strategy"] == "copy", done  # across projects: rename met EXDEV
        moved = incoming / "runs"
        assert {name: (moved / name).read_bytes() for name in os.listdir(moved)} == before
        assert not runs.exists()
        assert project_of(moved) == 200
        assert (demo / "ferry.sqlite").exists()
        assert not elsewhere.exists(), "the demo used the database named by FERRY_DATABASE_URL"
        assert "FERRY_DATABASE_URL is not used" in server.log()
        server.stop()
        # Stopped, it unmounts its filesystem (the image stays for the next run).
        assert subprocess.run(["mountpoint", "-q", str(demo / "mnt")]).returncode != 0
        assert (demo / "fs.img").exists()
    finally:
        server._teardown()
        subprocess.run(["umount", str(demo / "mnt")], capture_output=True)
