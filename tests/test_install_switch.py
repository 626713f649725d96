"""The set-up's JAX switch (``make train JAX=cuda12``), as far as a CPU-only machine can check it.

``make -n`` prints what the set-up would run without running it; a set-up stamp in a temporary
``VENV`` stands for an installed environment. What is checked: the pip command per build, that
a changed switch re-runs the set-up and removes the other builds' plugins, that an unknown
value is refused before anything runs, and that JAX's own extras of the pinned jax release
install its plugins at that same version.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
BUILDS = ("cpu", "cuda12", "cuda13", "tpu")
PLUGINS = {
    "cuda12": {"jax-cuda12-plugin", "jax-cuda12-pjrt"},
    "cuda13": {"jax-cuda13-plugin", "jax-cuda13-pjrt"},
    "tpu": {"libtpu"},
    "cpu": set(),
}

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make_n(*args: str, venv: Path) -> subprocess.CompletedProcess:
    """``make -n ARGS`` from the repository root, as a user types it (not as a sub-make)."""
    # Not what an outer `make test ARGS=... JAX=...` passes down (its flags and variables).
    outer = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS", "JAX", "CONSTRAINTS", "SETUP_DEPS")
    env = {k: v for k, v in os.environ.items() if k not in outer}
    return subprocess.run(
        ["make", "-n", f"VENV={venv}", f"PYTHON={sys.executable}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def installed_as(venv: Path, stamp: str) -> Path:
    """A fake environment whose set-up stamp is newer than pyproject.toml and constraints.txt."""
    venv.mkdir(parents=True, exist_ok=True)
    (venv / stamp).touch()
    return venv


@pytest.mark.parametrize("build", BUILDS)
def test_setup_installs_the_build_as_an_extra_with_the_constraints(tmp_path, build):
    out = make_n("train", f"JAX={build}", venv=tmp_path / "venv")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    install = [ln for ln in lines if "pip install" in ln and "-e " in ln]
    assert install == [
        f"{tmp_path}/venv/bin/python -m pip install -q -c constraints.txt "
        f'-e ".[train,parity,dev,{build}]"'
    ]
    (uninstall,) = [ln for ln in lines if "pip uninstall" in ln]
    removed = set(uninstall.split("-y", 1)[1].split())
    assert removed == set().union(*PLUGINS.values()) - PLUGINS[build]
    assert lines.index(uninstall) < lines.index(install[0])
    stamp = ".installed" if build == "cpu" else f".installed-{build}"
    assert f"touch {tmp_path}/venv/{stamp}" in lines
    assert lines[-1].strip() == f"{tmp_path}/venv/bin/python train.py"


def test_an_installed_build_is_not_set_up_again(tmp_path):
    venv = installed_as(tmp_path / "venv", ".installed-cuda12")
    out = make_n("train", "JAX=cuda12", venv=venv)
    assert out.stdout.strip() == f"{venv}/bin/python train.py"


@pytest.mark.parametrize(
    ("installed", "switch"),
    [
        pytest.param(".installed", "tpu", id="cpu-to-tpu"),
        pytest.param(".installed-cuda12", "cpu", id="cuda12-to-cpu"),
        pytest.param(".installed-tpu", "cuda13", id="tpu-to-cuda13"),
    ],
)
def test_a_changed_switch_sets_up_again_and_drops_the_old_stamp(tmp_path, installed, switch):
    venv = installed_as(tmp_path / "venv", installed)
    out = make_n("test", f"JAX={switch}", venv=venv)
    assert out.returncode == 0, out.stderr
    assert f"rm -f {venv}/.installed {venv}/.installed-*" in out.stdout.splitlines()
    assert f'".[train,parity,dev,{switch}]"' in out.stdout


@pytest.mark.parametrize("value", ["cuda", "gpu", "cuda12 tpu", ""])
def test_an_unknown_build_is_refused_before_anything_runs(tmp_path, value):
    out = make_n("train", f"JAX={value}", venv=tmp_path / "venv")
    assert out.returncode != 0
    assert out.stdout == ""
    assert f"JAX={value} is not a JAX build" in out.stderr
    assert "cpu cuda12 cuda13 tpu" in out.stderr and "make train JAX=cuda12" in out.stderr


def test_pyproject_extras_are_jax_own_extras():
    with open(ROOT / "pyproject.toml", "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert {b: extras[b] for b in BUILDS} == {
        "cpu": [],
        "cuda12": ["jax[cuda12]"],
        "cuda13": ["jax[cuda13]"],
        "tpu": ["jax[tpu]"],
    }


def _pinned(name: str) -> str:
    text = (ROOT / "constraints.txt").read_text()
    return re.search(rf"^{re.escape(name)}==(\S+)$", text, re.M).group(1)


@pytest.mark.parametrize("build", ["cuda12", "cuda13", "tpu"])
def test_jax_extra_pins_its_plugin_to_the_pinned_jax(build):
    """jax's metadata: its ``[cuda12]`` extra requires jaxlib and the plugin of its own version."""
    version = metadata.version("jax")
    assert version == _pinned("jax"), "the suite runs on the pinned jax"
    requires = [r for r in metadata.requires("jax") if f'extra == "{build}"' in r]
    pins = {re.match(r"[\w\-]+", r).group(0): r.split(";")[0] for r in requires}
    assert f">={version}" in pins["jaxlib"] and f"<={version}" in pins["jaxlib"]
    if build == "tpu":
        assert "libtpu" in pins  # libtpu has its own version numbers, pinned by jax
    else:
        plugin = pins[f"jax-{build}-plugin"]
        assert f">={version}" in plugin and f"<={version}" in plugin


def test_accel_check_has_its_own_environment(tmp_path):
    out = make_n("accel-check", f"ACCEL_VENV={tmp_path}/accel", venv=tmp_path / "venv")
    assert out.returncode == 0, out.stderr
    pip = f"{tmp_path}/accel/bin/python -m pip install -q -c constraints.txt"
    assert f'{pip} -e ".[train,dev,cuda12,tpu]"' in out.stdout
    assert (
        f"JAX_PLATFORMS=cpu {tmp_path}/accel/bin/python -m pytest -q tests/test_compiled.py"
        in out.stdout
    )
    assert f"{tmp_path}/venv" not in out.stdout  # make test's environment is left alone
