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
    a2sg = rows["A²SG (ASY + ST-ASG)"]
    assert a2sg["searches"] == 2 * 2 * 4 and a2sg["fell_back"] + a2sg["flat"] <= a2sg["searches"]  # 2 seeds, 2 LIFs, T=4
    assert rows["BOX"]["searches"] == 0 and rows["BOX"]["search_share_mean"] == 0.0
    assert 0 < a2sg["search_share_mean"] < 1 and 0 <= a2sg["at_range_ends_mean"] <= 1
    for r in rows.values():
        assert r["best_test_acc_mean"] >= r["test_acc_mean"] and r["train_loss_mean"] > 0
        assert r["fisher_lambda_max_mean"] is None
    for png in ("ablation_curves.png", "ablation_beta.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    checkpoint = out / "box-none-seed0" / "checkpoint.pt"
    stamp = checkpoint.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # finished runs are reused, not trained again
    assert checkpoint.stat().st_mtime_ns == stamp
    assert "[a2sg-ablate]" not in capsys.readouterr().out


def test_bad_seeds(tmp_path, capsys):
    assert main(["--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


def test_spread_and_fisher(tmp_path, monkeypatch):
    """A mean is marked beyond the seed spread only when the gap exceeds the two stds together, and
    --fisher N computes (then caches) each run's middle-layer λ_max."""
    from a2sg_triton import ablate

    base = [{"test_acc": a, "best_test_acc": a, "train_loss": 1.0, "spikes_per_sample": 10.0, "epoch_seconds": 1.0,
             "search_seconds": 0.0, "search_share": 0.0, "at_range_ends": 0.0, "fell_back": 0, "flat": 0,
             "searches": 0, "fisher_lambda_max": None} for a in (0.5, 0.7)]  # mean 0.6, std 0.141
    near = [dict(s, test_acc=s["test_acc"] + 0.25) for s in base]  # gap 0.25 < 0.283
    far = [dict(s, test_acc=s["test_acc"] + 0.3) for s in base]  # gap 0.3 > 0.283
    rows = {r["config"]: r for r in ablate.table({"BOX": base, "near": near, "far": far})}
    assert rows["near"]["beyond_spread"] == [] and rows["far"]["beyond_spread"] == ["test_acc"]
    assert "| far | 2 | 90.00 ± 14.14 * |" in ablate.markdown(list(rows.values()), ablate.machine(), "cmd")

    out = tmp_path / "abl"
    calls = []
    real = ablate.fisher_max_eigenvalue
    monkeypatch.setattr(ablate, "fisher_max_eigenvalue", lambda *a, **k: calls.append(k) or real(*a, **k))
    args = ["--seeds", "1", "--out", str(out), "--configs", "BOX", "--fisher", "3", *TINY]
    assert main(args) == 0
    row = json.loads((out / "ablation.json").read_text())["rows"][0]
    cached = json.loads((out / "box-none-seed0" / "fisher.json").read_text())
    assert calls == [{"n_samples": 3}] and cached["layer"] == "features.2.0.0"  # digits_cnn: conv, conv, fc
    assert row["fisher_lambda_max_mean"] == cached["lambda_max"] >= 0
    assert main(args) == 0 and len(calls) == 1  # cached
