"""Sphinx configuration of the casa_magics documentation (``make docs``).

The build is offline: no intersphinx inventories are fetched and the notebooks
are rendered with the outputs stored in them (nbval runs them in ``make test``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # the checkout's package, also without an install

# Documenting the package must never bring a cluster up. Nothing in the build
# should try, and if something did, these make it fail at once (no launcher, no
# fallback to plain local engines) instead of starting processes.
os.environ["CASA_MAGICS_MPIEXEC"] = "/nonexistent/the-docs-build-starts-no-cluster"
os.environ["CASA_MAGICS_ALLOW_NO_MPI"] = "0"
os.environ["CASA_MAGICS_IMPORT_CASA"] = "0"

import casa_magics  # noqa: E402

project = "casa_magics"
author = "The casa_magics developers"
copyright = "2026, The casa_magics developers"
release = casa_magics.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "myst_nb",
    "sphinx_copybutton",
    "magic_help",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "requirements.txt"]
root_doc = "index"
# A fence without a language (benchmark tables, command output) is shown as is.
highlight_language = "none"
# The right-hand contents list of the API pages: method names without their class.
toc_object_entries_show_parents = "hide"

# --- MyST and the notebooks -------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# The notebooks are shown with their stored outputs: nbval runs them in `make test`.
nb_execution_mode = "off"
nb_merge_streams = True
# Cell outputs carry HTML tables from the magics' display; keep them as they are.
nb_render_markdown_format = "commonmark"

# --- API reference ------------------------------------------------------------
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # the numpydoc sections say the types, in words a reader knows
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# Nitpicky where the API is ours (`make docs` passes -n). The references below
# are to other projects' objects: with no intersphinx inventories fetched at
# build time (the build is offline), Sphinx cannot resolve them, so they are
# ignored by name here rather than by turning nitpicky off.
nitpick_ignore_regex = [
    (r"py:.*", r"(ipyparallel|ipp|IPython|threading|os|psutil|numpy|mpi4py|types|collections\.abc)\..*"),
    (r"py:class", r"(TimeoutError|KeyboardInterrupt|RuntimeError|ValueError|Exception|BaseException)"),
    (r"py:exc", r"(TimeoutError|KeyboardInterrupt|RuntimeError|ValueError|Exception|BaseException)"),
]

# --- HTML -----------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"casa_magics {release}"
html_static_path = ["_static"]
html_css_files = ["casa_magics.css"]
html_theme_options = {
    "github_url": "https://github.com/casa-magics/casa_magics",
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
html_show_sourcelink = False
# Pages with no sub-pages: no empty "Section Navigation" column.
html_sidebars = {"getting-started": [], "guides/design": [], "changelog": []}

# sphinx-copybutton: copy the command, not the prompt or the output.
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = False
