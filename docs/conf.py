"""Sphinx configuration of the sktt_flow documentation.

Build with ``sphinx-build -W docs docs/_build`` (warnings are errors). The
gallery runs every ``examples/plot_*.py`` script by default; set
``SKTT_FLOW_DOCS_NO_GALLERY_RUN=1`` to render the gallery without running
anything (CI does, since ``tests/test_examples.py`` already runs the examples).
"""

import os

import sktt_flow

project = "sktt_flow"
author = "The sktt_flow developers"
copyright = "2026, The sktt_flow developers"
release = sktt_flow.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
autosummary_generate = True
templates_path = ["_templates"]
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
# No intersphinx: the build must work without network access.
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "pydata_sphinx_theme"
html_title = "sktt_flow"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_depth": 3,
    "header_links_before_dropdown": 7,
}

# ---------------------------------------------------------------- gallery
# The gallery is built from ../examples (its header: examples/GALLERY_HEADER.rst).

#: "1" renders the gallery without running the examples.
RUN_GALLERY = os.environ.get("SKTT_FLOW_DOCS_NO_GALLERY_RUN", "") != "1"

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # Run the plot_*.py scripts.
    "filename_pattern": r"plot_",
    # Not in the gallery: demo.py (the README's command-line quick start,
    # whose docstring has no gallery title), package files and private
    # helpers (_name.py).
    "ignore_pattern": r"__init__\.py|(^|[/\\])(demo|_[^/\\]*)\.py$",
    "within_subsection_order": "FileNameSortKey",
    "plot_gallery": RUN_GALLERY,
    "remove_config_comments": True,
    "doc_module": ("sktt_flow",),
}
