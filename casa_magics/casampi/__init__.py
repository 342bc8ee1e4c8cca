"""Runs in the client: casampi's names (enable_casampi, MPIInterface, the mpi4casa alias) on top of the client side."""
