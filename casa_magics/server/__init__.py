"""Runs on the servers (the ipyparallel engines): the request runner, the gang member, the memory watch, the keeper, serial tasks. Imports only casa_magics.core."""
