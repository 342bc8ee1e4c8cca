"""Settings read from ``CASA_MAGICS_*`` environment variables, in one place.

Every tunable of the package has a default here; an environment variable of
the same name (upper case, ``CASA_MAGICS_`` prefix) overrides it. The values
are read when :func:`load_settings` is called, so a test or a notebook can set
a variable before starting a cluster.

Shared by every process (the client reads the settings; servers read a few).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field

from casa_magics.core.checks import controller_address
from casa_magics.core.errors import SettingError
from casa_magics.core.units import parse_memory_size

__all__ = ["Settings", "load_settings", "default_engine_count"]

_PREFIX = "CASA_MAGICS_"


def default_engine_count() -> int:
    """Number of servers an embedded cluster gets when none is asked for.

    One per core, but at least 2 so that a casampi script that expects a
    client and two servers works on a laptop.
    """
    return max(2, os.cpu_count() or 2)


@dataclass(frozen=True)
class Settings:
    """Snapshot of the ``CASA_MAGICS_*`` environment.

    Attributes
    ----------
    engines : int
        Servers in an embedded cluster (``CASA_MAGICS_ENGINES``).
    start_timeout : float
        Seconds to wait for all engines to register (``CASA_MAGICS_START_TIMEOUT``).
    server_timeout : float
        Seconds a busy server may go without a sign of life before its requests
        are answered with status ``'timeout'`` (``CASA_MAGICS_SERVER_TIMEOUT``).
    mpiexec : str
        The MPI launcher command (``CASA_MAGICS_MPIEXEC``).
    mpiexec_args : list of str
        Extra arguments for the launcher, split like a shell would
        (``CASA_MAGICS_MPIEXEC_ARGS``), e.g. ``"-f hosts.txt"``.
    hostfile : str or None
        A hostfile handed to the launcher (``CASA_MAGICS_HOSTFILE``).
    controller_ip : str or None
        The address the controller listens on when compute nodes must reach
        it (a Slurm job, a multi-node allocation); default: what this host's
        name resolves to (``CASA_MAGICS_CONTROLLER_IP``).
    profile, cluster_id, connection_file : str or None
        When set, connect to that running cluster instead of starting one
        (``CASA_MAGICS_PROFILE``, ``CASA_MAGICS_CLUSTER_ID``,
        ``CASA_MAGICS_CONNECTION_FILE``).
    run_dir : str or None
        Where servers write logs and the CASA site config
        (``CASA_MAGICS_RUN_DIR``; default a fresh temporary directory).
    allow_no_mpi : bool
        Fall back to plain local engines when MPI does not work
        (``CASA_MAGICS_ALLOW_NO_MPI``, default on).
    keep_run_dir : bool
        Keep the temporary run directory at exit (``CASA_MAGICS_KEEP_RUN_DIR``,
        default off; it is kept anyway when a failure left logs to read).
    import_casa : bool
        Import CASA on every server in the background as soon as the servers
        are up, when the ``casa`` extra is installed
        (``CASA_MAGICS_IMPORT_CASA``, default on).
    memory_limit : int or None
        Resident memory a server may use, in bytes, before its running request
        is ended (``CASA_MAGICS_MEMORY_LIMIT``, e.g. ``4GB``; default: CASA's
        own ``.casarc`` setting, else none). See :mod:`casa_magics.server.memory`.
    replace_lost : bool
        Replace a lost server of an embedded cluster with a new one under the
        same server ID (``CASA_MAGICS_REPLACE_LOST``, default on). See
        :mod:`casa_magics.cluster.replacement`.
    keep_cluster : bool
        Start embedded clusters detached: they outlive this process and a
        later one re-attaches (``CASA_MAGICS_KEEP_CLUSTER``, default off).
    detached_dir : str or None
        Where this user's detached clusters are noted
        (``CASA_MAGICS_DETACHED_DIR``, default ``~/.casa_magics/detached``).
        See :mod:`casa_magics.cluster.detached`.
    """

    engines: int = field(default_factory=default_engine_count)
    start_timeout: float = 60.0
    server_timeout: float = 30.0
    mpiexec: str = "mpiexec"
    mpiexec_args: list[str] = field(default_factory=list)
    hostfile: str | None = None
    controller_ip: str | None = None
    profile: str | None = None
    cluster_id: str | None = None
    connection_file: str | None = None
    run_dir: str | None = None
    allow_no_mpi: bool = True
    import_casa: bool = True
    keep_run_dir: bool = False
    memory_limit: int | None = None
    replace_lost: bool = True
    keep_cluster: bool = False
    detached_dir: str | None = None

    @property
    def wants_connection(self) -> bool:
        """True when the environment names a running cluster to connect to."""
        return bool(self.profile or self.cluster_id or self.connection_file)


def _positive(name: str, text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise SettingError(f"{_PREFIX}{name} must be a positive number, got {text!r}") from None
    if value <= 0:
        raise SettingError(f"{_PREFIX}{name} must be a positive number, got {text!r}")
    return value


def _flag(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingError(f"{_PREFIX}{name} must be 0 or 1, got {text!r}")


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read the ``CASA_MAGICS_*`` variables.

    Parameters
    ----------
    environ : dict, optional
        Mapping to read instead of :data:`os.environ`.

    Returns
    -------
    Settings

    Raises
    ------
    SettingError
        If a variable holds a value of the wrong kind; the one-line message
        names the variable and the value.
    """
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(_PREFIX + name)
        return value if value not in (None, "") else None

    values: dict[str, object] = {}
    if (text := get("ENGINES")) is not None:
        values["engines"] = _positive("ENGINES", text, int)
    for name in ("START_TIMEOUT", "SERVER_TIMEOUT"):
        if (text := get(name)) is not None:
            values[name.lower()] = _positive(name, text, float)
    if (text := get("MPIEXEC")) is not None:
        values["mpiexec"] = text
    if (text := get("MPIEXEC_ARGS")) is not None:
        values["mpiexec_args"] = shlex.split(text)
    for name in ("ALLOW_NO_MPI", "IMPORT_CASA", "KEEP_RUN_DIR", "REPLACE_LOST", "KEEP_CLUSTER"):
        if (text := get(name)) is not None:
            values[name.lower()] = _flag(name, text)
    if (text := get("MEMORY_LIMIT")) is not None:
        try:
            values["memory_limit"] = parse_memory_size(text)
        except ValueError:
            raise SettingError(f"{_PREFIX}MEMORY_LIMIT must be a size like 4GB, 500MB or a number of bytes, got {text!r}") from None
    for name in ("HOSTFILE", "PROFILE", "CLUSTER_ID", "CONNECTION_FILE", "RUN_DIR", "CONTROLLER_IP", "DETACHED_DIR"):
        if (text := get(name)) is not None:
            values[name.lower()] = text
    if "controller_ip" in values:
        try:
            controller_address(values["controller_ip"])
        except ValueError:
            raise SettingError(f"{_PREFIX}CONTROLLER_IP must be an IP address (or '*'), got {values['controller_ip']!r}") from None
    return Settings(**values)
