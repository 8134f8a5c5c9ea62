"""The playground page in real headless Chromium (Debian's package, driven by Playwright): type code
that prints and plots, upload a file, click Run, see the text, the figure and the written file; with
the session toggle on, state carries over between runs."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

from .conftest import KEY

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
CODE = """import matplotlib.pyplot as plt
rows = open('numbers.csv').read().split()
print('rows:', len(rows))
plt.plot([int(r) for r in rows], marker='o')
plt.title('from the playground')
plt.show()
open('report.txt', 'w').write('written by the run')
"""
SHOTS = Path(os.environ.get("SANDBOX_TEST_ARTIFACTS", "/tmp/sandbox-test-artifacts"))


def test_type_run_and_see_text_figure_and_file(server, tmp_path):
    csv = tmp_path / "numbers.csv"
    csv.write_text("3\n1\n4\n1\n5\n")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            external = []
            page.on("request", lambda r: external.append(r.url) if not r.url.startswith((server.url, "data:", "blob:")) else None)
            page.goto(server.url + "/")
            page.fill("#key", KEY)
            page.fill("#code", CODE)
            page.set_input_files("#files", str(csv))
            page.click("#run")
            expect(page.locator("#outcome")).to_have_text("ok", timeout=60_000)
            expect(page.locator("#stdout")).to_have_text("rows: 5\n")
            img = page.locator("#figures img")
            expect(img).to_have_count(1)
            assert page.evaluate("document.querySelector('#figures img').naturalWidth") > 100
            link = page.locator("#outputs a")
            expect(link).to_contain_text("report.txt")
            with page.expect_download() as dl:
                link.click()
            assert Path(dl.value.path()).read_text() == "written by the run"
            expect(page.locator("#usage")).to_contain_text("ms wall")
            page.screenshot(path=str(SHOTS / "playground.png"), full_page=True)

            # Output appears while the program still runs.
            page.fill("#code", "import time\nprint('early', flush=True)\ntime.sleep(8)\nprint('late')")
            page.click("#run")
            expect(page.locator("#stdout")).to_have_text("early\n", timeout=30_000)
            assert page.locator("#outcome").text_content() == ""   # no result yet: the run goes on
            expect(page.locator("#outcome")).to_have_text("ok", timeout=60_000)
            expect(page.locator("#stdout")).to_have_text("early\nlate\n")

            # With "Keep state" on, the runs share a session; off, it is closed and runs start fresh.
            sessions_before = httpx.get(server.url + "/v1/health").json()["sessions"]
            page.set_input_files("#files", [])
            page.check("#session")
            expect(page.locator("#session-status")).to_contain_text("session open", timeout=30_000)
            assert httpx.get(server.url + "/v1/health").json()["sessions"] == sessions_before + 1
            page.fill("#code", "x = 41")
            page.click("#run")
            expect(page.locator("#outcome")).to_have_text("ok", timeout=60_000)
            page.fill("#code", "print(x + 1)")
            page.click("#run")
            expect(page.locator("#outcome")).to_have_text("ok", timeout=60_000)
            expect(page.locator("#stdout")).to_have_text("42\n")
            page.screenshot(path=str(SHOTS / "playground-session.png"), full_page=True)
            page.uncheck("#session")
            expect(page.locator("#session-status")).to_contain_text("closed", timeout=30_000)
            page.click("#run")
            expect(page.locator("#outcome")).to_have_text("error", timeout=60_000)
            expect(page.locator("#error")).to_contain_text("NameError")
            deadline = 50
            while httpx.get(server.url + "/v1/health").json()["sessions"] != sessions_before and deadline:
                page.wait_for_timeout(100)
                deadline -= 1
            assert httpx.get(server.url + "/v1/health").json()["sessions"] == sessions_before

            # An error shows its traceback and outcome; a wrong key shows the server's message.
            page.fill("#code", "print('before')\n1/0")
            page.click("#run")
            expect(page.locator("#outcome")).to_have_text("error", timeout=60_000)
            expect(page.locator("#error")).to_contain_text("ZeroDivisionError")
            page.fill("#key", "wrong-key-000000000000")
            page.click("#run")
            expect(page.locator("#status")).to_contain_text("401", timeout=30_000)
            assert external == [], external  # the page loads nothing from outside the server
        finally:
            browser.close()
