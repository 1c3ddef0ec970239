"""a2sg-analyze on a tiny a2sg-train run (LIF, and I-LIF): every figure and table is written; the
instruments see every class of a test set stored class by class; --data, --device and the fast defaults."""

import json

import pytest
import torch
from torch.utils.data import TensorDataset

import a2sg_triton.cli.analyze as analyze_module
from a2sg_triton import analysis
from a2sg_triton.cli.analyze import build_parser
from a2sg_triton.cli.analyze import main as analyze
from a2sg_triton.data import build_datasets
from a2sg_triton.cli.train import main as train

TINY = ["--epochs", "2", "--limit-batches", "3", "--batch-size", "16", "--n-obs", "8", "--n-eval", "8",
        "--device", "cpu", "--backend", "torch"]
# every instrument on little data
QUICK = ["--max-batches", "1", "--batch-size", "50", "--fisher-samples", "8", "--landscape-steps", "3",
         "--tsne-samples", "40"]
FIGURES = ["firing_rates.png", "fisher.png", "landscape_1d.png", "landscape_2d.png", "membrane.png",
           "metric_vs_beta.png", "search_history.png", "spike_deletion.png", "spike_distribution.png", "tsne.png",
           "weights.png"]
ALL_INSTRUMENTS = ["spikes", "membrane", "weights", "deletion", "fisher", "landscapes", "search", "tsne"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("analyze") / "run"
    assert train([*TINY, "--epochs", "3", "--limit-batches", "20", "--out", str(run)]) == 0
    return run


def test_analyze_run(trained_run, capsys):
    capsys.readouterr()
    assert analyze([str(trained_run), *QUICK]) == 0
    out = trained_run / "analysis"
    for name in FIGURES:
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    report = json.loads((out / "analysis.json").read_text())
    assert {"spikes", "energy", "membrane", "weights", "spike_deletion", "fisher", "landscape_1d", "landscape_2d",
            "search_history", "metric_vs_beta", "tsne"} <= set(report)
    assert report["spike_deletion"][0]["fraction"] == 0.0
    assert report["energy"]["first_layer"] == "every_step"
    md = (out / "analysis.md").read_text()
    assert "## Spike deletion" in md and "## Largest Fisher eigenvalue" in md
    assert "at every one of the T steps" in md  # the energy convention, next to its number
    assert "figures and tables in" in capsys.readouterr().out


@pytest.fixture(scope="module")
def ilif_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("analyze-ilif") / "run"
    assert train([*TINY, "--epochs", "1", "--neuron", "ilif", "--levels", "3", "--T", "2", "--out", str(run)]) == 0
    return run


def test_analyze_ilif_run(ilif_run, capsys):
    """Every instrument on a digits_cnn with I-LIF (T = 2, D = 3): counts up to T·D, the rate as a mean
    count, Theorem 2 not applicable, the search sites per (t, level), one curve per site of metric-vs-β."""
    assert analyze([str(ilif_run), *QUICK]) == 0
    out = ilif_run / "analysis"
    for name in FIGURES:
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    report = json.loads((out / "analysis.json").read_text())
    layers = report["spikes"]["layers"]
    assert list(layers) == ["features.0.1", "features.2.1"]
    for layer in layers.values():
        assert layer["neuron"] == "ILIF" and layer["levels"] == 3 and len(layer["spike_count_distribution"]) == 7
        assert len(layer["step_count_distribution"]) == 4 and "mean count (0 … 3)" in layer["firing_rate_definition"]
    assert "an I-LIF count c is c spikes" in report["energy"]["convention"]
    for layer in report["membrane"].values():
        assert layer["theorem2"] is None and layer["rmd_threshold"] == 0.5 and layer["levels"] == 3
    assert report["spike_deletion"][0]["spikes_per_sample"] == pytest.approx(report["spikes"]["spikes_per_sample"])
    curves = report["metric_vs_beta"]
    assert list(curves) == [f"{name} t={t} level={level}" for name in layers for t in (0, 1) for level in (3, 2, 1)]
    assert [curves[f"features.2.1 t={t} level=3"]["tgc"] is None for t in (0, 1)] == [False, True]
    history = report["search_history"]["features.2.1"]
    assert sorted(history) == ["0", "1"] and sorted(history["1"]) == ["1", "2", "3"]
    assert list(history["1"]["3"]) == ["sgv"] and list(history["0"]["3"]) == ["tgc"]
    md = (out / "analysis.md").read_text()
    assert "| features.0.1 | count 0…3 |" in md and "a count c is c spikes" in md
    assert "| n/a |" in md and "θ is the firing threshold" in md
    assert "figures and tables in" in capsys.readouterr().out


def test_instruments_see_every_class_of_a_class_ordered_test_set(trained_run, tmp_path, monkeypatch):
    """A test set stored class by class (as CIFAR10-DVS and ImageFolder are): Fisher's first 10 samples,
    t-SNE's first 20, metric-vs-β's batch and the landscapes' first batch hold every class."""
    _, digits_test, info = build_datasets("digits")
    x, y = digits_test.tensors
    order = torch.argsort(y, stable=True)
    class_ordered = TensorDataset(x[order], y[order])
    monkeypatch.setattr(analyze_module, "build_datasets", lambda *args, **kwargs: (None, class_ordered, info))
    seen = {}

    def recording(name, function, labels_of):
        def wrapper(*args, **kwargs):
            seen[name] = labels_of(*args, **kwargs)
            return function(*args, **kwargs)
        monkeypatch.setattr(analysis, name, wrapper)

    def first_samples(n):
        return lambda model, loader, *args, **kwargs: torch.cat([y for _, y in loader])[:n]

    recording("fisher_max_eigenvalue", analysis.fisher_max_eigenvalue, first_samples(10))
    recording("loss_landscape_1d", analysis.loss_landscape_1d, first_samples(20))
    recording("metric_vs_beta", analysis.metric_vs_beta, lambda model, x0, y0, *args, **kwargs: y0)
    assert analyze([str(trained_run), "--out", str(tmp_path / "a"), "--batch-size", "20", "--max-batches", "1",
                    "--fisher-samples", "10", "--tsne-samples", "20", "--landscape-steps", "3",
                    "--skip", "spikes", "membrane", "weights", "deletion"]) == 0
    report = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert sorted(report["tsne"]["labels"]) == sorted(list(range(10)) * 2)
    assert sorted(seen["fisher_max_eigenvalue"].tolist()) == list(range(10))
    for name in ("loss_landscape_1d", "metric_vs_beta"):
        assert torch.bincount(seen[name], minlength=10).tolist() == [2] * 10, name


def test_data_option(trained_run, tmp_path, capsys):
    """--data points the analysis at the dataset's folder (a moved dataset); a missing one is one line."""
    assert analyze([str(trained_run), "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data" in err[0] and "no such folder" in err[0]
    moved = tmp_path / "moved"
    moved.mkdir()
    assert analyze([str(trained_run), "--data", str(moved), "--out", str(tmp_path / "a"), "--skip",
                    *ALL_INSTRUMENTS]) == 0
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())["config"]["data"] == str(moved)


def test_fast_defaults_are_said(trained_run, tmp_path, capsys):
    args = build_parser().parse_args(["run"])
    assert (args.device, args.max_batches, args.energy_first_layer) == ("auto", 10, "every_step")
    assert analyze([str(trained_run), "--out", str(tmp_path / "a"), "--skip", *ALL_INSTRUMENTS]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert first.startswith(f"a2sg-analyze: on {expected}; each instrument takes at most 10 batches of 100 of the "
                            "360 test samples, in a class-balanced order")


@pytest.mark.parametrize("args, message", [
    (["--max-batches", "-1"], "--max-batches must be >= 0, got -1"),
    (["--fisher-samples", "0"], "--fisher-samples must be >= 1, got 0"),
    (["--device", "gpu"], "--device gpu: expected auto, cpu, cuda or cuda:N"),
])
def test_bad_options_are_one_line(trained_run, args, message, capsys):
    assert analyze([str(trained_run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"a2sg-analyze: error: {message}"


def test_not_a_run_folder(tmp_path, capsys):
    assert analyze([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an a2sg-train run folder" in err[0]
