"""The scripts in examples/ run at tiny sizes and do what they say (A²SG moves the betas)."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--epochs", "1", "--limit-batches", "2", "--n-obs", "12", "--n-eval", "20"]


def example(name, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the scripts import their shared digits.py
    return importlib.import_module(name)


def moved(betas):
    return all(b != 0.5 for b in betas[:-1])  # a search chose every beta_t with t < T-1 afresh


def test_use_lif_op(monkeypatch):
    result = example("use_lif_op", monkeypatch).main(TINY)
    assert moved(result["beta"]) and 0 <= result["accuracy"] <= 1


@pytest.mark.parametrize("keep", [False, True])
def test_spikingjelly_to_a2sg(monkeypatch, keep):
    pytest.importorskip("spikingjelly")
    result = example("spikingjelly_to_a2sg", monkeypatch).main(TINY + ["--keep-surrogate"] * keep)
    assert result["surrogates"] == (["atan", "sigmoid"] if keep else ["asy", "asy"])
    assert all(moved(betas) for betas in result["betas"])


def test_compile_and_ddp_under_torchrun_with_two_processes(tmp_path):
    """Two gloo ranks, torch.compile(DDP(model)): both ranks end with the same searched betas."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(EXAMPLES / "compile_and_ddp.py"), *TINY, "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] and ranks[0]["world"] == 2
    assert all(moved(betas) for betas in ranks[0]["betas"].values())
    assert "epoch 0:" in result.stdout
