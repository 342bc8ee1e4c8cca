"""Pure logic: the launcher command line, for every MPI and option, with no mpiexec."""

from __future__ import annotations

import pytest

from casa_magics.cluster.launcher import KEEPER_SCRIPT, launch_command, open_mpi_defaults, plan_launch

PY = "/venv/bin/python"
OMPI = ["--oversubscribe", "--bind-to", "none", "--enable-recovery"]
ENGINE = [PY, "-m", "ipyparallel.engine"]
KEEPER = [PY, "-I", KEEPER_SCRIPT]


@pytest.mark.parametrize(
    ("hydra", "extra", "hostfile", "expected_args"),
    [
        (True, [], None, ["-disable-auto-cleanup"]),
        (False, [], None, OMPI),
        (True, [], "hosts.txt", ["-disable-auto-cleanup", "-f", "hosts.txt"]),
        (False, [], "hosts.txt", OMPI + ["--hostfile", "hosts.txt"]),
        (True, ["-ppn", "2"], "h", ["-disable-auto-cleanup", "-ppn", "2", "-f", "h"]),
        (False, ["--oversubscribe", "--bind-to", "core"], None, ["--enable-recovery", "--oversubscribe", "--bind-to", "core"]),
        (False, ["--map-by", "ppr:2:node"], None, ["--bind-to", "none", "--enable-recovery", "--map-by", "ppr:2:node"]),
    ],
)
def test_launcher_arguments_for_each_mpi(hydra, extra, hostfile, expected_args):
    plan = plan_launch("/bin/mpiexec", hydra=hydra, extra_args=extra, hostfile=hostfile, python=PY, as_root=False)
    assert plan.mpi_cmd == ["/bin/mpiexec"]
    assert plan.mpi_args == expected_args
    assert plan.engine_cmd == KEEPER + ENGINE


def test_the_whole_command_line_is_what_ipyparallel_runs():
    plan = plan_launch("/bin/mpiexec", hydra=True, hostfile="h", python=PY, engine_command=["wrap", "engine"])
    assert launch_command(plan, 3, ["--profile-dir=/p"]) == [
        "/bin/mpiexec", "-n", "3", "-disable-auto-cleanup", "-f", "h", *KEEPER, "wrap", "engine", "--mpi", "--profile-dir=/p",
    ]


def test_open_mpi_is_allowed_to_run_as_root_only_when_it_must():
    assert "--allow-run-as-root" in open_mpi_defaults([], as_root=True)
    assert "--allow-run-as-root" not in open_mpi_defaults([], as_root=False)
    assert open_mpi_defaults(["--allow-run-as-root"], as_root=True).count("--allow-run-as-root") == 0


def test_the_keeper_imports_only_the_standard_library():
    source = open(KEEPER_SCRIPT).read()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "os", "signal", "subprocess", "sys", "ctypes"}


@pytest.mark.parametrize(
    ("world", "local", "told", "kept"),
    [("3", "1", "2", "1"), ("3", "2", "2", None), ("1", "1", "1", None), (None, None, None, None)],
)
def test_a_rank_alone_on_its_node_is_told_it_has_a_neighbour(world, local, told, kept):
    from casa_magics.server.engine_keeper import gang_ready_environment

    environ = {"PATH": "/bin"}
    environ.update({k: v for k, v in (("OMPI_COMM_WORLD_SIZE", world), ("OMPI_COMM_WORLD_LOCAL_SIZE", local)) if v})
    env = gang_ready_environment(environ)
    assert env.get("OMPI_COMM_WORLD_LOCAL_SIZE") == told
    assert env.get("CASA_MAGICS_LOCAL_SIZE") == kept
    assert env["PATH"] == "/bin" and environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") == local  # a copy, the rest as it was
