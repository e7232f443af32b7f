#!/usr/bin/python3
"""Real headless Chromium for indexswarm's dashboard tests, driven through
chromedriver by Debian's python3-selenium.

Run with Debian's /usr/bin/python3 (apt-get install chromium chromium-driver
python3-selenium). The Rust test (integration/dashboard.rs) keeps the
assertions; this script only drives the browser. It reads one JSON command
a line on stdin and answers one JSON line on stdout:

  {"cmd": "get", "url": U}                      -> load a page
  {"cmd": "eval", "js": BODY, "args": [...]}    -> value of a function body run in the page
  {"cmd": "click", "css": SEL}                  -> a real (WebDriver) click on the element
  {"cmd": "type", "css": SEL, "text": T}        -> clear the field, then type T
  {"cmd": "alert", "text": T|null, "accept": B} -> answer a prompt/confirm/alert; its text
  {"cmd": "screenshot", "path": P}              -> a PNG of the window
  {"cmd": "requests"}                           -> every request since the last "get":
                                                   [{"url", "document"}] from Chromium's
                                                   performance log (document: the page
                                                   that asked; chrome:// for its own UI)
  {"cmd": "quit"}

Answers: {"ok": true, "value": ...} or {"ok": false, "error": "..."}.
Usage: browser.py --user-data-dir DIR [--window 1400x1000]
"""
import argparse
import json
import sys
import traceback

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def start(user_data_dir, window):
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--user-data-dir=" + user_data_dir,
        "--window-size=" + window.replace("x", ","),
    ):
        opts.add_argument(flag)
    # Every request the page makes lands in the performance log.
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # Prompts stay open until the test answers them.
    opts.set_capability("unhandledPromptBehavior", "ignore")
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


class Requests:
    """Network.requestWillBeSent entries, accumulated (get_log drains)."""

    def __init__(self):
        self.seen = []

    def drain(self, driver):
        for entry in driver.get_log("performance"):
            try:
                msg = json.loads(entry["message"])["message"]
            except (KeyError, ValueError):
                continue
            if msg.get("method") == "Network.requestWillBeSent":
                params = msg.get("params", {})
                r = {
                    "url": params.get("request", {}).get("url", ""),
                    "document": params.get("documentURL", ""),
                }
                if r not in self.seen:
                    self.seen.append(r)
        return self.seen


def handle(driver, reqs, c):
    cmd = c["cmd"]
    if cmd == "get":
        reqs.drain(driver)
        reqs.seen = []
        driver.get(c["url"])
        return None
    if cmd == "eval":
        return driver.execute_script(c["js"], *c.get("args", []))
    if cmd == "click":
        driver.find_element(By.CSS_SELECTOR, c["css"]).click()
        return None
    if cmd == "type":
        e = driver.find_element(By.CSS_SELECTOR, c["css"])
        e.clear()
        e.send_keys(c["text"])
        return None
    if cmd == "alert":
        try:
            a = driver.switch_to.alert
        except NoAlertPresentException:
            raise RuntimeError("no dialog is open")
        text = a.text
        if c.get("text") is not None:
            a.send_keys(c["text"])
        if c.get("accept", True):
            a.accept()
        else:
            a.dismiss()
        return text
    if cmd == "screenshot":
        if not driver.save_screenshot(c["path"]):
            raise RuntimeError("the screenshot was not saved")
        return c["path"]
    if cmd == "requests":
        reqs.drain(driver)
        return reqs.seen
    raise ValueError("unknown command %r" % cmd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--user-data-dir", required=True)
    ap.add_argument("--window", default="1400x1000")
    args = ap.parse_args()
    driver = start(args.user_data_dir, args.window)
    reqs = Requests()
    print(json.dumps({"ok": True, "value": "ready"}), flush=True)
    try:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            c = json.loads(line)
            if c.get("cmd") == "quit":
                print(json.dumps({"ok": True, "value": None}), flush=True)
                break
            try:
                # The log fills as the page runs: drain it on every command.
                if c["cmd"] != "alert":
                    reqs.drain(driver)
                out = {"ok": True, "value": handle(driver, reqs, c)}
            except Exception as e:  # reported to the test, which decides
                out = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
                traceback.print_exc(file=sys.stderr)
            print(json.dumps(out), flush=True)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
