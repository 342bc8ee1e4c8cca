"""What each process imports: a server loads only what it runs; the public names stay where they were."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import casa_magics


def _modules_after(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_server_imports_only_the_server_and_core_packages():
    loaded = _modules_after("import casa_magics.server.runner")
    assert not [m for m in loaded if m.split(".")[0] in ("ipyparallel", "IPython", "zmq")]
    ours = {m for m in loaded if m.startswith("casa_magics.")}
    assert ours and all(m.startswith(("casa_magics.server", "casa_magics.core")) for m in ours - {
        "casa_magics.casampi", "casa_magics.casampi.mpi4casa_alias"}), sorted(ours)


def test_importing_the_package_imports_none_of_its_modules():
    loaded = _modules_after("import casa_magics")
    assert [m for m in loaded if m.startswith("casa_magics.")] == ["casa_magics.casampi", "casa_magics.casampi.mpi4casa_alias"]


@pytest.mark.parametrize("name", casa_magics.__all__)
def test_every_public_name_is_there_and_listed(name):
    assert getattr(casa_magics, name) is not None
    assert name in dir(casa_magics)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match=r"^module 'casa_magics' has no attribute 'bogus'$"):
        casa_magics.bogus


def test_the_seeds_mpi4casa_imports_resolve_when_used():
    loaded = _modules_after(
        "import casa_magics\nfrom mpi4casa.MPICommandClient import MPICommandClient\n"
        "assert MPICommandClient is casa_magics.MPICommandClient"
    )
    assert "casa_magics.client.client" in loaded


def test_the_version_is_defined_once_and_installed_as_such():
    from importlib.metadata import version

    assert version("casa_magics") == casa_magics.__version__
