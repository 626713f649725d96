"""Checks of the command line's inputs, made before any work is done.

Each failed check raises ``UsageError`` with one line that names the flag, the value got and the
fix; ``python -m parity`` prints it as ``error: ...`` and exits with status 2.

The output directory (``--out``) is created if missing. An existing one is used when it is empty
or holds an earlier report of the same kind (``report.json`` of a loss or training parity run),
whose three report files are then replaced; anything else in it is left alone. A non-empty
directory without such a report is refused, so a run never overwrites unrelated files.
"""

from __future__ import annotations

import importlib
import inspect
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

# How the implementation under test is called (parity._jax_side.Runner).
CALL = "f(logits, labels, *, axis, weight, ignore_index, reduction, label_smoothing)"


class UsageError(Exception):
    """A command-line input that cannot work; the message is the line the user sees."""


def check_out_dir(path: Path, *, kind: str, flag: str = "--out") -> Path:
    """Creates ``path`` if needed and checks that a ``kind`` report can be written there.

    Args:
      path: the directory the user named.
      kind: the report kind ("loss-parity" or "training-parity") found in report.json.
      flag: the flag that named it, for messages.

    Returns:
      The directory.

    Raises:
      UsageError: ``path`` is not a directory, cannot be created or written, or is a non-empty
        directory that holds no earlier ``kind`` report.
    """
    if path.is_symlink() and not path.exists():
        raise UsageError(
            f"{flag} {path} is a symbolic link to nothing, or a loop of them; pass a directory "
            "to write report.json, report.md and report.html into (created if missing)."
        )
    if path.exists() and not path.is_dir():
        raise UsageError(
            f"{flag} {path} is a file, not a directory; pass a directory to write "
            "report.json, report.md and report.html into (created if missing)."
        )
    if path.is_dir():
        _check_contents(path, kind, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UsageError(
            f"{flag} {path} cannot be written ({reason}); pass a directory you can create "
            "and write to."
        ) from None
    return path


def _check_contents(path: Path, kind: str, flag: str) -> None:
    try:
        entries = sorted(p.name for p in path.iterdir())
    except OSError as err:
        raise UsageError(
            f"{flag} {path} cannot be read ({err.strerror}); pass a directory you can write to."
        ) from None
    found = _report_kind(path / "report.json")
    if not entries:
        return
    if found == kind:
        for name in ("report.json", "report.md", "report.html"):  # the reports it replaces
            target = path / name
            if target.is_symlink() or (target.exists() and not target.is_file()):
                raise UsageError(
                    f"{flag} {path} holds {name} that is not a regular file (a directory or "
                    f"a link), which the new report would replace; remove it, or pass another "
                    f"directory."
                )
        return
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    holds = f"a {found} report" if isinstance(found, str) else f"no {kind} report ({shown})"
    raise UsageError(
        f"{flag} {path} is a non-empty directory that holds {holds}; pass a new or empty "
        f"directory, or the directory of an earlier {kind} report to replace it."
    )


def _report_kind(path: Path) -> str | None:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report.get("kind") if isinstance(report, dict) else None


def load_impl(spec: str, *, flag: str = "--impl") -> Callable:
    """Imports ``MODULE:FUNCTION`` and checks that it can be called as the runner calls it.

    Raises:
      UsageError: the spec is malformed, the module cannot be imported, the name is missing or
        not callable, or its signature does not accept ``CALL``.
    """
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name.strip() or not name.strip() or ":" in name:
        raise UsageError(
            f"{flag} {spec!r} is not MODULE:FUNCTION; pass e.g. {flag} jaxce.loss:cross_entropy "
            "or mypkg.losses:my_ce."
        )
    if module_name.startswith("."):  # import_module needs a package to resolve it against
        raise UsageError(
            f"{flag} {spec!r} names a relative module; pass its full dotted name, e.g. "
            f"{flag} jaxce.loss:cross_entropy."
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name + ".").startswith(err.name + "."):
            raise UsageError(
                f"{flag} {spec!r}: no module named {err.name!r}; install it, or run from the "
                "directory that holds it (the current directory is on the import path)."
            ) from None
        raise UsageError(_import_failed(flag, spec, module_name, err)) from None
    except (Exception, SystemExit, GeneratorExit) as err:  # importing runs arbitrary code
        # sys.exit() in the module (even sys.exit(0)) must not end the run as if it had passed
        raise UsageError(_import_failed(flag, spec, module_name, err)) from None
    fn = module
    for part in name.split("."):
        if not hasattr(fn, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))[:8]
            raise UsageError(
                f"{flag} {spec!r}: module {module_name} has no attribute {name!r}; pass one of "
                f"its functions (it has {', '.join(public) or 'no public names'})."
            )
        fn = getattr(fn, part)
    if not callable(fn):
        raise UsageError(
            f"{flag} {spec!r} is a {type(fn).__name__}, not a function; pass a function "
            f"called as {CALL}."
        )
    _check_signature(fn, spec, flag)
    return fn


def _import_failed(flag: str, spec: str, module_name: str, err: BaseException) -> str:
    first = str(err).splitlines()[0] if str(err) else ""
    return (
        f"{flag} {spec!r}: importing {module_name} failed with {type(err).__name__}: {first}; "
        "fix that module (run `python -c 'import " + module_name + "'` to see the traceback)."
    )


def _check_signature(fn: Callable, spec: str, flag: str) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (some builtins): the run will tell
        return
    kwargs = dict(axis=-1, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0)
    try:
        signature.bind(object(), object(), **kwargs)
    except TypeError as err:
        raise UsageError(
            f"{flag} {spec!r} has the signature {signature}, which cannot be called as {CALL} "
            f"({err}); pass a function with jaxce.loss.cross_entropy's signature."
        ) from None
