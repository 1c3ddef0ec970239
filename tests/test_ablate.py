"""a2sg-ablate on a tiny budget: the table, the baseline overhead, reuse of finished runs, refusing
(or with --force retraining) runs with other settings, and resuming a half-finished run."""

import json

from a2sg_triton.cli.ablate import main
from a2sg_triton.cli.train import main as train

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
    printed = capsys.readouterr().out
    assert f"[a2sg-ablate] BOX, seed 0: reusing the finished run in {out / 'box-none-seed0'}" in printed
    assert " -> " not in printed and "resuming" not in printed
    # machine options may differ from the stored run's
    assert main([*args, "--workers", "0", "--device", "cpu"]) == 0
    assert checkpoint.stat().st_mtime_ns == stamp


def test_a_run_with_other_settings_is_refused_or_retrained(tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["--seeds", "1", "--out", str(out), "--configs", "BOX", "--fisher", "3", *TINY]
    assert main(args) == 0
    table = (out / "ablation.md").read_text()
    capsys.readouterr()
    assert main([*args, "--lr", "0.001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"a2sg-ablate: error: {out / 'box-none-seed0'} holds a run with "
                                               "other settings (lr=0.005 there, 0.001 asked)")
    assert "--force to retrain it" in err[0]
    assert (out / "ablation.md").read_text() == table  # the old rows are not printed under the new command
    assert main([*args, "--lr", "0.001", "--force"]) == 0
    assert "(it held other settings: lr=0.005 there, 0.001 asked)" in capsys.readouterr().out
    assert json.loads((out / "box-none-seed0" / "config.json").read_text())["lr"] == 0.001
    command = " ".join(["a2sg-ablate", *args, "--lr", "0.001", "--force"])
    assert f"Command: `{command}`" in (out / "ablation.md").read_text()
    # the Fisher value cached for the old run is not taken for the retrained one
    assert json.loads((out / "box-none-seed0" / "fisher.json").read_text())["run"]["config"]["lr"] == 0.001


def test_a_half_finished_run_is_resumed(tmp_path, capsys):
    """Also for a configuration with extra flags (--beta-range: a tuple in the checkpoint, a list in
    config.json), which must compare equal to the requested one."""
    out = tmp_path / "abl"
    run_dir = out / "asy-spatiotemporal-beta-0.2-1.0-seed0"
    flags = [*TINY, "--epochs", "2"]
    assert train([*flags, "--beta-range", "0.2", "1.0", "--surrogate", "asy", "--adapt", "spatiotemporal", "--seed",
                  "0", "--out", str(run_dir), "--stop-after", "1"]) == 0
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    capsys.readouterr()
    args = ["--seeds", "1", "--out", str(out), "--configs", "A²SG, β in [0.2, 1]", *flags]
    assert main(args) == 0
    assert f"[a2sg-ablate] A²SG, β in [0.2, 1], seed 0: resuming {run_dir} at epoch 2" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0, 1] and rows[0] == first  # epoch 0 kept, not trained again
    assert main(args) == 0
    assert "reusing the finished run" in capsys.readouterr().out


def test_bad_seeds(tmp_path, capsys):
    assert main(["--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


def test_spread_and_fisher(tmp_path, monkeypatch):
    """A mean is marked beyond the seed spread only when the gap exceeds the two stds together, and
    --fisher N computes (then caches) each run's middle-layer λ_max."""
    from a2sg_triton.cli import ablate

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
