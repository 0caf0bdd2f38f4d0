"""The built docs (``make docs``) as a reader sees them, offline, in headless Chromium.

Every page that has math is opened from ``file://`` with the network cut off: its math must
be rendered by the site's own MathJax (no raw TeX left on the page, no MathJax parse error),
and no page may load a script or stylesheet from the network. The search page must find an
API name from ``file://`` too. Pages without math are checked as built (no script runs on
them that could change their text).

Without the built site or Chromium the tests skip, saying what to do; under
``ADAMJAX_REQUIRE_DOCS=1`` (CI sets it, after ``make docs``) they fail instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

SITE = Path(__file__).resolve().parents[1] / "docs" / "_build" / "html"
REQUIRE_ENV = "ADAMJAX_REQUIRE_DOCS"

# Raw TeX a reader would see: math delimiters, a TeX command, display dollars.
RAW_TEX = re.compile(r"\\[()\[\]]|\\[A-Za-z]{2,}|\$\$")
# Text inside these is code, script or rendered math, not prose.
SKIP_TAGS = {"script", "style", "pre", "code", "kbd", "samp", "textarea", "mjx-container"}
REMOTE = re.compile(r"^\s*(https?:)?//", re.I)


def _missing(what: str) -> None:
    """Skip, or fail under ADAMJAX_REQUIRE_DOCS=1."""
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{what} ({REQUIRE_ENV}=1: failing instead of skipping)", False)
    pytest.skip(what)


def _site() -> Path:
    if not (SITE / "index.html").is_file():
        _missing(f"the docs are not built ({SITE}/index.html is missing): run `make docs`")
    return SITE


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    _missing("headless Chromium is not installed (Debian: apt-get install -y chromium)")
    raise AssertionError  # unreachable: _missing skips or fails


def render(url: str) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with no network.

    Name resolution and the proxy both point nowhere, so a page that reaches for the network
    gets nothing (and its math would stay raw TeX).
    """
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [
                _chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-extensions",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--proxy-server=127.0.0.1:9",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--virtual-time-budget=15000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert out.returncode == 0 and "<html" in out.stdout, (
        f"chromium could not render {url} (exit {out.returncode}): {out.stderr[-2000:]}"
    )
    return out.stdout


class _Page(HTMLParser):
    """Prose text (outside code, scripts and rendered math), remote resources, math errors."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.skip = 0
        self.text: list[str] = []
        self.remote: list[str] = []
        self.math = 0  # elements Sphinx marks as math
        self.rendered = 0  # MathJax's output elements
        self.errors = 0  # MathJax's "could not parse this TeX"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src") and REMOTE.match(a["src"] or ""):
            self.remote.append(f"<script src={a['src']}>")
        if tag == "link" and REMOTE.match(a.get("href") or ""):
            if a.get("rel") in ("stylesheet", "preload", "modulepreload"):
                self.remote.append(f"<link rel={a['rel']} href={a['href']}>")
        if "math" in (a.get("class") or "").split():
            self.math += 1
        if tag == "mjx-container":
            self.rendered += 1
        if tag == "mjx-merror":
            self.errors += 1
        if tag in SKIP_TAGS:
            self.skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIP_TAGS and self.skip:
            self.skip -= 1

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.text.append(data)


def problems(html: str) -> list[str]:
    """What a reader would see wrong on this page (empty when it is fine)."""
    page = _Page()
    page.feed(html)
    text = " ".join(page.text)
    found = [f"loads {r}" for r in page.remote]
    for m in list(RAW_TEX.finditer(text))[:5]:
        around = text[max(0, m.start() - 60) : m.end() + 60]
        found.append(f"raw TeX {m.group()!r} in: ...{around}...")
    if page.math and not page.rendered:
        found.append(f"{page.math} math elements and no rendered math (MathJax did not run)")
    if page.errors:
        found.append(f"{page.errors} formulas MathJax could not parse")
    return found


def _pages() -> list[Path]:
    return sorted(p for p in _site().rglob("*.html") if "_modules" not in p.parts)


def test_no_page_loads_a_remote_script_or_shows_raw_tex_as_built():
    bad = {}
    for page in _pages():
        html = page.read_text(encoding="utf-8")
        if 'class="math' in html:
            found = [p for p in problems(html) if p.startswith("loads")]  # MathJax renders the rest
        else:
            found = problems(html)
        if found:
            bad[str(page.relative_to(SITE))] = found
    assert not bad, f"pages with problems: {bad}"


def test_math_renders_offline_in_headless_chromium():
    with_math = [p for p in _pages() if 'class="math' in p.read_text(encoding="utf-8")]
    names = {str(p.relative_to(SITE)) for p in with_math}
    assert {"index.html", "api/primitives.html", "api/optimizers.html"} <= names, names
    bad = {}
    for page in with_math:
        html = render(page.as_uri())
        found = problems(html)
        assert 'class="math' in html
        if found:
            bad[str(page.relative_to(SITE))] = found
    assert not bad, f"pages that do not render offline: {bad}"


def test_search_works_from_file_url():
    html = render((_site() / "search.html").as_uri() + "?q=bias_correct")
    results = re.findall(r'<ul[^>]*class="search"[^>]*>(.*?)</ul>', html, re.S)
    assert results, "the search page shows no result list from file://"
    assert "api/primitives.html" in results[0], results[0][:2000]


def test_the_checker_sees_raw_tex_remote_scripts_and_unrendered_math():
    """The checks above would catch a CDN MathJax and unrendered math, not just pass."""
    cdn = '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>'
    assert problems(f"<html><head>{cdn}</head><body></body></html>") == [
        "loads <script src=https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js>"
    ]
    raw = '<html><body><span class="math">\\(\\beta_1\\)</span></body></html>'
    assert len(problems(raw)) >= 2
    fine = (
        '<html><body><span class="math"><mjx-container>b</mjx-container></span>'
        "<code>\\beta</code><pre>$$ \\[</pre></body></html>"
    )
    assert problems(fine) == []
