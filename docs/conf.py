"""Sphinx configuration of the sktt_flow documentation."""

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
]
autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
# No intersphinx: the build must work without network access.
exclude_patterns = ["_build"]
html_theme = "pydata_sphinx_theme"
html_title = "sktt_flow"
