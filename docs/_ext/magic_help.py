"""A Sphinx directive that shows a ``%casa_*`` magic's help as IPython shows it.

``%casa_push?`` prints the magic function's docstring, which IPython's
``magic_arguments`` completes with the usage and the options. This directive
renders that same text, read from the function, so the page and the help
cannot drift apart::

    ```{magic-help} casa_push
    ```

Importing the magics module starts nothing (no cluster, no IPython shell).
"""

from __future__ import annotations

import inspect

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.util.nodes import make_id


class MagicHelp(Directive):
    """Insert the help of one magic of :class:`casa_magics.notebook.magics.CasaMagics`."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        from casa_magics.notebook.magics import CasaMagics

        name = self.arguments[0]
        function = getattr(CasaMagics, name, None)
        if function is None or not callable(function):
            raise self.error(f"CasaMagics has no magic {name!r}")
        doc = inspect.cleandoc(function.__doc__ or "")
        # magic_arguments puts the usage under a reST "::" line; the literal block shows it as is.
        if doc.startswith("::\n"):
            usage, _, rest = doc[3:].strip("\n").partition("\n")
            doc = f"{usage.strip()}\n{rest}"
        section_id = make_id(self.state.document.settings.env, self.state.document, "magic", name)
        target = nodes.target("", "", ids=[section_id])
        block = nodes.literal_block(doc, doc)
        block["language"] = "none"
        return [target, block]


def setup(app):
    app.add_directive("magic-help", MagicHelp)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
