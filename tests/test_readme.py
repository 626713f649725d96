"""The README runs as written: its shell commands from the repository root, its Python snippets.

Every command in a ```sh block is listed below, either with what running it must show or with
the reason it is not run here (another host, a cluster, a system install, the suite itself, or
a test that runs the same command); a command added to or removed from the README fails
`test_every_command_is_accounted_for` until this table says what to do with it. Commands run
exactly as written: from the repository root, relative paths, default flags, through `bash`,
with the virtual environment's ``bin`` first on ``PATH`` (what activating ``.venv`` does),
``VENV`` naming it for ``make`` and ``SETUP_DEPS`` empty (make never rebuilds the environment
the suite runs in). What a command writes under ``runs/`` or ``reports/`` (the run directories
it reports, the files it must write) is removed afterwards; what was there before stays. The
data-parallel commands (4 CPU devices, 2 processes) run after the one-device command of the same
flags and must train as it did, epoch by epoch, within the data-parallel tolerance. Every
```python block runs, each on its own, in a fresh interpreter.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import OUTPUT_FOLDERS, SHARED_DATA
from tests.tolerances import assert_close

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FASHION = Path("/usr/share/datasets/fashion-mnist")


@dataclasses.dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int


def fenced_blocks(text: str) -> list[Block]:
    """The README's fenced code blocks, with their language and first line number."""
    blocks, lang, body, start = [], None, [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, body, start = line[3:].strip(), [], number + 1
            else:
                blocks.append(Block(lang, "\n".join(body), start))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(text: str) -> list[str]:
    """The commands of a ```sh block: comments dropped, continuation lines joined."""
    commands, pending = [], ""
    for raw in text.splitlines():
        line = _strip_comment(raw)
        if not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        commands.append(" ".join((pending + line.strip()).split()))
        pending = ""
    return commands


def readme_commands() -> list[str]:
    return [
        c
        for b in fenced_blocks(README.read_text())
        if b.lang == "sh"
        for c in shell_commands(b.text)
    ]


def python_blocks() -> list[Block]:
    return [b for b in fenced_blocks(README.read_text()) if b.lang == "python"]


@dataclasses.dataclass(frozen=True)
class Run:
    """A command the suite runs, and what it must show."""

    output: tuple[str, ...] = ()  # regular expressions the output must match
    status: tuple[int, ...] | int = 0  # the exit status, or the statuses allowed
    files: tuple[str, ...] = ()  # paths (relative to the root) it must create
    needs: Path | None = None  # data that must be on the machine
    after: str | None = None  # a command that must have run first (same test)
    # Data parallelism: a one-device command of the same test, run first, whose training this
    # run's must match (losses and accuracy per epoch, within the data-parallel tolerance).
    matches: str | None = None
    devices: tuple[int, int] | None = None  # (devices, processes) that metrics.json records
    once: tuple[str, ...] = ()  # regular expressions that must match exactly once
    timeout: float = 600


_MINI = SHARED_DATA / "mnist-mini"
_TRAINED = (r"final test accuracy \d+\.\d+%",)
_RUN_LINE = r"run directory /\S+/runs/{name}(-\d+)?; backend cpu: {devices} x cpu"
_TWO_HOSTS = (
    "another host (10.0.0.1) must run its half; the same flags on one machine run in the "
    "two-process loop above"
)
_LAUNCHER = (
    "a cluster launcher; tests/test_train_launch.py runs train.py under each launcher's "
    "environment (SLURM, Open MPI, torchrun, Kubernetes) and checks the process it becomes"
)

RUN: dict[str, Run] = {}
NOT_RUN: dict[str, str] = {}


def _reset_tables() -> None:
    """Fills RUN and NOT_RUN (a function, so the table reads as one block)."""
    RUN.update(
        {
            # Offline (as here and in CI) tfds cannot download: one error line within seconds
            # that says to pass --data-dir; online it downloads MNIST and trains.
            "make train": Run(
                output=(r"train.py: error: .*pass --data-dir DIR|final test accuracy",),
                status=(0, 2),
            ),
            'make train ARGS="--data-dir ../shared/data/mnist-mini --epochs 2"': Run(
                output=(_RUN_LINE.format(name=r"\d{8}-\d{6}", devices=1), *_TRAINED),
                needs=_MINI,
            ),
            "python train.py --data-dir ../shared/data/mnist-mini": Run(
                output=(r"epoch +10/10", *_TRAINED), needs=_MINI
            ),
            "python train.py --dataset fashion_mnist --data-dir "
            "/usr/share/datasets/fashion-mnist": Run(
                output=(r"warning: .*SHA-256", r"epoch +10/10", *_TRAINED), needs=FASHION
            ),
            # The batch sharded over 4 devices trains as on one device (the gradient's partial
            # sums are added in another order, so within the data-parallel tolerance).
            "JAX_NUM_CPU_DEVICES=4 python train.py --data-dir ../shared/data/mnist-mini": Run(
                output=(_RUN_LINE.format(name=r"\d{8}-\d{6}", devices=4), *_TRAINED),
                matches="python train.py --data-dir ../shared/data/mnist-mini",
                devices=(4, 1),
                needs=_MINI,
            ),
            # Two processes of 2 devices join through jax.distributed and CPU collectives (gloo);
            # each says whom it waits for, only process 0 logs, and they train as one device.
            "for i in 0 1; do JAX_NUM_CPU_DEVICES=2 python train.py --data-dir "
            "../shared/data/mnist-mini --epochs 2 --out runs/two --coordinator-address "
            "127.0.0.1:12345 --num-processes 2 --process-id $i & done; wait": Run(
                output=(
                    r"run directory \S+/runs/two; backend cpu: 4 x cpu over 2 processes",
                    *_TRAINED,
                ),
                once=(
                    *(
                        rf"joining the run as process {i} of 2, coordinator 127\.0\.0\.1:12345 "
                        r"\(flags\)"
                        for i in (0, 1)
                    ),
                    r"epoch +1/2",
                    r"epoch +2/2",
                    r"final test accuracy",
                ),
                files=("runs/two/metrics.json",),
                matches='make train ARGS="--data-dir ../shared/data/mnist-mini --epochs 2"',
                devices=(4, 2),
                needs=_MINI,
            ),
            "python train.py --data-dir ../shared/data/mnist-mini --out runs/mlp "
            "--checkpoint-every 100": Run(
                output=_TRAINED, files=("runs/mlp/metrics.json",), needs=_MINI
            ),
            "python train.py --data-dir ../shared/data/mnist-mini --out runs/mlp --resume": Run(
                output=(r"resum|finished",),
                after="python train.py --data-dir ../shared/data/mnist-mini --out runs/mlp "
                "--checkpoint-every 100",
                needs=_MINI,
            ),
            "python train.py --data-dir ../shared/data/mnist-mini --out runs/mlp --resume "
            "--epochs 20": Run(
                output=(r"epoch +20/20", *_TRAINED),
                after="python train.py --data-dir ../shared/data/mnist-mini --out runs/mlp "
                "--checkpoint-every 100",
                needs=_MINI,
            ),
            "python -m parity --quick --only 'grid/float32/NC/*' --impl jaxce.loss:cross_entropy "
            "--out reports/impl": Run(
                output=(r"\d+ passed, 0 failed",), files=("reports/impl/report.html",)
            ),
        }
    )
    NOT_RUN.update(
        {
            "make test": "the suite itself (CI runs it on a fresh clone: .ci/run)",
            "python -m parity --quick --out reports/quick": (
                "tests/test_parity.py runs this command from the repository root once for all "
                "its checks of the quick matrix and its reports (its --out a temporary directory, "
                "so that a report of the user's is never replaced)"
            ),
            "python -m parity train --data-dir ../shared/data/mnist-mini --steps 300 --out "
            "reports/train": (
                "tests/test_parity_train.py runs this command from the repository root, with the "
                "relative --data-dir as written (its --out a temporary directory)"
            ),
            "sudo apt-get install dataset-fashion-mnist": (
                "a system package; .ci/run installs it before the suite, and the Fashion-MNIST "
                "command runs here when it is installed"
            ),
            "python -m parity --out reports/parity": (
                "the whole matrix, about 10 minutes; its dense cases all run in the suite "
                "through the same runner (tests/test_cross_entropy_torch.py), its fused linear "
                "cases' quick slice in tests/test_parity.py, the command line's handling in "
                "tests/test_parity_cli.py"
            ),
            "python train.py --out /shared/runs/mlp --coordinator-address 10.0.0.1:1234 "
            "--num-processes 2 --process-id 0": _TWO_HOSTS,
            "python train.py --out /shared/runs/mlp --coordinator-address 10.0.0.1:1234 "
            "--num-processes 2 --process-id 1": _TWO_HOSTS,
            "srun --nodes=2 --ntasks-per-node=4 --gpus-per-task=1 python train.py --out "
            "/shared/runs/mlp": _LAUNCHER,
            "mpirun -np 4 python train.py --out /shared/runs/mlp": _LAUNCHER,
        }
    )


_reset_tables()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["VENV"] = str(Path(sys.executable).parent.parent)
    env["SETUP_DEPS"] = ""  # make uses this environment as it is; it never rebuilds it mid-suite
    env.pop("JAX_NUM_CPU_DEVICES", None)
    # An outer `make test ARGS=...` exports its flags and ARGS, which the README's `make train`
    # would pass on to train.py; JAX stays (it names the build this environment holds).
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS"):
        env.pop(name, None)
    env.pop("XLA_FLAGS", None)
    return env


def _outputs() -> set[Path]:
    return {p for d in OUTPUT_FOLDERS for p in (ROOT / d).glob("*")}


def run_as_written(command: str, *, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_every_command_is_accounted_for():
    commands = readme_commands()
    unknown = [c for c in commands if c not in RUN and c not in NOT_RUN]
    stale = [c for c in (*RUN, *NOT_RUN) if c not in commands]
    assert not unknown, f"README commands this test does not know: {unknown}"
    assert not stale, f"commands this test lists that the README no longer has: {stale}"


def units() -> list[list[str]]:
    """RUN's commands in README order, a command with ``after`` or ``matches`` in the unit of
    that command (a resume runs on the run its README line follows; a data-parallel run is
    compared with its one-device run), each unit run by one test."""
    order = [c for c in readme_commands() if c in RUN]
    grouped: dict[str, list[str]] = {}
    for command in order:
        head = RUN[command].after or RUN[command].matches or command
        grouped.setdefault(head, []).append(command)
    return list(grouped.values())


@pytest.mark.slow
@pytest.mark.parametrize("unit", units(), ids=lambda u: u[0][:60])
def test_commands_run_as_written(unit):
    missing = [RUN[c].needs for c in unit if RUN[c].needs is not None and not RUN[c].needs.exists()]
    if missing:
        pytest.skip(f"needs {missing[0]}")
    before, made, run_dirs = _outputs(), set(), {}
    try:
        for command in unit:
            spec = RUN[command]
            made |= {ROOT / Path(f).parts[0] / Path(f).parts[1] for f in spec.files}
            result = run_as_written(command, timeout=spec.timeout)
            shown = result.stdout + result.stderr
            reported = [Path(p) for p in re.findall(r"^run directory (\S+);", shown, re.M)]
            made |= set(reported)
            run_dirs[command] = reported[0] if reported else None
            allowed = spec.status if isinstance(spec.status, tuple) else (spec.status,)
            assert result.returncode in allowed, (
                f"{command}: exit {result.returncode}:\n{shown[-3000:]}"
            )
            for pattern in spec.output:
                assert re.search(pattern, shown), f"{command}: no {pattern!r} in:\n{shown[-3000:]}"
            assert "Traceback" not in shown, f"{command}:\n{shown[-3000:]}"
            warnings = re.findall(r"^.*\w+Warning: .*$", shown, re.M)
            assert not warnings, f"{command} warns: {warnings}"
            for pattern in spec.once:
                found = len(re.findall(pattern, shown))
                assert found == 1, f"{command}: {pattern!r} {found} times in:\n{shown[-3000:]}"
            for path in spec.files:
                assert (ROOT / path).is_file(), f"{command} did not write {path}"
            if spec.matches is not None:
                pair = (command, spec.matches)
                silent = [c for c in pair if run_dirs[c] is None]
                assert not silent, f"no 'run directory' line in the output of {silent}"
                assert_same_training(run_dirs[command], run_dirs[spec.matches], spec.devices)
    finally:
        # only this unit's own outputs: units run side by side under pytest-xdist
        for path in made - before:
            shutil.rmtree(path, ignore_errors=True)


def assert_same_training(run: Path, one_device: Path, devices: tuple[int, int]) -> None:
    """``run``'s metrics.json records ``devices`` and the training of ``one_device``'s run."""
    actual, expected = (json.loads((d / "metrics.json").read_text()) for d in (run, one_device))
    recorded = (actual["device"]["device_count"], actual["device"]["process_count"])
    assert recorded == devices, f"{run}: (devices, processes) {recorded}, not {devices}"
    assert expected["device"]["device_count"] == 1, f"{one_device} did not run on one device"
    for key in ("train_loss", "test_loss"):
        assert_close(
            actual[key], expected[key], dtype="float32", quantity="data_parallel_loss", context=key
        )
    assert_close(
        actual["test_accuracy"],
        expected["test_accuracy"],
        dtype="float32",
        quantity="data_parallel_accuracy",
        context=f"{run} vs {one_device}",
    )


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: f"line-{b.line}")
def test_python_snippet_runs(block):
    result = subprocess.run(
        [sys.executable, "-c", block.text],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"README line {block.line}:\n{result.stderr[-3000:]}"
    warnings = re.findall(r"^.*\w+Warning: .*$", result.stderr, re.M)
    assert not warnings, f"README line {block.line} warns: {warnings}"


def test_the_parsers_see_what_a_shell_sees():
    text = 'a --x 1  # note\nfor i in 0 1; do echo "#$i" \\\n  & done; wait\n# only a comment\n'
    assert shell_commands(text) == ["a --x 1", 'for i in 0 1; do echo "#$i" & done; wait']
    blocks = fenced_blocks("x\n```sh\nls\n```\n```python\nprint(1)\n```\n")
    assert [(b.lang, b.text, b.line) for b in blocks] == [
        ("sh", "ls", 3),
        ("python", "print(1)", 6),
    ]


def test_the_flag_table_lists_every_flag_of_train_py():
    """The README's table of train.py's flags names each flag of the parser (derived from
    ``Config``) once, and no other."""
    import train

    parser = train.build_parser()
    flags = {o for a in parser._actions if a.dest != "help" for o in a.option_strings}
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `--")]
    listed = [f for row in rows for f in re.findall(r"`(--[a-z-]+)`", row.split("|")[1])]
    assert sorted(listed) == sorted(flags)


def test_the_tree_names_every_module_of_the_library():
    """The README's tree of the repository (its ```text block under "Development") names each
    module of ``jaxce/``, by name or by a glob such as ``_linear_*.py``, and no module that is
    not there."""
    text = README.read_text().split("## Development", 1)[1]
    tree = text.split("```text", 1)[1].split("```", 1)[0]
    library = tree.split("jaxce/", 1)[1].split("\nparity/", 1)[0]
    names = [re.split(r"\s{2,}", line.strip())[0] for line in library.splitlines()]
    named = [n for column in names for n in re.findall(r"[\w*]+\.py", column)]
    modules = {p.name for p in (ROOT / "jaxce").glob("*.py")}
    unnamed = {m for m in modules if not any(Path(m).match(n) for n in named)}
    stale = {n for n in named if not any(Path(m).match(n) for m in modules)}
    assert not unnamed, f"modules missing from the README's tree: {sorted(unnamed)}"
    assert not stale, f"the README's tree names modules that do not exist: {sorted(stale)}"


def test_the_data_parallel_check_refuses_another_training(tmp_path):
    """assert_same_training fails on a loss off by more than rounding, or the wrong devices."""
    one = {"train_loss": [1.0, 0.5], "test_loss": [0.9, 0.4], "test_accuracy": [0.8, 0.9]}
    runs = {
        "one": {**one, "device": {"device_count": 1, "process_count": 1}},
        "four": {**one, "device": {"device_count": 4, "process_count": 1}},
        "drifted": {
            **one,
            "train_loss": [1.0, 0.5001],
            "device": {"device_count": 4, "process_count": 1},
        },
    }
    for name, doc in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(doc))
    assert_same_training(tmp_path / "four", tmp_path / "one", (4, 1))
    with pytest.raises(AssertionError, match="train_loss"):
        assert_same_training(tmp_path / "drifted", tmp_path / "one", (4, 1))
    with pytest.raises(AssertionError, match=r"\(devices, processes\) \(4, 1\), not \(4, 2\)"):
        assert_same_training(tmp_path / "four", tmp_path / "one", (4, 2))
