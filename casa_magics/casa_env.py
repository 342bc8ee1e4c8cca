"""Temporary stand-in; replaced by the CASA set-up module."""
import os
def casa_environment(run_dir):
    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
