"""The NGC 5921 steps the casampi tests run twice: serially on an MS, and on a Multi-MS.

One definition of every task's parameters, so the serial reference
(``serial_casa_reference.py``, its own process) and the parallel run (the
tests, with casampi enabled) cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BASE_MS = "ngc5921.ms"
GAIN_TABLE = "ngc5921.G"

FLAG_MANUAL = dict(mode="manual", antenna="5")
SETJY = dict(field="0", standard="Perley-Butler 2017", usescratch=True)
GAINCAL = dict(field="0,1", solint="inf", refant="14", gaintype="G", calmode="ap")
APPLYCAL = dict(field="", calwt=False)
SPLIT = dict(field="2", spw="0:5~55", datacolumn="corrected")
MFS = dict(field="2", spw="0:5~55", specmode="mfs", imsize=128, cell="15arcsec", niter=100, datacolumn="corrected")
CUBE = dict(
    field="2", spw="0:20~27", specmode="cube", imsize=64, cell="15arcsec", niter=20, datacolumn="corrected"
)


def calibrate(casatasks: Any, vis: str, gain_table: str, make_gain_table: bool) -> dict[str, Any]:
    """Flag, set the flux model, (make and) apply the gains; return the tasks' results."""
    results = {"flag_manual": casatasks.flagdata(vis=vis, **FLAG_MANUAL)}
    results["flag_summary"] = casatasks.flagdata(vis=vis, mode="summary")
    results["setjy"] = casatasks.setjy(vis=vis, **SETJY)
    if make_gain_table:
        casatasks.gaincal(vis=vis, caltable=gain_table, **GAINCAL)
    results["applycal"] = casatasks.applycal(vis=vis, gaintable=[gain_table], **APPLYCAL)
    return results


def plain(value: Any) -> Any:
    """Return values as JSON can hold them (numpy arrays and scalars become lists and numbers)."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def untimed(result: Any) -> Any:
    """A task's return value without its timings (which differ from run to run)."""
    return {k: v for k, v in plain(result).items() if "time" not in k}


def serial_results(workdir: Any) -> dict[str, Any]:
    """The return values of the serial reference run in ``workdir``."""
    import json
    import os

    with open(os.path.join(workdir, "serial.json")) as saved:
        return json.load(saved)


def pixels(image: str) -> np.ndarray:
    """All pixels of a CASA image."""
    from casatools import image as image_tool

    ia = image_tool()
    ia.open(image)
    try:
        return ia.getchunk()
    finally:
        ia.close()


#: Columns that together name a row, whatever order an MS or a Multi-MS lists its rows in.
ROW_KEY = ("TIME", "ANTENNA1", "ANTENNA2", "DATA_DESC_ID", "FIELD_ID")


def column(vis: str, name: str) -> np.ndarray:
    """A column of every row, in a fixed row order (an MMS lists rows sub-MS by sub-MS)."""
    from casatools import table

    tb = table()
    tb.open(vis)
    try:
        keys = [tb.getcol(key) for key in ROW_KEY]
        values = tb.getcol(name)
    finally:
        tb.close()
    order = np.lexsort(keys[::-1])
    return values[..., order]
