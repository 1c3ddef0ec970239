"""bench/gpu_check.sh, the prepared GPU run, works from a plain copy of the tree with nothing installed.

The dry run (``--dry-run``: the same steps on the CPU at tiny sizes, kernels under the Triton
interpreter) runs here from a copy of the files git would hand over (tracked and untracked, not
ignored; no .git), with an interpreter that sees this interpreter's packages (torch, triton,
botorch, gpytorch, pytest) minus the project: a fresh venv whose one .pth file points at a folder of
links to every site-packages entry except a2sg_triton's own (its editable-install hook and
dist-info). The test first checks that this interpreter cannot import a2sg_triton.
"""

import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["setup", "tests", "lif-target", "lif-grid", "search", "memory", "neurons"]
BUDGET_S = 540  # the real run must end within 9 minutes


def git(*args):
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


def plain_copy(dest):
    """The files a copy of the working tree holds: tracked and untracked-not-ignored, no .git."""
    try:
        names = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but caches
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", "__pycache__", ".whl", "runs", "*.egg-info"))
        return
    for name in filter(None, names):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the checkout is not there to copy
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def project_free_python(tmp_path):
    """-> a venv's python that sees this interpreter's packages but not a2sg_triton."""
    deps = tmp_path / "deps"
    deps.mkdir()
    site_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    for site_dir in map(Path, site_dirs):
        if not site_dir.is_dir():
            continue
        for entry in site_dir.iterdir():
            name = entry.name.lower()
            # .pth files are where an editable install hooks in; a links folder's are never read anyway
            if name.endswith(".pth") or name.startswith(("__editable__", "a2sg_triton", "a2sg-triton")):
                continue
            if not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    (purelib,) = env_dir.glob("lib/python3*/site-packages")
    (purelib / "deps.pth").write_text(f"{deps}\n")
    return env_dir / "bin" / "python3"


def probe_wheel(folder):
    """A minimal pure-Python wheel, to check that the script installs .whl/ and puts it on the path."""
    folder.mkdir()
    name, dist_info = "a2sg_dry_probe", "a2sg_dry_probe-0.0.1.dist-info"
    with zipfile.ZipFile(folder / f"{name}-0.0.1-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}.py", "")
        wheel.writestr(f"{dist_info}/METADATA", "Metadata-Version: 2.1\nName: a2sg-dry-probe\nVersion: 0.0.1\n")
        wheel.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
                                             "Tag: py3-none-any\n")
        wheel.writestr(f"{dist_info}/RECORD", "")


def clean_env(python, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET", "VIRTUAL_ENV")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def summary_steps(text):
    """{step: rc} from summary.txt."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^step (\S+)\s+rc=(\d+)", text, re.M)}


def test_stage_package_lays_out_the_installed_package(tmp_path):
    spec = importlib.util.spec_from_file_location("stage_package", ROOT / "bench" / "stage_package.py")
    stage_package = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage_package)
    assert stage_package.stage(tmp_path) == [tmp_path / "a2sg_triton"]
    staged = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.py")}
    expected = {f"a2sg_triton/{p.relative_to(ROOT / 'a2sg_triton').as_posix()}"
                for p in (ROOT / "a2sg_triton").rglob("*.py") if "__pycache__" not in p.parts}
    expected |= {f"a2sg_triton/kernels/{p.name}" for p in (ROOT / "kernels").glob("*.py")}
    assert staged == expected


def test_usage_error():
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.slow
def test_a_broken_setup_is_recorded_and_fails_the_run(tmp_path):
    tree, out = tmp_path / "tree", tmp_path / "out"
    plain_copy(tree)
    (tree / "kernels" / "__init__.py").unlink()  # kernels/ is no longer a package
    python = project_free_python(tmp_path)
    result = subprocess.run(["bash", str(tree / "bench" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path,
                            env=clean_env(python, OUT=str(out)), capture_output=True, text=True, timeout=120)
    summary = (out / "summary.txt").read_text()
    assert result.returncode == 1, result.stdout[-3000:]
    assert summary_steps(summary) == {"setup": 1}
    assert summary.rstrip().endswith("failed steps: 1")
    assert "no __init__.py" in (out / "setup.log").read_text()


@pytest.mark.slow
def test_dry_run_from_a_plain_copy(tmp_path):
    tree, out = tmp_path / "tree", tmp_path / "out"
    plain_copy(tree)
    assert not (tree / ".git").exists() and (tree / "kernels" / "lif.py").is_file()
    probe_wheel(tree / ".whl")
    python = project_free_python(tmp_path)
    probe = subprocess.run([str(python), "-c", "import torch, triton, botorch, gpytorch, pytest; import a2sg_triton"],
                           cwd=tmp_path, env=clean_env(python), capture_output=True, text=True)
    assert "No module named 'a2sg_triton'" in probe.stderr, probe.stderr[-2000:]  # nothing else missing

    sha = "0123456789abcdef0123456789abcdef01234567"  # the copy has no .git: the sha comes from the caller
    result = subprocess.run(["bash", str(tree / "bench" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path,
                            env=clean_env(python, OUT=str(out), A2SG_GIT_SHA=sha), capture_output=True,
                            text=True, timeout=600)
    summary = (out / "summary.txt").read_text()
    assert result.returncode == 0, summary + result.stdout[-6000:]

    # every step ran and passed; the real run's limits fit the 9-minute budget
    assert summary_steps(summary) == dict.fromkeys(STEPS, 0)
    assert summary.rstrip().endswith("failed steps: 0")
    assert f"git_sha {sha}" in summary
    worst = int(re.search(r"worst_case_seconds (\d+)", summary)[1])
    assert worst <= BUDGET_S

    # the staged package, not the copy's a2sg_triton/ (which lacks kernels/), is what imported
    setup = (out / "setup.log").read_text()
    staged = re.search(r"a2sg_triton\.kernels\.lif from (\S+)", setup)[1]
    assert "a2sg-gpu-check" in staged and not staged.startswith((str(tree), str(ROOT)))
    assert "from .whl/: a2sg-dry-probe 0.0.1" in setup

    tests_log = (out / "tests.log").read_text()
    passed = re.search(r"^(\d+) passed", tests_log, re.M)
    assert passed and int(passed[1]) >= 10, tests_log[-3000:]
    assert not re.search(r"\d+ (failed|error)", tests_log)

    lif_rows = [json.loads(line) for line in (out / "lif.jsonl").read_text().splitlines()]
    triton_rows = [r for r in lif_rows if r["provider"] == "triton"]
    assert {r["mode"] for r in triton_rows} == {"fwd", "bwd", "fwdbwd"}
    assert {r["T"] for r in triton_rows} == {2, 4}  # both LIF steps wrote rows
    for row in lif_rows:
        assert row["git_sha"] == sha and row["triton_interpret"] is True and row["median_ms"] > 0
        assert Path(row["package_dir"]).parent == Path(staged).parents[2]

    search_rows = [json.loads(line) for line in (out / "search.jsonl").read_text().splitlines()]
    fused = [r for r in search_rows if r.get("provider") == "fused"]
    assert fused and all("triton" in r["impl"] and r["sgv_max_rel_diff_vs_eager"] < 1e-3 for r in fused)
    assert {r["strategy"] for r in search_rows if r["part"] == "search"} == {"bo", "grid"}

    memory_rows = [json.loads(line) for line in (out / "memory-cpu.jsonl").read_text().splitlines()]
    assert [(r["model"], r["memory_saving"]) for r in memory_rows] == [("digits_cnn", False), ("digits_cnn", True)]
    assert memory_rows[1]["x_plain"] < 0.4 and all(r["git_sha"] == sha for r in memory_rows)

    neuron_rows = [json.loads(line) for line in (out / "neurons.jsonl").read_text().splitlines()]
    assert {(r["neuron"], r["mode"]) for r in neuron_rows if r["provider"] == "triton"} == {
        (neuron, mode) for neuron in ("plif", "ilif") for mode in ("fwd", "bwd", "fwdbwd")}
    assert all(r["git_sha"] == sha and r["median_ms"] > 0 for r in neuron_rows)
