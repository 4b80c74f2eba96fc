"""Sphinx configuration of the sktt_flow documentation.

Build with ``sphinx-build -W docs docs/_build/html`` (warnings are errors).
The gallery runs every ``examples/plot_*.py`` script by default; set
``SKTT_FLOW_DOCS_NO_GALLERY_RUN=1`` to render the gallery without running
anything (CI does, since ``tests/test_examples.py`` already runs the examples).
Nothing in the build needs the network (see "intersphinx" below).
"""

import ast
import os
import re
import shutil
import zlib
from pathlib import Path

import sktt_flow

HERE = Path(__file__).resolve().parent

project = "sktt_flow"
author = "The sktt_flow developers"
copyright = "2026, The sktt_flow developers"
release = sktt_flow.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_copybutton",
    "sphinx_gallery.gen_gallery",
]
autosummary_generate = True
templates_path = ["_templates"]
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
exclude_patterns = ["_build", "_gallery_src", "**.ipynb_checkpoints"]
html_theme = "pydata_sphinx_theme"
html_title = "sktt_flow"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_depth": 3,
    "header_links_before_dropdown": 7,
}
# Long dotted API names wrap instead of being cut (sidebar, tables, titles).
html_static_path = ["_static"]
html_css_files = ["sktt_flow.css"]

# The copy button leaves out prompts (">>> ", "... ", "$ ") and output lines.
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = False

# ------------------------------------------------------------- intersphinx
# Links to Python, NumPy, scikit-learn, PyTorch and normflows, without the
# network. CI reaches PyPI but no other web site, and `sphinx-build -W` turns
# an unreachable inventory into an error, so the usual intersphinx setup
# (downloading objects.inv at build time) cannot be used there, and shipping
# the projects' real inventories would mean committing large binary files
# that go stale. Instead the build writes small inventories of the external
# objects these pages actually refer to (the table below, collected with a
# nitpicky build: `sphinx-build -n`) and intersphinx reads them from disk.
# Every build, offline or not, gets the same links and the same result.
# normflows has no Sphinx documentation: its objects link to their source.
# A reference missing from the table simply renders as code without a link
# (the build is not nitpicky); add it here when a page starts using it.
# With SKTT_FLOW_DOCS_INTERSPHINX=online the projects' full inventories are
# downloaded first and the local ones are only the fallback (Sphinx logs an
# unreachable location that has a working alternative as information, not as
# a warning), for builds that want every possible link.

#: project -> (documentation root, {name: (role, location relative to the root)});
#: "$" in a location stands for the name.
EXTERNAL_OBJECTS = {
    "python": (
        "https://docs.python.org/3/",
        {
            "collections.abc.Callable": ("class", "library/collections.abc.html#$"),
            "collections.abc.Iterable": ("class", "library/collections.abc.html#$"),
            "collections.abc.Iterator": ("class", "library/collections.abc.html#$"),
            "collections.abc.Sequence": ("class", "library/collections.abc.html#$"),
            "pathlib.Path": ("class", "library/pathlib.html#$"),
            "pickle": ("module", "library/pickle.html#module-pickle"),
            "warnings": ("module", "library/warnings.html#module-warnings"),
            "warnings.catch_warnings": ("class", "library/warnings.html#$"),
            "warnings.filterwarnings": ("function", "library/warnings.html#$"),
        },
    ),
    "numpy": (
        "https://numpy.org/doc/stable/",
        {
            "numpy.ndarray": ("class", "reference/generated/$.html#$"),
            "numpy.quantile": ("function", "reference/generated/$.html#$"),
            "numpy.random.Generator": ("class", "reference/random/generator.html#$"),
            "numpy.random.RandomState": ("class", "reference/random/legacy.html#$"),
        },
    ),
    "sklearn": (
        "https://scikit-learn.org/stable/",
        {
            "sklearn.base.BaseEstimator": ("class", "modules/generated/$.html#$"),
            "sklearn.exceptions.ConvergenceWarning": ("class", "modules/generated/$.html#$"),
            "sklearn.mixture.GaussianMixture": ("class", "modules/generated/$.html#$"),
            "sklearn.mixture.GaussianMixture.sample": (
                "method",
                "modules/generated/sklearn.mixture.GaussianMixture.html#$",
            ),
            "sklearn.mixture.GaussianMixture.score": (
                "method",
                "modules/generated/sklearn.mixture.GaussianMixture.html#$",
            ),
            "sklearn.model_selection.GridSearchCV": ("class", "modules/generated/$.html#$"),
            "sklearn.model_selection.cross_val_score": ("function", "modules/generated/$.html#$"),
            "sklearn.neighbors.KernelDensity": ("class", "modules/generated/$.html#$"),
            "sklearn.pipeline.Pipeline": ("class", "modules/generated/$.html#$"),
            "sklearn.preprocessing.StandardScaler": ("class", "modules/generated/$.html#$"),
        },
    ),
    "torch": (
        "https://docs.pytorch.org/docs/stable/",
        {
            "torch.Tensor": ("class", "tensors.html#$"),
            "torch.dtype": ("class", "tensor_attributes.html#$"),
            "torch.device": ("class", "tensor_attributes.html#$"),
            "torch.Generator": ("class", "generated/$.html#$"),
            # what autodoc writes for a torch.Generator annotation
            "torch._C.Generator": ("class", "generated/torch.Generator.html#torch.Generator"),
            "torch.nn.Module": ("class", "generated/$.html#$"),
            # what autodoc writes for a torch.nn.Module base class
            "torch.nn.modules.module.Module": (
                "class",
                "generated/torch.nn.Module.html#torch.nn.Module",
            ),
        },
    ),
    "normflows": (
        "https://github.com/VincentStimper/normalizing-flows/blob/master/",
        {
            "normflows.NormalizingFlow": ("class", "normflows/core.py"),
            "normflows.core.NormalizingFlow": ("class", "normflows/core.py"),
            "normflows.distributions.BaseDistribution": (
                "class",
                "normflows/distributions/base.py",
            ),
            "normflows.distributions.base.BaseDistribution": (
                "class",
                "normflows/distributions/base.py",
            ),
            "normflows.flows.base.Flow": ("class", "normflows/flows/base.py"),
        },
    ),
}

#: Where the local inventories are written (ignored by git, with docs/_build).
INVENTORY_DIR = HERE / "_build" / "intersphinx"


def _write_inventory(name, objects):
    """Write ``objects`` as a Sphinx inventory (format version 2); return its path."""
    body = "".join(
        f"{obj} py:{role} 1 {location.replace('$', obj)} -\n"
        for obj, (role, location) in sorted(objects.items())
    )
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {name}\n"
        "# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    data = header.encode() + zlib.compress(body.encode())
    path = INVENTORY_DIR / f"{name}.inv"
    if not path.is_file() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(path)


INTERSPHINX_ONLINE = os.environ.get("SKTT_FLOW_DOCS_INTERSPHINX", "") == "online"
intersphinx_mapping = {}
for _name, (_root, _objects) in EXTERNAL_OBJECTS.items():
    _local = _write_inventory(_name, _objects)
    # normflows publishes no objects.inv: always the local table.
    _online = INTERSPHINX_ONLINE and _name != "normflows"
    intersphinx_mapping[_name] = (_root, (None, _local) if _online else _local)
intersphinx_timeout = 10
# Only explicit roles (:class:, :func:, ...) and annotations go through
# intersphinx, never the "any" role or std labels of other projects.
intersphinx_disabled_reftypes = ["std:doc", "std:label"]

# ---------------------------------------------------------------- gallery
# The gallery is built from ../examples (its header: examples/GALLERY_HEADER.rst),
# through a copy in _gallery_src/ (ignored by git) whose script boilerplate is
# hidden from the rendered pages, see _prepare_gallery_sources below.

#: "1" renders the gallery without running the examples.
RUN_GALLERY = os.environ.get("SKTT_FLOW_DOCS_NO_GALLERY_RUN", "") != "1"

EXAMPLES_DIR = HERE.parent / "examples"
GALLERY_SOURCE_DIR = HERE / "_gallery_src"

#: Modules whose imports are script boilerplate when nothing shown on the page uses them.
BOILERPLATE_MODULES = {"argparse", "os", "sys", "pathlib", "matplotlib"}
START_IGNORE = "# sphinx_gallery_start_ignore\n"
END_IGNORE = "# sphinx_gallery_end_ignore\n"
SECTION_LINE = re.compile(r"^(#{20,}|# ?%%)")


def _is_main_guard(node):
    """``if __name__ == "__main__":``."""
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _is_backend_choice(node):
    """An ``if`` whose body only calls ``matplotlib.use(...)`` (draw off-screen)."""
    if not isinstance(node, ast.If) or node.orelse:
        return False
    for statement in node.body:
        call = getattr(statement, "value", None)
        if not (
            isinstance(statement, ast.Expr)
            and isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "use"
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "matplotlib"
        ):
            return False
    return True


def _bound_names(node):
    """Names an import statement binds, or None for statements of other kinds."""
    if isinstance(node, ast.Import):
        return [alias.asname or alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [alias.asname or alias.name for alias in node.names]
    return None


def _imported_module(node):
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[0] for alias in node.names}
    return {(node.module or "").split(".")[0]}


def hide_script_boilerplate(source):
    """``source`` with its script-only code inside sphinx-gallery ignore markers.

    The ``if __name__ == "__main__":`` block (argument parsing and saving the
    figure with ``--output``), the text cell just before it, the choice of an
    off-screen matplotlib backend, and the imports only these use (argparse,
    os, sys, pathlib, matplotlib) are hidden from the rendered page. The code
    still runs when the gallery executes, so the example computes and shows
    exactly what the script does; only comments are added or removed, which is
    checked on the syntax tree. Returns ``source`` unchanged when there is
    nothing to hide or anything is unexpected.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    lines = source.splitlines(keepends=True)
    if not lines or not lines[-1].endswith("\n"):
        return source
    body = tree.body
    hidden = {i for i, node in enumerate(body) if _is_main_guard(node) or _is_backend_choice(node)}
    if not any(_is_main_guard(node) for node in body):
        return source
    used = set()
    for i, node in enumerate(body):
        if i not in hidden and _bound_names(node) is None:
            used.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
    for i, node in enumerate(body):
        names = _bound_names(node)
        if names and _imported_module(node) <= BOILERPLATE_MODULES and not set(names) & used:
            hidden.add(i)

    # Lines (0-based, end exclusive) already inside ignore markers are left alone.
    ignored, inside = set(), False
    for number, line in enumerate(lines):
        if line.strip() == START_IGNORE.strip():
            inside = True
        if inside:
            ignored.add(number)
        if line.strip() == END_IGNORE.strip():
            inside = False

    # Group hidden statements separated only by blank lines into regions.
    regions = []
    for i in sorted(hidden):
        start, end = body[i].lineno - 1, body[i].end_lineno
        if regions and all(not line.strip() for line in lines[regions[-1][1] : start]):
            regions[-1][1] = end
        else:
            regions.append([start, end])
    # The main block's own text cell ("# %%" and comments) goes with it: its
    # "# %%" line is dropped and its comments become part of the hidden code.
    drop = set()
    for region in regions:
        previous = region[0] - 1
        while previous >= 0 and (not lines[previous].strip() or lines[previous].startswith("#")):
            if SECTION_LINE.match(lines[previous]):
                break
            previous -= 1
        is_main = any(_is_main_guard(body[i]) and body[i].lineno - 1 == region[0] for i in hidden)
        if is_main and previous >= 0 and SECTION_LINE.match(lines[previous]):
            drop.add(previous)
            region[0] = previous + 1
    regions = [r for r in regions if not ignored & set(range(r[0], r[1]))]
    if not regions:
        return source

    starts = {start for start, _ in regions}
    ends = {end for _, end in regions}
    out = []
    for number, line in enumerate(lines):
        if number in starts:
            # A marker right under a comment would join that comment's text cell.
            if out and out[-1].strip() and out[-1].lstrip().startswith("#"):
                out.append("\n")
            out.append(START_IGNORE)
        if number in ends:
            out.append(END_IGNORE)
        if number not in drop:
            out.append(line)
    if len(lines) in ends:
        out.append(END_IGNORE)
    hidden_source = "".join(out)
    try:
        same = ast.dump(ast.parse(hidden_source)) == ast.dump(tree)
    except SyntaxError:
        same = False
    return hidden_source if same else source


def _prepare_gallery_sources():
    """Mirror ../examples into _gallery_src/, hiding the script boilerplate."""
    GALLERY_SOURCE_DIR.mkdir(exist_ok=True)
    wanted = set()
    for path in sorted(EXAMPLES_DIR.rglob("*")):
        relative = path.relative_to(EXAMPLES_DIR)
        if "__pycache__" in relative.parts or path.is_dir():
            continue
        wanted.add(relative)
        target = GALLERY_SOURCE_DIR / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".py":
            data = hide_script_boilerplate(path.read_text(encoding="utf-8")).encode("utf-8")
        else:
            data = path.read_bytes()
        if not target.is_file() or target.read_bytes() != data:
            target.write_bytes(data)
    for path in sorted(GALLERY_SOURCE_DIR.rglob("*"), reverse=True):
        relative = path.relative_to(GALLERY_SOURCE_DIR)
        if path.is_file() and relative not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            shutil.rmtree(path)


_prepare_gallery_sources()

sphinx_gallery_conf = {
    "examples_dirs": "_gallery_src",
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
    # "Examples using ..." on the API pages: the class and function templates
    # in _templates/autosummary show a mini-gallery from these files.
    "doc_module": ("sktt_flow",),
    "backreferences_dir": "generated/backreferences",
}


# ------------------------------------------------------------------ setup
#: A numpydoc "name : type" line, e.g. "matrices : buffer of shape (|G|, d, d)".
_TYPE_LINE = re.compile(r"^(\s*\w+\s+:\s+)(.*)$")


def _escape_bars_in_types(app, what, name, obj, options, lines):
    """Escape ``|`` in numpydoc type descriptions, where reST would read ``|G|``
    (the order of a group, in ``sktt_flow.flows.SymmetrizedBase``) as an undefined
    substitution. Runs before numpydoc turns the sections into reST."""
    for i, line in enumerate(lines):
        match = _TYPE_LINE.match(line)
        if match and "|" in match[2] and "`" not in match[2]:
            lines[i] = match[1] + re.sub(r"(?<!\\)\|", r"\\|", match[2])


def setup(app):
    # numpydoc's own handler has the default priority 500: escape before it.
    app.connect("autodoc-process-docstring", _escape_bars_in_types, priority=400)
