"""Sphinx configuration of adamjax's documentation (``make docs``; warnings are errors)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's adamjax and experiments, not an installed copy

import adamjax  # noqa: E402

project = "adamjax"
author = "adamjax authors"
release = version = adamjax.__version__

extensions = [
    "sphinx.ext.autodoc",  # API pages from the docstrings
    "sphinx.ext.napoleon",  # Google-style "Args:" / "Returns:" sections
    "sphinx.ext.mathjax",  # :math: and .. math:: rendered in the browser, by the site's MathJax
    "sphinx.ext.viewcode",
    "myst_parser",  # the Markdown pages (benchmarks, scaling)
    "sphinxarg.ext",  # the experiments CLI, generated from its argparse parser
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "benchmarks/*.txt"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, not objects that dataclass members repeat


def _mathjax_static() -> str:
    """The folder holding ``mathjax/`` (MathJax 3) from the sphinx-mathjax-offline package.

    Its ``mathjax/`` is copied into the site's ``_static/``, so that every page loads MathJax
    from the site itself: the math renders offline and from ``file://``, with no CDN.
    """
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the docs serve MathJax from the site: install the docs extra "
            '(pip install -e ".[docs]"), which brings sphinx-mathjax-offline'
        )
    static = Path(spec.origin).parent / "static"
    if not (static / "mathjax" / "tex-chtml.js").is_file():
        raise RuntimeError(f"sphinx-mathjax-offline has no mathjax/tex-chtml.js under {static}")
    return str(static)


html_static_path = [_mathjax_static()]
mathjax_path = "mathjax/tex-chtml.js"  # relative: _static/mathjax/tex-chtml.js of the site

html_theme = "sphinx_book_theme"
html_title = f"adamjax {release}"
html_theme_options = {
    "show_toc_level": 2,  # the in-page table of contents (right sidebar)
    "navigation_with_keys": False,
    "use_download_button": False,  # nothing on the page reaches for the network
    "use_fullscreen_button": False,
}
