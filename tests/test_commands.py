"""Pure logic: how a command string is compiled, and which callable a bare call names."""

from __future__ import annotations

import pytest

from casa_magics.client.commands import compile_command
from casa_magics.core.errors import CommandRequestError


@pytest.mark.parametrize(
    ("command", "mode", "callee"),
    [
        ("wvrgcal()", "eval", "wvrgcal"),
        ("f()  # see (docs)", "eval", "f"),
        ("f( )", "eval", "f"),
        ("f();", "exec", "f"),
        ("(f)()", "eval", "f"),
        ("casatasks.visstat()", "eval", "casatasks.visstat"),
        ("g('a (b)')()", "eval", "g('a (b)')"),
        ("f(1)", "eval", None),
        ("f(vis='x')", "eval", None),
        ("x = f()", "exec", None),
        ("f()\ng()", "exec", None),
        ("1 + 1", "eval", None),
    ],
)
def test_the_callee_is_read_from_the_syntax_tree(command, mode, callee):
    compiled = compile_command(command)
    assert (compiled.mode, compiled.callee) == (mode, callee)


def test_invalid_python_is_refused_with_its_line():
    with pytest.raises(CommandRequestError, match=r"command 'f\(\(' is not valid Python: .* \(line 1\)"):
        compile_command("f((")
