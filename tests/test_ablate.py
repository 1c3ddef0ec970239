"""a2sg-ablate on a tiny budget: the table, the baseline overhead and reuse of finished runs."""

import json

from a2sg_triton.ablate import main

TINY = ["--epochs", "1", "--limit-batches", "2", "--batch-size", "16", "--n-obs", "6", "--n-eval", "6",
        "--device", "cpu", "--backend", "torch"]


def test_ablation_table_and_reuse(tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["--seeds", "2", "--out", str(out), "--configs", "BOX", "A²SG (ASY + ST-ASG)", *TINY]
    assert main(args) == 0
    report = json.loads((out / "ablation.json").read_text())
    rows = {r["config"]: r for r in report["rows"]}
    assert set(rows) == {"BOX", "A²SG (ASY + ST-ASG)"}
    assert all(r["seeds"] == 2 for r in rows.values())
    assert rows["BOX"]["overhead"] == 0.0 and rows["BOX"]["search_seconds"] == 0.0
    assert rows["A²SG (ASY + ST-ASG)"]["search_seconds"] > 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "asy-spatiotemporal-seed0", "asy-spatiotemporal-seed1", "box-none-seed0", "box-none-seed1"]
    md = (out / "ablation.md").read_text()
    assert "| BOX | 2 |" in md and "Machine:" in md and report["machine"]["torch"]

    checkpoint = out / "box-none-seed0" / "checkpoint.pt"
    stamp = checkpoint.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # finished runs are reused, not trained again
    assert checkpoint.stat().st_mtime_ns == stamp
    assert "[a2sg-ablate]" not in capsys.readouterr().out


def test_bad_seeds(tmp_path, capsys):
    assert main(["--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
