"""a2sg-analyze on a tiny a2sg-train run: every figure and table is written."""

import json

from a2sg_triton.analyze import main as analyze
from a2sg_triton.train import main as train

TINY = ["--epochs", "2", "--limit-batches", "3", "--batch-size", "16", "--n-obs", "8", "--n-eval", "8",
        "--device", "cpu", "--backend", "torch"]
FIGURES = ["firing_rates.png", "fisher.png", "landscape_1d.png", "landscape_2d.png", "membrane.png",
           "metric_vs_beta.png", "search_history.png", "spike_deletion.png", "spike_distribution.png", "tsne.png",
           "weights.png"]


def test_analyze_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert train([*TINY, "--epochs", "3", "--limit-batches", "20", "--out", str(run)]) == 0
    capsys.readouterr()
    assert analyze([str(run), "--max-batches", "1", "--batch-size", "50", "--fisher-samples", "8",
                    "--landscape-steps", "3", "--tsne-samples", "40"]) == 0
    out = run / "analysis"
    for name in FIGURES:
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    report = json.loads((out / "analysis.json").read_text())
    assert {"spikes", "energy", "membrane", "weights", "spike_deletion", "fisher", "landscape_1d", "landscape_2d",
            "search_history", "metric_vs_beta", "tsne"} <= set(report)
    assert report["spike_deletion"][0]["fraction"] == 0.0
    md = (out / "analysis.md").read_text()
    assert "## Spike deletion" in md and "## Largest Fisher eigenvalue" in md
    assert "figures and tables in" in capsys.readouterr().out


def test_not_a_run_folder(tmp_path, capsys):
    assert analyze([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an a2sg-train run folder" in err[0]
