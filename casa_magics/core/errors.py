"""Exception classes of casa_magics.

Shared by every process.
"""

from __future__ import annotations

__all__ = ["CommandRequestError", "ClusterError", "SettingError"]


class CommandRequestError(ValueError):
    """A request was refused before anything was sent.

    Raised for bad arguments to :class:`~casa_magics.MPICommandClient`
    methods: an unknown or lost server, a wrong type, a command that compiles
    neither as an expression nor as statements, parameters that are not a
    dict, an unknown request ID. The message is one line and names the bad
    value. No request is created and nothing changes.

    casampi logs such mistakes and returns None instead; raising makes a
    script stop at the mistake rather than much later on a missing result.
    """


class ClusterError(RuntimeError):
    """The cluster could not be started, reached or stopped.

    The message says why, and for a failed start includes the engines' own
    output (the end of the ``mpiexec`` log).
    """


class SettingError(ValueError):
    """A ``CASA_MAGICS_*`` environment variable holds a value of the wrong kind.

    Raised where the settings are first read (starting or connecting a
    cluster, from the facade or the magics); the one-line message names the
    variable and its value.
    """
