"""Pure logic: the launcher command line, for every MPI and option, with no mpiexec."""

from __future__ import annotations

import pytest

from casa_magics.launcher import KEEPER_SCRIPT, launch_command, plan_launch

PY = "/venv/bin/python"
ENGINE = [PY, "-m", "ipyparallel.engine"]
KEEPER = [PY, "-I", KEEPER_SCRIPT]


@pytest.mark.parametrize(
    ("hydra", "extra", "hostfile", "expected_args"),
    [
        (True, [], None, ["-disable-auto-cleanup"]),
        (False, [], None, []),
        (True, [], "hosts.txt", ["-disable-auto-cleanup", "-f", "hosts.txt"]),
        (False, [], "hosts.txt", ["--hostfile", "hosts.txt"]),
        (True, ["-ppn", "2"], "h", ["-disable-auto-cleanup", "-ppn", "2", "-f", "h"]),
        (False, ["--oversubscribe", "--bind-to", "none"], None, ["--oversubscribe", "--bind-to", "none"]),
    ],
)
def test_launcher_arguments_for_each_mpi(hydra, extra, hostfile, expected_args):
    plan = plan_launch("/bin/mpiexec", hydra=hydra, extra_args=extra, hostfile=hostfile, python=PY)
    assert plan.mpi_cmd == ["/bin/mpiexec"]
    assert plan.mpi_args == expected_args
    assert plan.engine_cmd == KEEPER + ENGINE


def test_the_whole_command_line_is_what_ipyparallel_runs():
    plan = plan_launch("/bin/mpiexec", hydra=True, hostfile="h", python=PY, engine_command=["wrap", "engine"])
    assert launch_command(plan, 3, ["--profile-dir=/p"]) == [
        "/bin/mpiexec", "-n", "3", "-disable-auto-cleanup", "-f", "h", *KEEPER, "wrap", "engine", "--mpi", "--profile-dir=/p",
    ]


def test_the_keeper_imports_only_the_standard_library():
    source = open(KEEPER_SCRIPT).read()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "signal", "subprocess", "sys", "ctypes"}
