"""Runs in the client, in IPython or Jupyter: the %casa_* magics and the tables and progress they show."""
