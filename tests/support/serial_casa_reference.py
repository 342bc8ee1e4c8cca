"""``python serial_casa_reference.py WORKDIR``: the serial run the casampi tests compare against.

Runs in its own process, where casampi is NOT enabled, on the plain
MeasurementSet: the same tasks, with the same parameters, that
``tests/test_casampi_tasks.py`` runs on a Multi-MS through the servers
(the parameters come from ``casampi_pipeline.py`` beside this file).
Writes ``WORKDIR/ngc5921.ms`` (the untouched data both runs start from),
``WORKDIR/serial.ms`` (flagged, modelled, calibrated), the gain table, the
split and the images, and the tasks' return values as ``serial.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(__file__))

import casampi_pipeline as pipeline  # noqa: E402

import casa_magics  # noqa: E402
import casa_magics.cluster.casa_env  # noqa: E402


def main(workdir: str) -> None:
    os.chdir(workdir)
    casa_magics.cluster.casa_env.prepare_client_process(workdir)
    assert not casa_magics.casampi_enabled()
    import casadata
    import casatasks

    fits = os.path.join(casadata.datapath, "demo", "NGC5921.fits")
    casatasks.importuvfits(fitsfile=fits, vis=pipeline.BASE_MS)
    shutil.copytree(pipeline.BASE_MS, "serial.ms")
    results = pipeline.calibrate(casatasks, "serial.ms", pipeline.GAIN_TABLE, make_gain_table=True)
    casatasks.split(vis="serial.ms", outputvis="serial_split.ms", **pipeline.SPLIT)
    results["tclean_mfs"] = casatasks.tclean(vis="serial.ms", imagename="serial_mfs", parallel=False, **pipeline.MFS)
    results["tclean_cube"] = casatasks.tclean(vis="serial.ms", imagename="serial_cube", parallel=False, **pipeline.CUBE)
    with open("serial.json", "w") as out:
        json.dump(pipeline.plain(results), out)


if __name__ == "__main__":
    main(sys.argv[1])
