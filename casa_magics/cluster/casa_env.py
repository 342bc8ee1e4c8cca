"""Offline CASA set-up for the engines: site config, environment, log file.

CASA (``casatools``/``casatasks``) reads its configuration through
``casaconfig`` once, when ``casaconfig.config`` is first imported: first the
site config file named by ``CASASITECONFIG`` (an absolute path of a Python
file), then the user's ``~/.casa/config.py``, which wins. The site config
written here points ``measurespath`` at the ``casadata`` package, switches
off every automatic download and puts the CASA log into the run directory,
never into the current directory.

The log file name comes from the environment variable
``CASA_MAGICS_CASA_LOGFILE`` when CASA is imported. Its value may contain
``{server}`` (the value of ``CASA_MAGICS_SERVER_ID``), ``{rank}`` (the MPI
rank) and ``{pid}``; servers get their ID before any command runs, so before
CASA can be imported there.

Nothing here imports ``casatools``, so this module imports fine without the
``casa`` extra.

Runs in the client, which hands the set-up to the servers it starts or prepares.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Mapping

__all__ = [
    "LOGFILE_ENV",
    "SERVER_LOG_TEMPLATE",
    "SITE_CONFIG_NAME",
    "MISSING_CASA_MESSAGE",
    "casa_available",
    "require_casa",
    "casadata_path",
    "site_config_text",
    "write_site_config",
    "casa_environment",
    "prepare_client_process",
    "expand_logfile",
]

#: Environment variable holding the CASA log file name (template) of an engine.
LOGFILE_ENV = "CASA_MAGICS_CASA_LOGFILE"

#: File name of the site config written into the run directory.
SITE_CONFIG_NAME = "casasiteconfig.py"

#: Message of the ImportError raised by :func:`require_casa`.
MISSING_CASA_MESSAGE = 'casatools is not installed: run "pip install casa_magics[casa]" (or "make install")'

#: Log file name of each server in the run directory (``{server}`` is its ID).
SERVER_LOG_TEMPLATE = "casa-server-{server}.log"

#: Environment variables that hold the MPI rank, by launcher.
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID")

# The site config is executed by casaconfig, not imported, and must work
# without casa_magics, so it carries its own copy of expand_logfile().
_SITE_CONFIG_TEMPLATE = '''\
# CASA site config written by casa_magics.cluster.casa_env: offline CASA using the
# casadata package; no automatic data or measures updates; the log goes to
# the file named by ${logfile_env} (or into the run directory).
# casaconfig executes this file, then ~/.casa/config.py, which wins.
import os as _os

{measures}
measures_auto_update = False
data_auto_update = False
log2term = False
nologfile = False


def _casa_magics_logfile():
    template = _os.environ.get({logfile_env!r}) or {fallback!r}
    rank = next((_os.environ[v] for v in {rank_vars!r} if v in _os.environ), "0")
    server = _os.environ.get("CASA_MAGICS_SERVER_ID") or "pid%d" % _os.getpid()
    return (template.replace("{{server}}", server).replace("{{rank}}", rank)
            .replace("{{pid}}", str(_os.getpid())))


logfile = _casa_magics_logfile()
'''

def casa_available() -> bool:
    """Tell whether the ``casa`` extra is installed, without importing it.

    Returns
    -------
    bool
        True when both ``casatools`` and ``casatasks`` can be imported.
    """
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("casatools", "casatasks"))
    except (ImportError, ValueError):
        return False


def require_casa() -> None:
    """Raise a one-line ImportError when the ``casa`` extra is missing.

    Raises
    ------
    ImportError
        With :data:`MISSING_CASA_MESSAGE` when ``casatools`` or
        ``casatasks`` is not installed.
    """
    if not casa_available():
        raise ImportError(MISSING_CASA_MESSAGE)


def casadata_path() -> str | None:
    """Return the data directory of the ``casadata`` package.

    Returns
    -------
    str or None
        ``casadata.datapath`` (it holds ``geodetic/IERSeop2000`` and the
        demo data), or None when ``casadata`` is not installed.
    """
    try:
        import casadata  # small: defines datapath only, no CASA libraries
    except ImportError:
        return None
    return str(casadata.datapath)


def site_config_text(
    run_dir: str | os.PathLike[str], measurespath: str | None = None, log_name: str = SERVER_LOG_TEMPLATE
) -> str:
    """Return the text of the CASA site config for a run directory.

    Parameters
    ----------
    run_dir : str or path-like
        Directory for log files when ``CASA_MAGICS_CASA_LOGFILE`` is unset.
    measurespath : str, optional
        CASA data directory; default :func:`casadata_path`. When neither is
        known, ``measurespath`` is left at the CASA default, still without
        downloads.
    log_name : str
        Log file name in ``run_dir`` used when ``CASA_MAGICS_CASA_LOGFILE``
        is unset (default ``casa-server-{server}.log``).

    Returns
    -------
    str
        Python source for ``CASASITECONFIG``.
    """
    measurespath = measurespath or casadata_path()
    if measurespath:
        measures = f"measurespath = {measurespath!r}\ndatapath = [measurespath]"
    else:
        measures = "# casadata is not installed: measurespath keeps the CASA default"
    fallback = str(Path(run_dir).resolve() / log_name)
    return _SITE_CONFIG_TEMPLATE.format(
        measures=measures, logfile_env=LOGFILE_ENV, fallback=fallback, rank_vars=_RANK_VARIABLES
    )


#: Values this module put into os.environ itself (so they are not mistaken for the user's).
_placed_here: set[str] = set()


def _users_own(name: str) -> str | None:
    """The user's value of an environment variable, ignoring values placed by this module."""
    value = os.environ.get(name)
    return None if value is None or value in _placed_here else value


def write_site_config(
    run_dir: str | os.PathLike[str], name: str = SITE_CONFIG_NAME, log_name: str = SERVER_LOG_TEMPLATE
) -> Path:
    """Write the site config into the run directory, unless the user has one.

    Parameters
    ----------
    run_dir : str or path-like
        Directory to write the file into; created if missing.
    name : str
        File name (default ``casasiteconfig.py``).
    log_name : str
        Log file name used when ``CASA_MAGICS_CASA_LOGFILE`` is unset.

    Returns
    -------
    pathlib.Path
        The user's own ``CASASITECONFIG`` when that variable is set (nothing
        is written then), otherwise the absolute path of the written file.
    """
    user_config = _users_own("CASASITECONFIG")
    if user_config:
        return Path(user_config)
    directory = Path(run_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(site_config_text(directory, log_name=log_name))
    return path


def casa_environment(run_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Return the environment variables an engine needs before it imports CASA.

    Writes the site config (see :func:`write_site_config`). A variable the
    user already set keeps the user's value.

    Parameters
    ----------
    run_dir : str or path-like
        The cluster's run directory.

    Returns
    -------
    dict of str to str
        ``CASASITECONFIG`` (absolute path), ``OMP_NUM_THREADS`` (``"1"``),
        ``MPLBACKEND`` (``"Agg"``) and ``CASA_MAGICS_CASA_LOGFILE``
        (``<run_dir>/casa-server-{server}.log``; ``{server}`` is replaced by
        ``CASA_MAGICS_SERVER_ID`` when CASA is imported).
    """
    directory = Path(run_dir).resolve()
    defaults = {
        "CASASITECONFIG": str(write_site_config(directory)),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        LOGFILE_ENV: str(directory / SERVER_LOG_TEMPLATE),
    }
    return {name: _users_own(name) or value for name, value in defaults.items()}


def prepare_client_process(run_dir: str | os.PathLike[str]) -> Path | None:
    """Let this (client or kernel) process import CASA offline too.

    Sets ``CASASITECONFIG`` to a site config like the servers' (unless the
    user set one), with the log going to ``<run_dir>/casa-client.log``.
    Does nothing when the ``casa`` extra is missing or CASA's configuration
    was already read in this process.

    Parameters
    ----------
    run_dir : str or path-like
        The run directory (see :func:`casa_magics.cluster.session.default_run_dir`).

    Returns
    -------
    pathlib.Path or None
        The site config in effect, or None when nothing was done.
    """
    if not casa_available() or "casaconfig.config" in sys.modules:
        return None
    if _users_own("CASASITECONFIG"):
        return Path(os.environ["CASASITECONFIG"])
    path = str(write_site_config(run_dir, name="casasiteconfig-client.py", log_name="casa-client.log"))
    _placed_here.add(path)
    os.environ["CASASITECONFIG"] = path
    return Path(path)


def expand_logfile(template: str, environ: Mapping[str, str] | None = None) -> str:
    """Fill ``{server}``, ``{rank}`` and ``{pid}`` in a log file template.

    Same rules as the site config: ``{server}`` is ``CASA_MAGICS_SERVER_ID``
    (or ``pid<pid>`` when unset), ``{rank}`` the MPI rank (or ``0``).

    Parameters
    ----------
    template : str
        File name, possibly with placeholders.
    environ : mapping, optional
        Environment to read; default ``os.environ``.

    Returns
    -------
    str
        The file name with placeholders replaced.
    """
    environ = os.environ if environ is None else environ
    rank = next((environ[v] for v in _RANK_VARIABLES if v in environ), "0")
    server = environ.get("CASA_MAGICS_SERVER_ID") or f"pid{os.getpid()}"
    return template.replace("{server}", server).replace("{rank}", rank).replace("{pid}", str(os.getpid()))
