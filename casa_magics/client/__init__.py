"""Runs in the client: the MPICommandClient facade, the dispatcher and its parts, requests, waiting, the client side of gangs."""
