"""Sphinx configuration of adamjax's documentation (``make docs``; warnings are errors)."""

from __future__ import annotations

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
    "sphinx.ext.mathjax",  # :math: and .. math:: rendered in the browser
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

html_theme = "alabaster"
html_title = f"adamjax {release}"
