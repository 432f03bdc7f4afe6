"""The install layout: kernels/ is importable only as dllm_accel.kernels (from a source checkout, an
editable install and a wheel), never as a top-level `kernels` that would shadow Hugging Face's
package, which transformers imports; and the whole suite collects from the repository root."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL_MODULES = sorted(path.stem for path in (ROOT / "kernels").glob("*.py"))
try:
    importlib.metadata.distribution("kernels")
    PYPI_KERNELS = True
except importlib.metadata.PackageNotFoundError:
    PYPI_KERNELS = False


def python(code: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_the_kernel_folder_is_no_top_level_package():
    assert KERNEL_MODULES, "kernels/ holds the Triton kernels"
    assert not (ROOT / "kernels" / "__init__.py").exists(), (
        "a kernels/__init__.py shadows Hugging Face's kernels"
    )
    assert (ROOT / "dllm_accel" / "kernels").resolve() == (ROOT / "kernels").resolve()


@pytest.mark.skipif(not PYPI_KERNELS, reason="Hugging Face's `kernels` package is not installed")
def test_from_the_root_kernels_is_hugging_faces_and_ours_is_dllm_accel_kernels():
    probe = python(
        "import kernels, transformers, dllm_accel.kernels\n"
        # imports names from Hugging Face's kernels
        "import transformers.integrations.hub_kernels\n"
        "print(kernels.__file__)\n"
        "print(*dllm_accel.kernels.__path__)\n"
        "import importlib.util\n"
        "print(importlib.util.find_spec('kernels.partial_attention'))\n",
        ROOT,
    )
    assert probe.returncode == 0, probe.stderr
    kernels_file, ours, submodule = probe.stdout.splitlines()
    assert not Path(kernels_file).resolve().is_relative_to(ROOT)
    assert Path(ours).resolve() == (ROOT / "kernels").resolve()
    assert submodule == "None"


def test_the_kernels_import_as_dllm_accel_kernels_from_the_root():
    pytest.importorskip("triton")
    code = "; ".join(f"import dllm_accel.kernels.{name}" for name in KERNEL_MODULES)
    probe = python(code, ROOT, TRITON_INTERPRET="1")
    assert probe.returncode == 0, probe.stderr


def test_the_wheel_installs_the_kernels_inside_dllm_accel_only(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv*",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            "outputs",
            "multirun",
            "results",
        ),
    )
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"dllm_accel/kernels/{name}.py" for name in KERNEL_MODULES} <= set(names)
    assert not [name for name in names if name.startswith("kernels/")]

    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = python(
        "import dllm_accel.kernels as k, importlib.util as u\n"
        "print(*k.__path__)\nprint(u.find_spec('dllm_accel.kernels.partial_attention').origin)",
        elsewhere,
        PYTHONPATH=str(tmp_path / "site"),
    )
    assert probe.returncode == 0, probe.stderr
    assert all(Path(line).is_relative_to(tmp_path / "site") for line in probe.stdout.splitlines())


def test_python_m_pytest_collects_every_test_from_the_root():
    """What `make test` runs: an import error in any test module (a shadowed package) fails here."""
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = collected.stdout.strip().splitlines()[-1]
    assert collected.returncode == 0 and "error" not in summary, (
        collected.stdout[-3000:] + collected.stderr
    )
    modules = {line.split("::")[0] for line in collected.stdout.splitlines() if "::" in line}
    assert modules == {f"tests/{path.name}" for path in (ROOT / "tests").glob("test_*.py")}
