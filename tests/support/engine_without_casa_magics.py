"""An ipyparallel engine on which ``import casa_magics`` fails, as on a node where it was never installed."""

import sys
from importlib.abc import MetaPathFinder


class _Missing(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "casa_magics" or name.startswith("casa_magics."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Missing())

from ipyparallel.engine.app import main  # noqa: E402

sys.exit(main())
