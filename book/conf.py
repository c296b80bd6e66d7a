"""Sphinx configuration for the lmlab book.

Do not run sphinx-build on book/ directly: `make book` (book/build.py) executes the chapter
notebooks into a staging folder next to a copy of this file and builds from there. Everything
the pages load is served from the book itself (no CDN): require.js, the ipywidgets embedder
(@jupyter-widgets/html-manager) and MathJax are copied into _static from book/node_modules.
"""

from __future__ import annotations

import datetime
from importlib.metadata import version

project = "lmlab"
author = "the lmlab authors"
copyright = f"{datetime.date.today().year}, {author}"
release = version("lmlab")  # written once, in pyproject.toml

html_title = "lmlab: how language models are pretrained"
root_doc = "index"  # book/intro.md, staged as index.md by build.py
language = "en"

extensions = [
    "myst_nb",
    "sphinxcontrib.bibtex",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", "node_modules", "Thumbs.db", ".DS_Store"]
suppress_warnings = [
    # Heading levels inside a notebook are the author's style; a skipped level is not an error.
    "myst.header",
]

# ---------------------------------------------------------------------------- notebooks (myst-nb)
# The notebooks are executed by build.py (papermill) before Sphinx sees them.
nb_execution_mode = "off"
nb_output_stderr = "show"  # shown, so the browser tests can see (and fail on) any stderr
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# ipywidgets: the widget state stored in each executed notebook is rendered by the embedder,
# loaded from local copies. Widget modules that are not bundled in embed-amd.js would be looked
# up under data-jupyter-widgets-cdn: point it at a local folder so nothing leaves the site.
nb_ipywidgets_js = {
    "widgets/require.js": {},
    "lmlab-widgets.js": {},  # where the embedder finds its fonts + a MathJax 3 shim (see the file)
    "widgets/embed-amd.js": {"data-jupyter-widgets-cdn": "_static/widgets/modules/"},
}

# MathJax 3, from a local copy (Sphinx's default points at a CDN).
mathjax_path = "mathjax/tex-mml-chtml.js"
mathjax3_config = {"chtml": {"displayAlign": "left"}}

# ----------------------------------------------------------------------------------- references
bibtex_bibfiles = ["references.bib"]
bibtex_default_style = "plain"
bibtex_reference_style = "author_year"

# ---------------------------------------------------------------------------------------- theme
html_theme = "sphinx_book_theme"
html_static_path = ["_static"]
html_css_files = ["lmlab.css"]
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
}
html_last_updated_fmt = ""
html_show_sourcelink = False
