"""Shared by every process (the client, the servers, the launchers): errors, settings, argument checks, units, the wire format, tables, the MPI world as a process sees it."""
