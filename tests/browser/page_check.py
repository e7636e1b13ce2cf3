#!/usr/bin/env python3
"""Drive the built-in web page in headless Chromium (Debian's, via Playwright; no download).

Loads the page, uploads a real image and waits for the expected top-1 label, then uploads a
non-image and waits for the API's error message; saves screenshots to OUT_DIR.

Usage: page_check.py URL GOOD_IMAGE EXPECTED_LABEL BAD_FILE OUT_DIR
"""

import os
import sys

from playwright.sync_api import expect, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main():
    url, good, label, bad, out = sys.argv[1:6]
    os.makedirs(out, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
        page.goto(url)
        expect(page.locator("#model option")).not_to_have_count(0)
        expect(page.locator("#model-info")).to_contain_text("classes")
        page.set_input_files("#files", good)
        first = page.locator("#results li").first
        expect(first.locator(".prediction span").first).to_have_text(label, timeout=15000)
        expect(page.locator("#timing")).to_contain_text("infer")
        page.screenshot(path=os.path.join(out, "page-phone.png"), full_page=True)

        page.set_viewport_size({"width": 1100, "height": 800})
        page.screenshot(path=os.path.join(out, "page.png"), full_page=True)

        page.set_input_files("#files", bad)
        expect(page.locator("#status")).to_have_class("error")
        expect(page.locator("#status")).to_contain_text("415")
        expect(page.locator("#status")).to_contain_text("supported")
        page.screenshot(path=os.path.join(out, "page-error.png"), full_page=True)

        # Keyboard: the drop zone is focusable and announces itself as a button.
        page.keyboard.press("Tab")
        expect(page.locator("#drop")).to_have_attribute("role", "button")
        browser.close()
    print("page check passed")


if __name__ == "__main__":
    main()
