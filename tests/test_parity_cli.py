"""Bad command lines of ``python -m parity``: one ``error:`` line, exit 2, before any work.

Each case runs the CLI in-process (``parity._cli.main(argv)``) with the work itself replaced by a
tripwire, so a check that comes too late fails the test instead of running the matrix. The
line must name the flag and the value got; no traceback may reach the user.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import signal
import struct
from pathlib import Path

import numpy as np
import pytest

import parity._matrix
import parity._train
from parity._cli import main, parse_loss
from parity._usage import UsageError, check_out_dir
from tests.conftest import main_in_fresh_process
from tests.signals import signal_in_a_gc_callback
from training import _interrupt as interrupt


def _idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_idx(tmp_path) -> Path:
    """Ten 28x28 training images and four test images in MNIST's IDX layout."""
    root = tmp_path / "tiny-idx"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("t10k", 4)):
        _idx(root / f"{split}-images-idx3-ubyte", 2051, rng.integers(0, 256, (n, 28, 28)))
        _idx(root / f"{split}-labels-idx1-ubyte", 2049, rng.integers(0, 10, n))
    return root


@pytest.fixture
def no_work(monkeypatch):
    """Replaces the expensive parts of both commands by tripwires."""

    def tripwire(*args, **kwargs):
        raise AssertionError("the run started before the bad input was reported")

    monkeypatch.setattr(parity._matrix, "run_matrix", tripwire)
    monkeypatch.setattr(parity._train, "run_training_parity", tripwire)
    monkeypatch.setattr(parity._train, "run_flax", tripwire)


def _unwritable(tmp_path: Path) -> Path:
    """A directory this process cannot create or write (procfs refuses even root)."""
    if os.geteuid() == 0:
        return Path("/proc/jaxce-parity-report")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "report"


def _layout(tmp_path: Path, tiny: Path) -> dict[str, str]:
    """Paths the cases refer to, created on demand."""
    file = tmp_path / "a-file.txt"
    file.write_text("not a directory\n")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("someone's notes\n")
    train_report = tmp_path / "train-report"
    train_report.mkdir()
    (train_report / "report.json").write_text(json.dumps({"kind": "training-parity"}))
    loss_report = tmp_path / "loss-report"
    loss_report.mkdir()
    (loss_report / "report.json").write_text(json.dumps({"kind": "loss-parity"}))
    corrupt = tmp_path / "corrupt-report"
    corrupt.mkdir()
    (corrupt / "report.json").write_text("{not json")
    empty = tmp_path / "empty-data"
    empty.mkdir()
    bad_magic = tmp_path / "bad-magic"
    bad_magic.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (bad_magic / name).write_bytes(b"\x00\x00\x08\x99" + b"\x00" * 64)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (bad_magic / name).write_bytes((tiny / name).read_bytes())
    gz = tmp_path / "truncated-gz"
    gz.mkdir()
    (gz / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03")[:-6])
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "broken_impl.py").write_text("raise RuntimeError('boom at import')\n")
    (modules / "needs_dep.py").write_text("import jaxce_missing_dependency\n")
    (modules / "narrow_impl.py").write_text("def ce(logits, labels):\n    return logits\n")
    (modules / "exit_impl.py").write_text("import sys\n\nsys.exit(0)\n")
    html_dir = tmp_path / "report-html-is-a-dir"
    (html_dir / "report.html").mkdir(parents=True)
    (html_dir / "report.json").write_text(json.dumps({"kind": "loss-parity"}))
    loop = tmp_path / "loop-a"
    loop.symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(loop)
    return {
        "loop": str(loop),
        "file": str(file),
        "under_file": str(file / "report"),
        "unwritable": str(_unwritable(tmp_path)),
        "busy": str(busy),
        "train_report": str(train_report),
        "loss_report": str(loss_report),
        "corrupt": str(corrupt),
        "missing": str(tmp_path / "no-such-dir"),
        "empty": str(empty),
        "bad_magic": str(bad_magic),
        "truncated_gz": str(gz),
        "tiny": str(tiny),
        "out": str(tmp_path / "fresh-out"),
        "modules": str(modules),
        "html_dir": str(html_dir),
    }


# (id, argv with {placeholders}, fragments the error line must contain)
CASES = [
    ("out-is-a-file", ["--out", "{file}"], ["--out", "{file}", "is a file"]),
    ("out-under-a-file", ["--out", "{under_file}"], ["--out", "cannot be written"]),
    ("out-not-writable", ["--out", "{unwritable}"], ["--out", "cannot be written"]),
    ("out-holds-other-files", ["--out", "{busy}"], ["--out", "notes.txt", "non-empty"]),
    ("out-holds-a-training-report", ["--out", "{train_report}"], ["a training-parity report"]),
    ("out-holds-corrupt-report", ["--out", "{corrupt}"], ["--out", "{corrupt}", "non-empty"]),
    ("out-missing-value", ["--out"], ["--out", "expected one argument"]),
    ("out-empty", ["--out", ""], ["--out", "must name a directory", "''"]),  # was named "."
    ("train-data-empty-string", ["train", "--data-dir", ""], ["--data-dir", "''"]),
    ("impl-no-colon", ["--impl", "jaxce.loss"], ["--impl", "'jaxce.loss'", "MODULE:FUNCTION"]),
    ("impl-no-module", ["--impl", ":cross_entropy"], ["--impl", "MODULE:FUNCTION"]),
    ("impl-no-function", ["--impl", "jaxce.loss:"], ["--impl", "MODULE:FUNCTION"]),
    ("impl-two-colons", ["--impl", "a:b:c"], ["--impl", "'a:b:c'", "MODULE:FUNCTION"]),
    # it suggested running `python -c 'import .loss'`
    ("impl-relative-module", ["--impl", ".loss:ce"], ["--impl", "'.loss:ce'", "full dotted name"]),
    ("impl-module-missing", ["--impl", "nosuch_pkg.losses:ce"], ["--impl", "'nosuch_pkg'"]),
    ("impl-name-missing", ["--impl", "jaxce.loss:nope"], ["--impl", "has no attribute 'nope'"]),
    ("impl-not-callable", ["--impl", "jaxce:__version__"], ["--impl", "is a str"]),
    ("impl-builtin-signature", ["--impl", "math:sqrt"], ["--impl", "'math:sqrt'", "signature"]),
    ("impl-narrow-signature", ["--impl", "narrow_impl:ce"], ["--impl", "(logits, labels)"]),
    ("impl-import-raises", ["--impl", "broken_impl:ce"], ["--impl", "RuntimeError", "boom"]),
    ("impl-missing-dependency", ["--impl", "needs_dep:ce"], ["jaxce_missing_dependency"]),
    ("seed-negative", ["--seed", "-1"], ["--seed", "-1", ">= 0"]),
    ("seed-not-integer", ["--seed", "abc"], ["--seed", "'abc'", "integer"]),
    # seeds 2**32 apart drew the same inputs
    ("seed-beyond-2-32", ["--seed", "4294967296"], ["--seed", "4294967296", "0 to 4294967295"]),
    # sys.exit(0) at import ended the run with exit status 0 and no report
    ("impl-import-exits-0", ["--impl", "exit_impl:ce"], ["--impl", "SystemExit"]),
    # refused only after the whole run, as a failed write
    ("out-report-html-is-a-dir", ["--out", "{html_dir}"], ["report.html", "not a regular file"]),
    ("only-matches-nothing", ["--only", "grid/float8/*"], ["--only", "'grid/float8/*'"]),
    ("unknown-flag", ["--frobnicate"], ["unrecognized arguments: --frobnicate"]),
    ("train-steps-zero", ["train", "--steps", "0"], ["--steps", "got 0", ">= 1"]),
    ("train-steps-negative", ["train", "--steps", "-5"], ["--steps", "got -5"]),
    ("train-steps-fraction", ["train", "--steps", "1.5"], ["--steps", "'1.5'"]),
    ("train-batch-size-zero", ["train", "--batch-size", "0"], ["--batch-size", "got 0"]),
    ("train-seed-negative", ["train", "--seed", "-3"], ["--seed", "got -3"]),
    ("train-lr-unknown", ["train", "--lr", "0.01"], ["unrecognized arguments: --lr 0.01"]),
    ("train-data-missing", ["train", "--data-dir", "{missing}"], ["--data-dir", "{missing}"]),
    ("train-data-is-file", ["train", "--data-dir", "{file}"], ["--data-dir", "{file}"]),
    ("train-data-empty", ["train", "--data-dir", "{empty}"], ["train-images-idx3-ubyte"]),
    ("train-data-bad-magic", ["train", "--data-dir", "{bad_magic}"], ["{bad_magic}", "magic"]),
    ("train-data-truncated", ["train", "--data-dir", "{truncated_gz}"], ["{truncated_gz}"]),
    (
        "train-batch-exceeds-data",
        ["train", "--data-dir", "{tiny}", "--batch-size", "11"],
        ["--batch-size 11", "10 training images"],
    ),
    ("train-out-is-a-file", ["train", "--data-dir", "{tiny}", "--out", "{file}"], ["is a file"]),
    ("out-in-a-symlink-loop", ["--quick", "--out", "{loop}"], ["--out", "a loop"]),
    (
        "train-out-holds-a-loss-report",
        ["train", "--data-dir", "{tiny}", "--out", "{loss_report}"],
        ["--out", "a loss-parity report"],
    ),
]


@pytest.mark.parametrize(("argv", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_before_any_work(
    argv, fragments, tmp_path, tiny_idx, no_work, capsys, monkeypatch
):
    paths = _layout(tmp_path, tiny_idx)
    monkeypatch.syspath_prepend(paths["modules"])
    if "--out" not in argv:
        argv = [*argv, "--out", "{out}"]
    argv = [a.format(**paths) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for fragment in fragments:
        assert fragment.format(**paths) in lines[0], (fragment, lines[0])
    assert "Traceback" not in captured.err and not captured.out
    assert not Path(paths["out"]).exists(), "a refused run leaves no --out directory behind"


def test_corpus_size():
    assert len(CASES) >= 25


def test_out_dir_is_created_or_reused_for_the_same_kind(tmp_path):
    fresh = tmp_path / "a" / "b"
    assert check_out_dir(fresh, kind="loss-parity") == fresh and fresh.is_dir()
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "report.json").write_text(json.dumps({"kind": "loss-parity"}))
    (earlier / "notes.txt").write_text("kept\n")
    assert check_out_dir(earlier, kind="loss-parity") == earlier
    with pytest.raises(UsageError, match="training-parity"):
        check_out_dir(earlier, kind="training-parity")


def test_progress_is_off_when_stderr_is_not_a_terminal(capsys):
    assert parse_loss([]).progress is False  # pytest captures stderr: not a terminal
    assert parse_loss(["--progress"]).progress is True
    assert parse_loss(["--no-progress"]).progress is False


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--bogus"], ["--quick", "--only", "no-such/*"], ["train", "--steps", "0"]],
    ids=["help", "unknown-flag", "only-matches-nothing", "train-bad-steps"],
)
def test_the_command_line_answers_before_importing_the_frameworks(argv):
    """--help and a bad input answer at once: torch, jax and matplotlib are not imported."""
    imported, status, stderr = main_in_fresh_process(
        "parity._cli", argv, ("torch", "jax", "matplotlib")
    )
    assert (imported, status) == ([], 0 if argv == ["--help"] else 2), stderr


def test_a_report_that_cannot_be_written_is_one_error_line(tmp_path, capsys, monkeypatch):
    def full(config, impl_fn, cases):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "report.json"))

    monkeypatch.setattr(parity._matrix, "run_loss_parity", full)
    assert main(["--quick", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"error: {tmp_path / 'report.json'}: No space left on device; the reports were not "
        "written (any earlier ones in --out are kept): free space, or choose another --out"
    ]


def test_a_failed_report_write_keeps_the_earlier_reports_whole(tmp_path, monkeypatch):
    from parity._report import write_reports

    write_reports(tmp_path, {"report.json": "old json", "report.md": "old md"})
    real = Path.write_text

    def full(path, text, *args, **kwargs):
        if path.name == ".report.md.tmp":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        write_reports(tmp_path, {"report.json": "new json", "report.md": "new md"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]
    assert (tmp_path / "report.json").read_text() == "old json"


def test_a_report_path_that_is_not_a_file_replaces_none_of_them(tmp_path):
    # A directory at report.md: report.json was replaced, the temporary files were left, and
    # the message said nothing was written.
    from parity._report import write_reports

    write_reports(tmp_path, {"report.json": "old json", "report.html": "old html"})
    (tmp_path / "report.md").mkdir()
    with pytest.raises(OSError, match="not a regular file, which the report would replace"):
        texts = {"report.json": "new", "report.md": "new", "report.html": "new"}
        write_reports(tmp_path, texts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json", "report.md"]
    assert (tmp_path / "report.json").read_text() == "old json"


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(config, impl_fn, cases):
        raise KeyboardInterrupt

    monkeypatch.setattr(parity._matrix, "run_loss_parity", interrupted)
    assert main(["--quick", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: interrupted; the reports are written at the end, so none was (any earlier ones "
        "in --out are kept)"
    ]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_dropped_in_a_gc_callback_still_ends_the_run(tmp_path, capsys, monkeypatch, sig):
    # A Ctrl-C that landed in JAX's gc callback was printed and dropped: the run went on,
    # replaced the earlier reports and exited 0.
    from parity._report import write_reports

    write_reports(tmp_path, {"report.json": json.dumps({"kind": "loss-parity"})})
    earlier = (tmp_path / "report.json").read_text()

    def run(config, impl_fn, cases):
        signal_in_a_gc_callback(sig)()  # returns: the KeyboardInterrupt there was dropped
        write_reports(config.out, {"report.json": "new"})
        return 0

    monkeypatch.setattr(parity._matrix, "run_loss_parity", run)
    assert main(["--quick", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.startswith("error: interrupted; ")
    assert (tmp_path / "report.json").read_text() == earlier
    assert signal.getsignal(sig) is not interrupt._handler  # restored when main returns


def test_an_interrupted_first_run_leaves_no_empty_out_directory(tmp_path, capsys, monkeypatch):
    # the --out it had just made stayed behind, empty
    def interrupted(config, impl_fn, cases):
        raise KeyboardInterrupt

    monkeypatch.setattr(parity._matrix, "run_loss_parity", interrupted)
    assert main(["--quick", "--out", str(tmp_path / "new" / "out")]) == 130
    assert capsys.readouterr().err.startswith("error: interrupted; ")
    assert list(tmp_path.iterdir()) == []
