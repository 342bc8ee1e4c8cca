"""Runs in the client: starting, connecting, replacing, re-attaching and stopping clusters (embedded, ipcluster, Slurm), the server map, the run directory, CASA's environment."""
