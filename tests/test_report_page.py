"""report.html as a reader meets it: one headline, one banner, each cause once with its remedy
as code, figures without a second copy of the header, and no blank space after the last line.

The run is a real Keras fit on this machine's CPU (no NVIDIA driver), so the causes are the
ones a newcomer sees. The page is also opened in a real browser, headless Chromium (Debian's
`chromium` package, which `make test` installs where it runs as root): its screenshot must
have the window's size and show the page, not a blank one. Where Chromium is missing the
browser tests skip and say so; under CI=true they fail instead.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import warnings
from html.parser import HTMLParser

import keras
import numpy as np
import pytest
from PIL import Image

from gpu_watch import GPUWatch, GPUWatchWarning, load_run
from gpu_watch.report import figures, view

CHROMIUM_TIMEOUT_S = 120
WINDOW = (1400, 2200)


class Page(HTMLParser):
    """The visible text of a page (not its <title>, <style> or folded <details>), its headings,
    the elements with a class or id, its code elements and its images."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.code: list[str] = []
        self.h1 = 0
        self.classes: list[str] = []
        self.images: list[str] = []
        self._hidden = 0
        self._in_code = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("title", "style", "details"):
            self._hidden += 1
        if tag == "h1":
            self.h1 += 1
        if tag == "code":
            self._in_code = True
            self.code.append("")
        if tag == "img":
            self.images.append(attrs["src"])
        self.classes += (attrs.get("class") or "").split()

    def handle_endtag(self, tag):
        if tag in ("title", "style", "details"):
            self._hidden -= 1
        if tag == "code":
            self._in_code = False

    def handle_data(self, data):
        if self._hidden:
            return
        self.text.append(data)
        if self._in_code:
            self.code[-1] += data

    @property
    def visible(self) -> str:
        return "".join(self.text)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    watch = GPUWatch(log_dir=tmp_path_factory.mktemp("logs"), verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GPUWatchWarning)
        model.fit(np.zeros((64, 4), "float32"), np.zeros((64, 1), "float32"), epochs=2,
                  batch_size=8, verbose=0, callbacks=[watch])
    assert watch.wait_for_report(timeout_s=120)
    return load_run(watch.run_dir)


@pytest.fixture(scope="module")
def page(cpu_run) -> Page:
    return Page((cpu_run.path / "report.html").read_text())


def test_one_headline_and_one_banner(cpu_run, page):
    assert page.h1 == 1 and page.classes.count("banner") == 1
    headline = view.VERDICT_WORDS["cpu_fallback"]
    assert page.visible.count(headline) == 1
    # The banner says what happened and points at the list: no cause is told twice.
    assert page.visible.count("Training ran on the CPU") == 1


def test_each_cause_is_stated_once_with_its_remedy_as_code(cpu_run, page):
    causes = cpu_run.causes
    assert [c["code"] for c in causes][:1] == ["no_nvidia_driver"] and len(causes) >= 2
    for cause in causes:
        assert page.visible.count(cause["message"]) == 1, cause["code"]
        for code in re.findall(r"`([^`]+)`", cause["remedy"]) or [cause["remedy"]]:
            assert code in page.code, code
    assert page.visible.count("docker run --gpus all") <= 1
    assert "`" not in page.visible  # code marks are markup, not characters
    # What the doctor found before training is the same causes: not listed again.
    assert "Also found before training" not in page.visible
    assert page.visible.index("First:") < page.visible.index("Then:")


def test_the_embedded_figures_are_the_files_without_their_header(cpu_run, page):
    assert len(page.images) == 2
    for src, name in zip(page.images, ("utilization.png", "epochs.png"), strict=True):
        embedded = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))
        with Image.open(cpu_run.path / name) as file:
            header_px = int(file.info[figures.HEADER_PX_KEY])
            whole = np.asarray(file.convert("RGBA"))
        assert header_px > 50  # the banner, title and subtitle were there to leave out
        assert embedded.shape == whole[header_px:].shape
        assert np.array_equal(embedded, whole[header_px:])


def test_a_never_measured_cost_reads_not_measured(page):
    assert "Cost: not measured:" in page.visible
    assert " 0 J" not in page.visible and "0.0 s of wall time" not in page.visible


# -- in a browser ------------------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("Chromium is missing on CI: `make test` installs Debian's chromium package "
                    "when it runs as root with apt-get")
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium), so report.html "
                "is not checked in a browser here")


def run_chromium(tmp_path, *args: str) -> str:
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_page_in_chromium_shows_its_banner_and_content(cpu_run, tmp_path):
    shot = tmp_path / "report.png"
    run_chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                 (cpu_run.path / "report.html").as_uri())
    with Image.open(shot) as image:
        assert image.size == WINDOW
        pixels = np.asarray(image.convert("RGB")).astype(int)
    # Not blank: dark text on white, and the banner's red band near the top.
    dark = (pixels.sum(axis=2) < 200).mean()
    assert 0.005 < dark < 0.5, dark
    red = np.array([int(view.VERDICT_COLOURS["cpu_fallback"][i:i + 2], 16) for i in (1, 3, 5)])
    banner_rows = np.flatnonzero((np.abs(pixels - red).sum(axis=2) < 30).mean(axis=1) > 0.5)
    assert banner_rows.size and banner_rows[0] < 300, banner_rows[:5]


def test_the_page_ends_where_its_content_ends(cpu_run, tmp_path):
    # The page's own height against the bottom of its last element, measured by the browser.
    probe = tmp_path / "probe.html"
    probe.write_text((cpu_run.path / "report.html").read_text() + (
        "<script>const last = [...document.body.children].filter(e => e.tagName !== 'SCRIPT')"
        ".pop(); document.title = 'H' + document.documentElement.scrollHeight + 'B' + "
        "Math.round(last.getBoundingClientRect().bottom + window.scrollY);</script>"))
    dom = run_chromium(tmp_path, "--dump-dom", "--window-size=1400,900", probe.as_uri())
    match = re.search(r"<title>H(\d+)B(\d+)</title>", dom)
    assert match, dom[:500]
    height, bottom = int(match[1]), int(match[2])
    assert bottom > 900  # the content is longer than the window: the figures are there
    assert 0 <= height - bottom < 80, (height, bottom)
