"""The benchmarks' command lines: bad flags refused up front, failures reported, never a traceback.

Everything here runs in this process on parse_args or main, with the measurements stubbed out
where a test is about the reporting around them (tests/test_benchmarks.py checks, in fresh
processes, that the refusals come before jax is imported).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import signal
import sys
import time
import warnings

import pytest

from benchmarks import _cli, _profile, linear, loss, train_epoch
from benchmarks import _harness as h
from tests.conftest import SHARED_DATA
from tests.signals import signal_in_a_gc_callback
from training import ChecksumWarning

MNIST_MINI = SHARED_DATA / "mnist-mini"
needs_data = pytest.mark.skipif(not MNIST_MINI.is_dir(), reason="needs ../shared/data/mnist-mini")
MODULES = {"loss": loss, "linear": linear, "train_epoch": train_epoch}


def usage_error(capsys, module: str, argv: list[str]) -> str:
    """The one error line of ``module``'s parse_args on ``argv`` (which must exit 2)."""
    with pytest.raises(SystemExit) as exit:
        MODULES[module].parse_args(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"python -m benchmarks.{module}: error: "), err
    return line.split(": error: ", 1)[1]


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("loss", ["--repeats", "0"], "--repeats must be >= 1, got 0"),
        ("loss", ["--repeats", "-1"], "--repeats must be >= 1, got -1"),
        ("loss", ["--rounds", "0"], "--rounds must be >= 1, got 0"),
        ("loss", ["--warmup", "-1"], "--warmup must be >= 0, got -1"),
        ("loss", ["--threads", "0"], "--threads must be >= 1, got 0"),
        ("linear", ["--rows", "0"], "--rows must be >= 1, got 0"),
        ("linear", ["--classes", "512", "0"], "--classes must all be >= 1, got 512 0"),
        ("linear", ["--warmup", "-1"], "--warmup must be >= 0, got -1"),
        ("train_epoch", ["--repeats", "0"], "--repeats must be >= 1, got 0"),
        ("train_epoch", ["--torch-repeats", "0"], "--torch-repeats must be >= 1, got 0"),
        ("train_epoch", ["--torch-threads", "1", "0"], "--torch-threads must all be >= 1, got 1 0"),
        ("train_epoch", ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ],
)
def test_a_count_below_its_least_is_a_usage_error(capsys, module, argv, message):
    assert usage_error(capsys, module, argv) == message


@pytest.mark.parametrize("text", ["0x10", "10x0", "-5x10", "8x-5", "64by16", "8x", "8x10x2"])
def test_a_shape_must_be_positive_n_by_c(capsys, text):
    message = usage_error(capsys, "loss", ["--shapes", "8x10", text, "--repeats", "1"])
    assert message == f"--shapes must be NxC with N >= 1 and C >= 1, e.g. 4096x32768, got {text}"


def test_a_shape_whose_logits_exceed_the_memory_available_is_refused(capsys, monkeypatch):
    monkeypatch.setattr(loss.h, "available_mib", lambda: 1024.0)
    message = usage_error(capsys, "loss", ["--shapes", "8x10", "1024x1048576"])
    assert message == (
        "--shapes must fit in memory, got 1024x1048576 (its float32 logits alone take 4.0 GiB, "
        "1.0 GiB available): lower N or C"
    )
    assert loss.parse_args(["--shapes", "1024x65536"]).shapes == ((1024, 65536),)  # 0.25 GiB
    monkeypatch.setattr(loss.h, "available_mib", lambda: None)  # no /proc: nothing to check
    assert loss.parse_args(["--shapes", "1024x1048576"]).shapes == ((1024, 1048576),)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_json_must_be_a_writable_file_path(capsys, tmp_path, module):
    missing = tmp_path / "missing" / "out.json"
    message = usage_error(capsys, module, ["--json", str(missing)])
    assert message == (
        f"--json must be a file in a writable directory, got {missing} "
        f"({missing.parent} does not exist; create it)"
    )
    message = usage_error(capsys, module, ["--json", str(tmp_path)])
    assert message.endswith(f"got {tmp_path} (a directory)")
    message = usage_error(capsys, module, ["--json", ""])
    assert message.endswith("got '' (an empty path)")
    config = MODULES[module].parse_args(["--json", str(tmp_path / "out.json")])
    assert str(tmp_path / "out.json") in dataclasses.asdict(config).values()
    assert not list(tmp_path.iterdir()), "the check left no file behind"


@pytest.mark.skipif(sys.platform != "linux", reason="/proc takes no files, even from root")
def test_json_in_a_directory_that_takes_no_files_is_refused(capsys):
    message = usage_error(capsys, "loss", ["--json", "/proc/out.json"])
    assert message.startswith("--json must be a file in a writable directory, got /proc/out.json")
    assert "cannot create a file in /proc" in message


@pytest.mark.parametrize("module", ["loss", "linear", "train_epoch"])
def test_help_names_the_exit_statuses(capsys, module):
    with pytest.raises(SystemExit) as exit:
        MODULES[module].parse_args(["--help"])
    assert exit.value.code == 0
    assert "Exit status: 0" in capsys.readouterr().out


def test_a_failed_measurement_prints_its_reason_and_exits_1(capsys, tmp_path, monkeypatch):
    error = "ZeroDivisionError at _child.py:55: division by zero"
    monkeypatch.setattr(loss.h, "run_child", lambda spec, timeout_s: {"ok": False, "error": error})
    path = tmp_path / "loss.json"
    argv = ["--shapes", "8x10", "--variants", "jaxce", "--targets", "index"]
    with pytest.raises(SystemExit) as exit:
        loss.main([*argv, "--settings", "forward", "--rounds", "1", "--json", str(path)])
    assert exit.value.code == 1
    out, err = capsys.readouterr()
    assert f"FAILED index 8x10 forward jaxce: {error}" in out.splitlines()
    assert err.strip().splitlines()[-1] == (
        "python -m benchmarks.loss: error: 1 of 1 measurements failed (reasons above)"
    )
    doc = json.loads(path.read_text())  # written all the same
    assert doc["complete"] is True and doc["results"][0]["error"] == error


def test_a_failed_linear_variant_prints_its_reason_and_exits_1(capsys, tmp_path, monkeypatch):
    error = "MemoryError: out of memory"
    monkeypatch.setattr(linear, "_run_child", lambda spec, timeout_s: {"ok": False, "error": error})
    path = tmp_path / "linear.json"
    argv = ["--classes", "64", "--dtypes", "float32", "--variants", "jaxce_fused"]
    with pytest.raises(SystemExit) as exit:
        linear.main([*argv, "--rows", "8", "--features", "4", "--json", str(path)])
    assert exit.value.code == 1
    out, err = capsys.readouterr()
    assert f"C=64 float32 jaxce_fused: failed: {error}" in out + err
    assert err.strip().splitlines()[-1] == (
        "python -m benchmarks.linear: error: 1 of 1 variants failed (reasons above)"
    )
    assert json.loads(path.read_text())["complete"] is True  # written all the same


def test_failures_name_each_cell_once_with_the_rounds_that_failed():
    ok = {"ok": True}
    results = [
        {"targets": "index", "shape": "8x10", "setting": "in_step", "variant": "optax",
         "raw": [ok, {"ok": False, "error": "timed out after 600 s"}]},
        {"targets": "probs", "shape": "8x10", "setting": "outside", "variant": "jaxce",
         "raw": [{"ok": False, "error": "MemoryError\nmore\nlines" + "x" * 400}]},
        {"targets": "index", "shape": "8x10", "setting": "forward", "variant": "jaxce",
         "raw": [ok, ok]},
    ]  # fmt: skip
    assert loss.failures({"results": results}) == [
        "FAILED index 8x10 in_step optax (1 of 2 rounds): timed out after 600 s",
        "FAILED probs 8x10 outside jaxce: MemoryError",
    ]


def data_error(capsys, argv: list[str]) -> tuple[int, str]:
    """train_epoch.main's exit status and its one stderr line, for a run that stops."""
    with pytest.raises(SystemExit) as exit:
        train_epoch.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("python -m benchmarks.train_epoch: error: "), err
    return exit.value.code, line.split(": error: ", 1)[1]


def test_train_epoch_reports_unusable_data_in_one_line(capsys, tmp_path):
    missing = tmp_path / "missing"
    status, message = data_error(capsys, ["--data-dir", str(missing), "--dataset", "mnist"])
    assert (status, message) == (1, f"--data-dir {missing} is not a directory (it does not exist)")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"not an IDX file")
    status, message = data_error(capsys, ["--data-dir", str(tmp_path), "--dataset", "mnist"])
    assert status == 1 and str(tmp_path) in message


def stub_epochs(monkeypatch):
    """Replaces every timed variant by a 1 ms wait: only the data loading and reporting run."""

    def epoch(_):
        time.sleep(0.001)

    monkeypatch.setattr(train_epoch, "jax_epoch", lambda *a, **k: (epoch, 0.5))
    monkeypatch.setattr(train_epoch, "floor_epoch", lambda *a, **k: (epoch, 0.25))
    monkeypatch.setattr(train_epoch, "torch_epoch", lambda *a, **k: epoch)


@needs_data
def test_train_epoch_sums_up_checksum_mismatches_in_one_warning_line(capsys, monkeypatch):
    stub_epochs(monkeypatch)
    argv = ["--data-dir", str(MNIST_MINI), "--dataset", "mnist", "--repeats", "1"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_epoch.main([*argv, "--torch-repeats", "1", "--torch-threads", "1"])
    assert not [w for w in caught if issubclass(w.category, ChecksumWarning)]
    out, err = capsys.readouterr()
    warned = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(warned) == 1 and warned[0].startswith("warning: the 4 files in "), err
    assert "mnist-mini" in warned[0] and "(--strict-checksums refuses them)" in warned[0]
    assert "jax_epoch" in out


@needs_data
def test_train_epoch_batch_larger_than_the_data_is_a_setting_error(capsys):
    """train.py's trainer refuses it before compiling anything: exit 2, as train.py does."""
    argv = ["--data-dir", str(MNIST_MINI), "--dataset", "mnist", "--batch-size", "100000"]
    status, message = data_error(capsys, argv)
    assert status == 2
    assert message.startswith("--batch-size 100000 is larger than the training split")


def test_a_json_that_cannot_be_written_at_the_end_is_one_line(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("json.dump", full)
    path = tmp_path / "out.json"
    with pytest.raises(SystemExit) as exit:
        h.write_json(str(path), {"a": 1})
    assert exit.value.code == (
        f"error: writing {path} failed (No space left on device); what was printed is what was "
        "measured"
    )
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit:
        _cli.run_main(interrupted, "python -m benchmarks.loss")
    assert exit.value.code == 130
    assert capsys.readouterr().err.strip() == (
        "python -m benchmarks.loss: interrupted; the measurements finished so far are printed "
        "above and, with --json FILE, in FILE.partial (an earlier FILE is kept)"
    )


def profile_usage_error(capsys, argv: list[str]) -> str:
    """The one error line of ``python -m benchmarks._profile`` on ``argv`` (exit status 2)."""
    with pytest.raises(SystemExit) as exit:
        _profile.main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1].split(": error: ", 1)[1]


@pytest.mark.parametrize("text", ["8x", "0x10", "8by10"])
def test_profile_refuses_a_bad_shape(capsys, text):
    message = profile_usage_error(capsys, ["--shape", text])
    assert message == f"--shape must be NxC with N >= 1 and C >= 1, e.g. 4096x32768, got {text}"


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--shape", "0x5"], "--shape"),
        (["--setting", "forward", "--dump", "d"], "--setting, --dump"),
        (["--variants", "optax", "--targets", "probs"], "--variants, --targets"),
    ],
    ids=["shape", "setting-dump", "variants-targets"],
)
def test_profile_reductions_refuses_the_flags_it_would_ignore(capsys, monkeypatch, extra, named):
    monkeypatch.setattr(_profile, "_print_reductions", lambda: pytest.fail("timed"))
    message = profile_usage_error(capsys, ["--reductions", *extra])
    assert message == f"--reductions times fixed row lengths and takes no {named}"


def test_profile_refuses_a_dump_path_it_cannot_make_a_directory(capsys, tmp_path):
    taken = tmp_path / "file"
    taken.write_text("")
    message = profile_usage_error(capsys, ["--shape", "8x10", "--dump", str(taken)])
    assert message == f"--dump must be a directory it can write, got {taken} (File exists)"


@pytest.mark.parametrize("text", ["64x1", "1x4096"])
def test_profile_refuses_a_shape_whose_arrays_it_could_not_tell_apart(capsys, text):
    # it counted (N,) labels as logits when C = 1 ((C,) weights when N = 1): 11 reads, not 4
    message = profile_usage_error(capsys, ["--shape", text])
    assert message == f"--shape must be NxC with N >= 2 and C >= 2, got {text}"


def test_profile_refuses_a_dump_directory_it_cannot_write_before_compiling(
    capsys, tmp_path, monkeypatch
):
    # a directory it could make but not write to (/sys/kernel as root) failed after compiling
    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_profile.tempfile, "NamedTemporaryFile", refused)
    monkeypatch.setattr(_profile, "_print_passes", lambda *a: pytest.fail("compiled"))
    message = profile_usage_error(capsys, ["--shape", "8x10", "--dump", str(tmp_path)])
    assert message == f"--dump must be a directory it can write, got {tmp_path} (Permission denied)"


def test_linear_refuses_hidden_states_beyond_memory(capsys, monkeypatch):
    # only the logits and the kernel were counted: 37 GiB of hidden states ran into MemoryError
    monkeypatch.setattr(linear.h, "available_mib", lambda: 1024.0)
    argv = ["--rows", "100000", "--features", "100000", "--classes", "8"]
    assert usage_error(capsys, "linear", argv) == (
        "--rows/--features/--classes must fit in memory, got 100000 x 100000 x 8 (a rows x "
        "features float32 array alone takes 37.3 GiB, 1.0 GiB available): lower them"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--torch-threads", "1", "1"], "--torch-threads lists 1 twice; name each once"),
        (["--torch-threads", "4096"], "--torch-threads must be at most the"),
    ],
    ids=["twice", "beyond-the-cpus"],
)
def test_train_epoch_checks_torch_threads_as_the_others_check_threads(capsys, argv, message):
    assert usage_error(capsys, "train_epoch", argv).startswith(message)


def test_profile_makes_its_dump_directory_and_knows_the_variants(capsys, tmp_path):
    from benchmarks import _jax_variants

    assert _profile.VARIANTS == _jax_variants.NAMES
    assert "invalid choice: 'nope'" in profile_usage_error(capsys, ["--variants", "nope"])
    dump = tmp_path / "new" / "dir"
    _profile.main(["--shape", "8x10", "--variants", "jaxce", "--dump", str(dump)])
    assert (dump / "jaxce_index_in_step_8x10.hlo.txt").read_text().startswith("HloModule")
    assert "total: " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--variants", "torch_eager_out", "--settings", "outside"],
            "--variants torch_eager_out runs only in --settings in_step, got --settings outside; "
            "add one of them or drop the variant",
        ),
        (
            ["--variants", "jaxce", "jaxce_autodiff", "--settings", "forward"],
            "--variants jaxce_autodiff runs only in --settings outside in_step, got --settings "
            "forward; add one of them or drop the variant",
        ),
        (["--shapes", "8x10", "8X10"], "--shapes lists 8x10 twice; name each once"),
        (["--variants", "jaxce", "optax", "jaxce"], "--variants lists jaxce twice; name each once"),
        (["--settings", "forward", "forward"], "--settings lists forward twice; name each once"),
    ],
    ids=["variant-in-no-setting", "one-variant-in-no-setting", "shape", "variant", "setting"],
)
def test_loss_refuses_flags_that_would_measure_nothing_or_twice(capsys, argv, message):
    # They ran nothing (an empty table, exit 0) or merged two copies into one cell's rounds.
    assert usage_error(capsys, "loss", argv) == message


@pytest.mark.parametrize("module", ["loss", "linear"])
def test_threads_beyond_the_cpus_available_are_refused(capsys, monkeypatch, module):
    # the measurement pinned 2 CPUs and recorded --threads 64 (torch ran 64 threads on them)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert usage_error(capsys, module, ["--threads", "64"]) == (
        "--threads must be at most the 2 CPUs this process may use, got 64; pass --threads 2 "
        "or less"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--classes", "512", "512"], "--classes lists 512 twice; name each once"),
        (["--dtypes", "float32", "float32"], "--dtypes lists float32 twice; name each once"),
        (
            ["--rows", "99999999999999999999"],
            "--rows/--features/--classes must fit in memory, got 99999999999999999999 x 512 x ",
        ),
    ],
    ids=["classes-twice", "dtypes-twice", "beyond-memory"],
)
def test_linear_refuses_repeats_and_sizes_beyond_memory(capsys, argv, message):
    assert usage_error(capsys, "linear", argv).startswith(message)


@pytest.mark.parametrize("module", ["loss", "linear"])
def test_json_must_be_a_regular_file_or_a_new_path(capsys, tmp_path, module):
    # --json /dev/null replaced the device with a regular file (the write renames over it)
    assert "(not a regular file (a device or a pipe)" in usage_error(
        capsys, module, ["--json", "/dev/null"]
    )
    target = tmp_path / "target.json"
    target.write_text("mine")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert f"(a symbolic link; pass its target, {target})" in usage_error(
        capsys, module, ["--json", str(link)]
    )
    (tmp_path / "x.json.tmp").mkdir()
    assert "x.json.tmp, its temporary file, exists; remove it" in usage_error(
        capsys, module, ["--json", str(tmp_path / "x.json")]
    )
    (tmp_path / "y.json.partial").mkdir()  # where the results so far are kept
    assert f"got {tmp_path / 'y.json.partial'} (a directory)" in usage_error(
        capsys, module, ["--json", str(tmp_path / "y.json")]
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shape", "0x16"], "--shape must be NxC with N >= 1 and C >= 1, e.g. 4096x32768"),
        (["--dtypes", "float64"], "--dtypes float64 needs --x64 (without it JAX makes the inputs"),
        (["--cases", "plain", "plain"], "--cases lists plain twice; name each once"),
        (["--json", "/dev/null"], "--json must be a file in a writable directory, got /dev/null"),
    ],
    ids=["zero-rows", "float64-without-x64", "case-twice", "json-device"],
)
def test_compiled_checks_its_flags_before_compiling(capsys, monkeypatch, argv, message):
    # They raised ZeroDivisionError or TypeError after compiling, or measured a float32
    # program labelled float64 (halving its traffic), or replaced /dev/null at the end.
    from benchmarks import compiled

    monkeypatch.setattr(compiled, "measure", lambda *a: pytest.fail("compiled"))
    with pytest.raises(SystemExit) as exit:
        compiled.main(argv)
    assert exit.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .split(": error: ", 1)[1]
        .startswith(message)
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_dropped_in_a_gc_callback_still_ends_the_run(tmp_path, capsys, sig):
    # A Ctrl-C that landed in JAX's gc callback was printed and dropped: the benchmark went on,
    # wrote its JSON and exited 0.
    path = tmp_path / "run.json"

    def benchmark():
        signal_in_a_gc_callback(sig)()  # returns: the KeyboardInterrupt there was dropped
        h.write_json(str(path), {"complete": True})

    with pytest.raises(SystemExit) as exit:
        _cli.run_main(benchmark, "python -m benchmarks.train_epoch", "nothing was written")
    assert exit.value.code == 130
    assert capsys.readouterr().err.strip() == (
        "python -m benchmarks.train_epoch: interrupted; nothing was written"
    )
    assert not path.exists()


def test_compiled_refuses_a_shape_whose_arrays_it_could_not_tell_apart(capsys):
    from benchmarks import compiled

    with pytest.raises(SystemExit) as exit:
        compiled.main(["--shape", "64x1"])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("error: --shape must be NxC with N >= 2 and C >= 2, got 64x1"), err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--variants", "jaxce", "jaxce"], "--variants lists jaxce twice; name each once"),
        (
            ["--setting", "forward", "--variants", "bound_copy"],
            "--variants bound_copy runs only in --setting outside or in_step, got --setting "
            "forward; drop the variant or choose one of those settings",
        ),
    ],
    ids=["variant-twice", "bound-of-another-setting"],
)
def test_profile_refuses_what_benchmarks_loss_refuses(capsys, argv, message):
    assert profile_usage_error(capsys, ["--shape", "8x10", *argv]) == message
