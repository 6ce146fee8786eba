#!/usr/bin/python3
"""Drives the admin status page in headless Chromium (Debian's chromium, chromium-driver, python3-selenium).

    status_page.py URL BACKEND... --kill BACKEND --drain BACKEND

1. Loads URL and waits until every BACKEND (an address) has a row; prints "listed".
2. Clicks Drain on the --drain backend and waits until its row says "draining" (a same-origin POST).
3. Reads a line from standard input (the caller kills the --kill backend's process, then writes it),
   then waits until that backend's row says "down"; prints "down after S s".
4. Fails on any console error or warning the page logged.

Every wait is bounded; exits 0 when all of it held, 1 with the reason otherwise.
"""
import argparse
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def say(text):
    print(text, flush=True)


# Read in one go inside the page, so a refresh that replaces the cells cannot interleave.
ROWS = """
const rows = {};
for (const row of document.querySelectorAll("tr.backend")) {
  const address = row.querySelector(".addr"), pill = row.querySelector(".pill");
  if (address && pill) rows[address.textContent] = [pill.textContent, row.children[7].innerText];
}
return rows;
"""


def rows(driver):
    """{address: [state shown, health text]} of every backend row."""
    return driver.execute_script(ROWS)


def state(driver, address):
    return rows(driver).get(address, [None])[0]


def click(driver, address, label, attempts=20):
    """Clicks the button `label` in the row of `address` (again if a refresh replaced it meanwhile)."""
    for _ in range(attempts):
        try:
            for row in driver.find_elements(By.CSS_SELECTOR, "tr.backend"):
                if row.find_element(By.CSS_SELECTOR, ".addr").text == address:
                    row.find_element(By.XPATH, f".//button[text()='{label}']").click()
                    return
        except StaleElementReferenceException:
            pass
        time.sleep(0.05)
    raise AssertionError(f"no {label} button for {address}")


def wait_for(what, condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout}s")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("backends", nargs="+")
    parser.add_argument("--kill", required=True)
    parser.add_argument("--drain", required=True)
    parser.add_argument("--down-within", type=float, default=8)
    args = parser.parse_args()

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(20)
    try:
        driver.get(args.url)
        wait_for("every backend listed", lambda: all(state(driver, b) for b in args.backends), 15)
        say("listed " + " ".join(f"{b}={state(driver, b)}" for b in args.backends))

        click(driver, args.drain, "Drain")
        wait_for(f"{args.drain} shown draining after its Drain button", lambda: state(driver, args.drain) == "draining", 10)
        say(f"drained {args.drain}")

        say("ready for the kill")
        if not sys.stdin.readline():
            raise AssertionError("the caller closed standard input instead of killing the backend")
        killed = time.monotonic()
        wait_for(f"{args.kill} shown down after its kill", lambda: state(driver, args.kill) == "down", args.down_within)
        say(f"down after {time.monotonic() - killed:.1f} s")
        say("health: " + rows(driver)[args.kill][1].replace("\n", " | "))

        problems = [e for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "WARNING")]
        if problems:
            raise AssertionError("console: " + "; ".join(e.get("message", "") for e in problems))
        say("no console errors")
    finally:
        driver.quit()


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, WebDriverException) as error:
        say(f"FAILED: {error}")
        sys.exit(1)
