"""Turning a casampi command string into something a server can run.

This is pure logic with no cluster in sight: deciding between ``eval`` and
``exec`` mode, recognising the ``task()`` + parameters form, and checking
arguments the way :meth:`MPICommandClient.push_command_request` needs them.

Runs in the client.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from typing import Any

from casa_magics.core.checks import short
from casa_magics.core.errors import CommandRequestError

__all__ = ["CompiledCommand", "compile_command", "check_parameters", "short"]


#: casampi's command that stores its parameters in the server's namespace.
PUSH_COMMAND = "push"


@dataclass(frozen=True)
class CompiledCommand:
    """A command string and how a server should run it.

    Attributes
    ----------
    source : str
        The command as pushed.
    mode : {'eval', 'exec', 'push'}
        ``'eval'`` when the command is one expression (its value becomes the
        response's ``ret``), ``'push'`` for casampi's command ``"push"``
        (the parameters stay in the server's namespace), else ``'exec'``.
    callee : str or None
        For a call with no arguments, like ``"wvrgcal()"`` or
        ``"casatasks.visstat();"``, the source of the called expression
        (``"wvrgcal"``): pushed with parameters, it is called with them as
        keyword arguments. None for any other command.
    """

    source: str
    mode: str
    callee: str | None


def compile_command(command: Any) -> CompiledCommand:
    """Decide how a command string runs, or refuse it.

    Parameters
    ----------
    command : str
        Python source: one expression, or one or more statements.

    Returns
    -------
    CompiledCommand

    Raises
    ------
    CommandRequestError
        If ``command`` is not a non-empty string or compiles neither as an
        expression nor as statements.

    Examples
    --------
    >>> compile_command("1 + 1").mode
    'eval'
    >>> compile_command("x = 1").mode
    'exec'
    >>> compile_command("wvrgcal()  # see (docs)").callee
    'wvrgcal'
    >>> compile_command("x = 1").callee is None
    True
    """
    if not isinstance(command, str):
        raise CommandRequestError(f"command must be a string, got {short(command)}")
    return _compile_text(command)


@functools.lru_cache(maxsize=512)
def _compile_text(command: str) -> CompiledCommand:
    # Scripts push the same few command strings many times: parse each once.
    if not command.strip():
        raise CommandRequestError(f"command must not be empty, got {command!r}")
    if command == PUSH_COMMAND:
        return CompiledCommand(command, "push", None)
    try:
        tree = ast.parse(command, mode="eval")
    except SyntaxError:
        pass
    else:
        return CompiledCommand(command, "eval", _bare_callee(command, tree.body))
    try:
        module = ast.parse(command, mode="exec")
    except SyntaxError as error:
        raise CommandRequestError(
            f"command {short(command)} is not valid Python: {error.msg} (line {error.lineno})"
        ) from None
    # "f();" is one expression statement: still the call form.
    only = module.body[0] if len(module.body) == 1 else None
    callee = _bare_callee(command, only.value) if isinstance(only, ast.Expr) else None
    return CompiledCommand(command, "exec", callee)


def _bare_callee(command: str, node: ast.expr) -> str | None:
    """Source of the function a bare call ``f()`` calls, read from the syntax tree."""
    if not isinstance(node, ast.Call) or node.args or node.keywords:
        return None
    return ast.get_source_segment(command, node.func)


def check_parameters(parameters: Any) -> dict[str, Any] | None:
    """Check the ``parameters`` argument of a push.

    Parameters
    ----------
    parameters : dict or None
        Names to place in the server's namespace for one command.

    Returns
    -------
    dict or None
        A shallow copy, so later changes by the caller do not leak in.

    Raises
    ------
    CommandRequestError
        If ``parameters`` is not a dict, or a key is not a valid Python name.
    """
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise CommandRequestError(f"parameters must be a dict, got {short(parameters)}")
    for key in parameters:
        if not isinstance(key, str) or not key.isidentifier():
            raise CommandRequestError(f"parameter name must be a Python identifier, got {short(key)}")
    return dict(parameters)
