"""The package as released: metadata, one version, the documented public API, Binder, CI.

Reads files only (pyproject.toml, docs/, binder/, .ci/run, README.md); builds
and installs nothing (``make package-check`` and ``make binder-check`` do).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import casa_magics
from casa_magics.notebook.magics import CasaMagics

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def test_the_version_is_defined_once_in_the_package():
    assert "version" in PROJECT["dynamic"] and "version" not in PROJECT
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "casa_magics.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+|\.dev\d+|\.post\d+)?", casa_magics.__version__)
    others = [
        path
        for path in [ROOT / "pyproject.toml", ROOT / "docs" / "conf.py", *ROOT.glob("casa_magics/**/*.py")]
        if path.name != "__init__.py" or path.parent.name != "casa_magics"
        if f'"{casa_magics.__version__}"' in path.read_text()
    ]
    assert others == []


def test_release_metadata_is_filled():
    assert PROJECT["license"] == "BSD-3-Clause"  # an SPDX expression
    assert (ROOT / "LICENSE").is_file() and PROJECT["license-files"] == ["LICENSE"]
    assert (ROOT / "CHANGELOG.md").is_file()
    assert "Topic :: Scientific/Engineering :: Astronomy" in PROJECT["classifiers"]
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # the SPDX string says it
    urls = PROJECT["urls"]
    assert {"Homepage", "Documentation", "Source", "Issues", "Changelog"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())


def test_every_public_name_is_in_the_api_reference():
    api = "\n".join(page.read_text() for page in (ROOT / "docs" / "api").glob("*.md"))
    documented = set(re.findall(r"^\.\. (?:auto\w+|py:\w+):: casa_magics\.(\w+)\s*$", api, re.M))
    assert set(casa_magics.__all__) <= documented


def test_every_magic_has_its_help_in_the_docs():
    magics = {name for name in vars(CasaMagics) if name.startswith("casa_") and callable(getattr(CasaMagics, name))}
    shown = set(re.findall(r"^```\{magic-help\} (\w+)$", (ROOT / "docs" / "api" / "magics.md").read_text(), re.M))
    assert magics and shown == magics


def test_the_docs_extra_has_what_the_docs_build_uses():
    conf = (ROOT / "docs" / "conf.py").read_text()
    docs = " ".join(PROJECT["optional-dependencies"]["docs"])
    for module, package in [("myst_nb", "myst-nb"), ("numpydoc", "numpydoc"), ("sphinx_copybutton", "sphinx-copybutton")]:
        assert f'"{module}"' in conf and package in docs
    assert 'html_theme = "pydata_sphinx_theme"' in conf and "pydata-sphinx-theme" in docs
    assert 'nb_execution_mode = "off"' in conf  # nbval runs the notebooks; the site shows their outputs


def test_binder_installs_what_make_install_installs():
    makefile = (ROOT / "Makefile").read_text()
    default_mpi = re.search(r"^MPI \?= (\w+)$", makefile, re.M).group(1)
    post_build = (ROOT / "binder" / "postBuild").read_text()
    installed = re.search(r'pip install [^\n]*"\.\[([\w,]+)\]"', post_build).group(1).split(",")
    assert set(installed) == {"casa", default_mpi}
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() == "python-3.11"


def test_ci_runs_only_what_the_readme_names():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    targets = re.findall(r"^make ([\w-]+)", ci, re.M)
    assert targets[:3] == ["slurm-packages", "browser-packages", "test"]  # system packages first, as root
    assert {"docs", "package-check", "binder-check"} <= set(targets)
    assert [t for t in targets if f"make {t}" not in readme] == []


def test_the_notebooks_in_the_docs_are_the_notebooks():
    linked = sorted(p.name for p in (ROOT / "docs" / "notebooks").glob("*.ipynb"))
    assert linked == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    for name in linked:
        assert (ROOT / "docs" / "notebooks" / name).resolve() == (ROOT / "notebooks" / name).resolve()
