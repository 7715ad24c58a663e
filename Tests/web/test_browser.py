"""The web UI in a real headless Chromium against a real `ferry serve` on a loop-mounted XFS.

A person's whole errand: sign in with the token, browse into project alpha, select a directory, open
the move dialog, browse to project beta, read the pre-flight verdict, confirm, watch the progress bar
reach completion, and find the directory at its destination with beta's project ID and the task in the
history. Also: a refused move shows its refusal and no Confirm button; the dialog keeps the keyboard
focus inside and closes on Escape; the pages read well at phone width.

A screenshot of every step goes to artifacts/browser/<test>/NN-<step>.png.

Run as root: python3 -m pytest Tests/web/test_browser.py  (FERRY_BIN=/path/to/ferry to test another build)
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from pathlib import Path

import pytest

from browser_support import (TASK_WAIT, Shots, attribute_selector, console_errors, css, dialog_is_open, log_in,
                             make_driver, one, pick_destination, selenium, verdict, wait)
from conftest import file_checksums, project_of, write


@pytest.fixture
def driver():
    browser = make_driver(1280, 900)
    yield browser
    browser.quit()


@pytest.fixture
def phone():
    browser = make_driver(390, 844)
    yield browser
    browser.quit()


def selenium_action_chains():
    from selenium.webdriver.common.action_chains import ActionChains
    return ActionChains


def unique(prefix: str) -> str:
    # A leading digit sorts first by name, so the row is on the first page even when other tests
    # have filled the shared project directory.
    return f"0{prefix}-{secrets.token_hex(3)}"


def make_results(directory: Path) -> Path:
    """A directory of real data: 20 MiB in four files, and a subdirectory of small ones."""
    for index in range(4):
        write(directory / f"run-{index}.dat", os.urandom(5 << 20))
    for index in range(12):
        write(directory / "logs" / f"step-{index:02d}.log", f"step {index} ok\n" * (index + 1))
    return directory


def open_folder(driver, path: Path) -> None:
    """Clicks the folder's name in the file browser and waits for its listing."""
    link = one(driver, f"#file-table tr{attribute_selector('data-path', str(path))} a.entry-link")
    link.click()
    wait(driver, lambda d: d.find_element("css selector", "#browser").get_attribute("data-path") == str(path),
         message=f"the listing of {path}")


def select_row(driver, path: Path) -> None:
    box = one(driver, f"#file-table tr{attribute_selector('data-path', str(path))} input.row-select")
    box.click()
    assert box.is_selected(), f"the checkbox of {path} did not get ticked"


def open_move_dialog(driver) -> None:
    button = one(driver, "#move-button")
    wait(driver, lambda d: button.is_enabled(), message="the Move… button to be enabled by the selection")
    button.click()
    wait(driver, lambda d: dialog_is_open(d) and css(d, "#picker-list .picker-item"),
         message="the move dialog with its folder list")


def test_move_a_directory_to_another_project(server, xfs_sandbox, driver):
    shots = Shots(driver, "move-across-projects")
    alpha, beta = xfs_sandbox.project("alpha"), xfs_sandbox.project("beta")
    name = unique("results")
    source = make_results(alpha / name)
    destination = beta / name
    before = file_checksums(source)
    assert project_of(source) == 100 and project_of(source / "run-0.dat") == 100
    try:
        # Sign in with the token, as printed by `ferry serve`.
        log_in(driver, server, shots)
        shots("signed in")

        # Browse into project alpha: its project and quota are shown.
        open_folder(driver, alpha)
        assert one(driver, "#project-id").text.strip() == "100", "the browser should show project 100 for alpha"
        assert css(driver, "#quota-bytes") and css(driver, "#quota-inodes"), "quota bars for bytes and inodes"
        shots("project alpha")

        # Select the directory; the toolbar's Move… comes alive.
        select_row(driver, source)
        assert "1 selected" in one(driver, "#selection-count").text
        shots("directory selected")

        # The move dialog: browse to project beta.
        open_move_dialog(driver)
        shots("move dialog")
        pick_destination(driver, str(beta))
        state = verdict(driver)
        shots("pre-flight verdict")
        summary = one(driver, "#preflight-summary").text
        refusal = one(driver, "#preflight-refusal")
        assert state == "allowed", f"the pre-flight refused: {summary} {refusal.text}"
        assert re.search(r"\bCopy\b.*\binto project 200\b", summary), \
            f"the verdict should say it copies into project 200, it says: {summary!r}"
        assert not refusal.is_displayed()
        confirm = one(driver, "#dialog-confirm")
        assert confirm.is_displayed() and confirm.is_enabled(), "an allowed move offers Confirm"

        # Confirm: the task's page, with live progress.
        confirm.click()
        wait(driver, lambda d: re.search(r"/tasks/[0-9a-f]+$", d.current_url), message="the task page")
        task_id = driver.current_url.rsplit("/", 1)[1]
        page = one(driver, "#task-detail")
        assert page.get_attribute("data-task-id") == task_id
        shots("task started")
        wait(driver, lambda d: page.get_attribute("data-status") in ("completed", "failed", "cancelled", "rolled_back"),
             TASK_WAIT, message="the task to finish")
        status = page.get_attribute("data-status")
        error = one(driver, "#task-error")
        shots("task finished")
        assert status == "completed", f"the task ended {status}: {error.text}"
        bar = one(driver, "#task-detail .progress-bar")
        wait(driver, lambda d: bar.get_attribute("data-percent") == "100", message="the progress bar at 100%")
        track = one(driver, "#task-detail .progress")
        wait(driver, lambda d: bar.size["width"] >= track.size["width"] - 1, message="the progress bar drawn full")
        assert one(driver, "#task-status").text.strip() == "completed"
        assert not error.is_displayed()
        timeline = {li.get_attribute("data-phase"): li.get_attribute("data-state") for li in css(driver, "#timeline li")}
        assert timeline.get("completed") == "done", f"the phase timeline should end done: {timeline}"
        assert css(driver, "#events li"), "the task's event history is listed"

        # On disk: at the destination with beta's project ID, gone from alpha, every byte the same.
        assert not source.exists(), f"{source} should be gone after the move"
        assert destination.is_dir(), f"{destination} should exist after the move"
        assert project_of(destination) == 200
        assert project_of(destination / "run-0.dat") == 200
        assert project_of(destination / "logs" / "step-00.log") == 200
        assert file_checksums(destination) == before

        # The task stays in the history.
        one(driver, "#nav-tasks").click()
        card = one(driver, f"#task-list {attribute_selector('data-task-id', task_id)}")
        assert card.get_attribute("data-status") == "completed"
        assert card.find_element("css selector", ".progress-bar").get_attribute("data-percent") == "100"
        assert name in card.text
        shots("task history")
        errors = console_errors(driver)
        assert not errors, f"JavaScript errors: {errors}"
    finally:
        shutil.rmtree(source, ignore_errors=True)
        shutil.rmtree(destination, ignore_errors=True)


def test_a_name_that_is_not_utf8_is_shown_and_moved(server, xfs_sandbox, driver):
    """A Latin-1 directory name: listed with its byte shown as \\xE9 (as the CLI shows it), named
    so in the move dialog, and moved by the browser: the bytes arrive, the neighbour whose UTF-8
    name a lossy decoding would give stays."""
    shots = Shots(driver, "not-utf8")
    alpha, beta = xfs_sandbox.project("alpha"), xfs_sandbox.project("beta")
    prefix = unique("latin")
    raw = bytes(alpha) + b"/" + prefix.encode() + b"-caf\xe9"
    neighbour = alpha / (prefix + "-caf\ufffd")
    os.mkdir(raw)
    with open(raw + b"/data", "wb") as f:
        f.write(b"bytes of a latin-1 folder")
    write(neighbour / "data", "the neighbour")
    text_path = str(alpha) + "/" + prefix + "-caf\uf7e9"   # the API's text for the name
    arrived = bytes(beta) + b"/" + prefix.encode() + b"-caf\xe9"
    try:
        log_in(driver, server, shots)
        open_folder(driver, alpha)
        row = one(driver, f"#file-table tr{attribute_selector('data-path', text_path)}")
        assert row.find_element("css selector", ".entry-name").text == prefix + "-caf\\xE9"
        shots("listed")
        select_row(driver, Path(text_path))
        open_move_dialog(driver)
        assert (prefix + "-caf\\xE9") in one(driver, "#dialog-title").text
        # The dialog's folder list is built by the page's script from the API's text.
        picked = one(driver, f"#picker-list {attribute_selector('data-path', text_path)} .entry-name")
        assert picked.text == prefix + "-caf\\xE9"
        pick_destination(driver, str(beta))
        assert verdict(driver) == "allowed", one(driver, "#preflight-summary").text
        one(driver, "#dialog-confirm").click()
        wait(driver, lambda d: re.search(r"/tasks/[0-9a-f]+$", d.current_url), message="the task page")
        page = one(driver, "#task-detail")
        wait(driver, lambda d: page.get_attribute("data-status") in ("completed", "failed", "cancelled", "rolled_back"),
             TASK_WAIT, message="the task to finish")
        shots("moved")
        assert page.get_attribute("data-status") == "completed", one(driver, "#task-error").text
        with open(arrived + b"/data", "rb") as f:
            assert f.read() == b"bytes of a latin-1 folder"
        assert not os.path.exists(raw)
        assert (neighbour / "data").read_text() == "the neighbour"
        errors = console_errors(driver)
        assert not errors, f"JavaScript errors: {errors}"
    finally:
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(arrived, ignore_errors=True)
        shutil.rmtree(neighbour, ignore_errors=True)


def test_refused_move_and_keyboard(server, xfs_sandbox, driver):
    """A move onto an existing name is refused with its reason and no Confirm button; the dialog keeps
    Tab inside itself and Escape closes it, giving the focus back to the Move… button."""
    _, _, _, Keys, *_ = selenium()
    shots = Shots(driver, "refused-move")
    alpha, beta = xfs_sandbox.project("alpha"), xfs_sandbox.project("beta")
    name = unique("clash")
    source = write(alpha / name / "data.txt", "the source\n").parent
    existing = write(beta / name / "other.txt", "already here\n").parent
    try:
        log_in(driver, server)
        open_folder(driver, alpha)
        select_row(driver, source)
        open_move_dialog(driver)
        shots("move dialog")
        pick_destination(driver, str(beta))
        state = verdict(driver)
        shots("refused")
        refusal = one(driver, "#preflight-refusal")
        assert state == "refused", f"expected a refusal, the verdict is {state}: {one(driver, '#preflight-summary').text}"
        assert refusal.is_displayed(), "the refusal is shown"
        assert refusal.get_attribute("data-code") == "destination.exists", refusal.get_attribute("outerHTML")
        assert name in refusal.text and "exist" in refusal.text, f"the refusal should name the clash: {refusal.text!r}"
        assert not one(driver, "#dialog-confirm").is_displayed(), "a refused move offers no Confirm button"

        # Tab and Shift+Tab cycle inside the dialog.
        ActionChains = selenium_action_chains()
        for backwards in (False, True):
            for _ in range(12):
                chain = ActionChains(driver)
                if backwards:
                    chain.key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
                else:
                    chain.send_keys(Keys.TAB).perform()
                inside = driver.execute_script(
                    "return document.getElementById('transfer-dialog').contains(document.activeElement)")
                assert inside, f"the focus left the open dialog ({'Shift+' if backwards else ''}Tab)"

        # Escape closes it; the focus goes back to the button that opened it.
        driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        wait(driver, lambda d: not dialog_is_open(d), message="Escape to close the dialog")
        assert driver.switch_to.active_element.get_attribute("id") == "move-button"
        shots("closed with escape")

        # Nothing moved.
        assert (source / "data.txt").read_text() == "the source\n"
        assert (existing / "other.txt").read_text() == "already here\n"
        assert not (existing / name).exists()
        errors = console_errors(driver)
        assert not errors, f"JavaScript errors: {errors}"
    finally:
        shutil.rmtree(source, ignore_errors=True)
        shutil.rmtree(existing, ignore_errors=True)


def test_phone_width(server, xfs_sandbox, phone):
    """At 390 px wide nothing scrolls sideways, and the file list, dialog and task list still work."""
    shots = Shots(phone, "phone")
    alpha, beta = xfs_sandbox.project("alpha"), xfs_sandbox.project("beta")
    name = unique("phone")
    source = write(alpha / name / "notes.txt", "small\n").parent
    try:
        log_in(phone, server)
        open_folder(phone, alpha)
        shots("browse")

        def no_sideways_scroll(what: str) -> None:
            width = phone.execute_script("return document.documentElement.scrollWidth")
            viewport = phone.execute_script("return window.innerWidth")
            assert width <= viewport, f"{what} is {width} px wide in a {viewport} px screen"

        no_sideways_scroll("the file browser")
        select_row(phone, source)
        open_move_dialog(phone)
        pick_destination(phone, str(beta))
        assert verdict(phone) == "allowed"
        one(phone, "#dialog-confirm").location_once_scrolled_into_view
        shots("move dialog")
        one(phone, "#dialog-cancel").click()
        wait(phone, lambda d: not dialog_is_open(d), message="Cancel to close the dialog")
        phone.get(server.url + "/tasks")
        one(phone, "#task-list")
        no_sideways_scroll("the task list")
        shots("tasks")
        errors = console_errors(phone)
        assert not errors, f"JavaScript errors: {errors}"
    finally:
        shutil.rmtree(source, ignore_errors=True)


def test_live_task_list_cancel_and_retry(start_server, xfs_sandbox, driver):
    """The task list shows a task created elsewhere as it appears (server-sent events), and its Cancel
    and Retry buttons act in place, without reloading the page. The server runs no workers, so the
    task waits as pending until it is cancelled."""
    shots = Shots(driver, "cancel-and-retry")
    server = start_server(workers=0)
    alpha, beta = xfs_sandbox.project("alpha"), xfs_sandbox.project("beta")
    name = unique("waiting")
    source = write(alpha / name / "data.txt", "waits\n").parent
    try:
        log_in(driver, server)
        driver.get(server.url + "/tasks")
        one(driver, "#task-list")
        wait(driver, lambda d: one(d, "#live-indicator").get_attribute("data-state") == "live",
             message="the live connection")
        driver.execute_script("window.ferryTestMarker = 'same page'")

        # A task created through the API shows up on the open page.
        api = server.session()
        response = api.post(server.api("/api/tasks"), timeout=30,
                            json={"kind": "move", "sources": [str(source)], "destination": str(beta)})
        assert response.status_code == 201, response.text
        task_id = response.json()["id"]
        card = one(driver, f"#task-list {attribute_selector('data-task-id', task_id)}")
        assert card.get_attribute("data-status") == "pending"
        shots("task appeared")

        cancel = card.find_element("css selector", "[data-action='cancel']")
        retry = card.find_element("css selector", "[data-action='retry']")
        assert cancel.is_displayed() and not retry.is_displayed()
        cancel.click()
        wait(driver, lambda d: card.get_attribute("data-status") == "cancelled", message="the card to show cancelled")
        wait(driver, lambda d: retry.is_displayed() and not cancel.is_displayed(), message="Retry instead of Cancel")
        assert card.find_element("css selector", "[data-field='status']").text.strip() == "cancelled"
        shots("cancelled")

        retry.click()
        wait(driver, lambda d: card.get_attribute("data-status") == "pending", message="the card to show pending again")
        wait(driver, lambda d: cancel.is_displayed() and not retry.is_displayed(), message="Cancel again after Retry")
        shots("retried")
        assert driver.execute_script("return window.ferryTestMarker") == "same page", "the page reloaded"
        assert api.get(server.api(f"/api/tasks/{task_id}"), timeout=30).json()["status"] == "pending"
        assert (source / "data.txt").read_text() == "waits\n", "nothing ran: the server has no workers"
        errors = console_errors(driver)
        assert not errors, f"JavaScript errors: {errors}"
    finally:
        shutil.rmtree(source, ignore_errors=True)


def test_admin_runs_the_janitor(server, driver):
    """An admin runs the janitor from the admin page: after the confirmation, the page lists what it
    did, here the lock marker of a task that holds no lock, which it removed (a dry run first
    reports and changes nothing)."""
    shots = Shots(driver, "admin-janitor")
    marker = Path(str(server.database) + "-locks") / "0123456789abcdef"
    marker.touch()
    try:
        log_in(driver, server)
        driver.get(server.url + "/admin")
        one(driver, "#janitor-dry-run").click()
        result = one(driver, "#janitor-result")
        wait(driver, lambda d: "Dry run: nothing was changed." in result.text, message="the dry run's report")
        assert "Repaired" not in result.text and marker.exists(), result.text
        shots("dry run")

        one(driver, "#janitor-run").click()
        wait(driver, lambda d: d.switch_to.alert, message="the confirmation").accept()
        wait(driver, lambda d: "The janitor ran." in result.text, message="the janitor's report")
        assert "Repaired (1)" in result.text, result.text
        assert "removed the lock marker of task 0123456789abcdef" in result.text, result.text
        assert not marker.exists()
        shots("janitor ran")
        assert not console_errors(driver), console_errors(driver)
    finally:
        marker.unlink(missing_ok=True)
