"""a2sg-train end to end on the embedded digits data: outputs, exact resume, DDP, bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch

from a2sg_triton.cli.train import main

TINY = ["--epochs", "2", "--limit-batches", "3", "--batch-size", "16", "--n-obs", "8", "--n-eval", "8",
        "--device", "cpu", "--backend", "torch"]


def run(args, capsys=None):
    code = main([str(a) for a in args])
    return code, (capsys.readouterr() if capsys is not None else None)


def test_cli_run_writes_metrics_plots_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code, captured = run([*TINY, "--out", out], capsys)
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for row in rows:
        assert 0 <= row["test_acc"] <= 1 and row["train_loss"] > 0
        assert set(row["beta"]) == set(row["spikes_per_sample"]) == set(row["firing_rate"]) and row["beta"]
        assert all(len(b) == 4 for b in row["beta"].values())
        assert row["epoch_seconds"] > 0 and row["search_seconds"] > 0
        assert 0 <= row["firing_rate_mean"] <= 1
        assert row["search"]["searches"] == row["search"]["widths"] == 8  # 2 layers x T = 4, every epoch
    assert any(b != 0.5 for betas in rows[0]["beta"].values() for b in betas)  # epoch 0 searched
    for png in ("beta.png", "accuracy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["format"] == "a2sg-train/1" and state["epoch"] == 1 and len(state["metrics"]) == 2
    assert json.loads((out / "config.json").read_text())["model"] == "digits_cnn"
    assert "test accuracy" in captured.out and "run folder" in captured.out and "searches 16:" in captured.out
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_resume_equals_uninterrupted(tmp_path):
    straight, staged = tmp_path / "straight", tmp_path / "staged"
    assert run([*TINY, "--out", straight])[0] == 0
    assert run([*TINY, "--out", staged, "--stop-after", "1"])[0] == 0
    assert len((staged / "metrics.jsonl").read_text().splitlines()) == 1
    assert run(["--resume", staged])[0] == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(staged / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for name, beta in a["controller"]["betas"].items():
        assert torch.equal(beta, b["controller"]["betas"][name])
    untimed = [[{k: v for k, v in r.items() if "seconds" not in k} for r in s["metrics"]] for s in (a, b)]
    assert untimed[0] == untimed[1]


def test_compiled_training_matches_eager(tmp_path):
    """--compile: same metrics and betas as the eager run (the search runs through the opaque op)."""
    torch._dynamo.reset()
    rows = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        assert run([*TINY, "--epochs", "1", "--out", tmp_path / name, *extra])[0] == 0
        rows[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert rows["compiled"][0]["beta"] == rows["eager"][0]["beta"]
    assert rows["compiled"][0]["train_loss"] == pytest.approx(rows["eager"][0]["train_loss"], rel=1e-4)
    assert rows["compiled"][0]["test_acc"] == rows["eager"][0]["test_acc"]


def test_memory_saving_flag(tmp_path, monkeypatch):
    """Auto by default (on for CPU input, as here; off on a GPU, where it still costs step time);
    --no-memory-saving builds the model without it and trains to the same metrics and betas (the two
    differ by fp32 rounding of tdBN's normalisation, docs/memory.md)."""
    import a2sg_triton.cli.train as train_module

    built = []
    build_model = train_module.build_model

    def recording_build_model(*args, **kwargs):
        built.append(build_model(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(train_module, "build_model", recording_build_model)
    rows = {}
    for name, extra in (("auto", []), ("off", ["--no-memory-saving"])):
        assert run([*TINY, "--epochs", "1", "--out", tmp_path / name, *extra])[0] == 0
        rows[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert json.loads((tmp_path / name / "config.json").read_text())["memory_saving"] == (
            None if name == "auto" else False)
    assert [model.memory_saving for model in built] == [None, False]
    assert built[0].saves_memory(torch.zeros(1)) and not built[0].saves_memory(torch.empty(1, device="meta"))
    assert not built[1].saves_memory(torch.zeros(1))
    assert rows["off"][0]["beta"] == rows["auto"][0]["beta"]
    assert rows["off"][0]["train_loss"] == pytest.approx(rows["auto"][0]["train_loss"], rel=1e-4)
    assert rows["off"][0]["test_acc"] == rows["auto"][0]["test_acc"]


def checkpoint(out):
    return torch.load(out / "checkpoint.pt", weights_only=False)


def assert_unwrapped_names(state, epochs):
    """The controller's state names the layers as the plain model does (the spike counter's names,
    which every metrics row uses), and every epoch searched."""
    names = set(state["metrics"][0]["beta"])
    assert not any(n.startswith(("module.", "_orig_mod.")) for n in names)
    assert set(state["controller"]["betas"]) == {row["layer"] for row in state["controller"]["history"]} == names
    assert [row["epoch"] for row in state["metrics"]] == list(range(epochs))
    assert {row["epoch"] for row in state["controller"]["history"]} == set(range(epochs))


def test_resume_with_and_without_compile(tmp_path):
    """A plain run's checkpoint resumes under --compile, and that one eagerly (--no-compile)."""
    torch._dynamo.reset()
    out = tmp_path / "run"
    assert run([*TINY, "--epochs", "3", "--stop-after", "1", "--out", out])[0] == 0
    assert run(["--resume", out, "--compile", "--stop-after", "1"])[0] == 0
    state = checkpoint(out)
    assert state["config"]["compile"] is True
    assert_unwrapped_names(state, 2)
    assert run(["--resume", out, "--no-compile"])[0] == 0
    state = checkpoint(out)
    assert state["config"]["compile"] is False
    assert_unwrapped_names(state, 3)


@pytest.mark.parametrize("args, message", [
    (["--model", "alexnet"], "--model: invalid choice"),
    (["--dataset", "mnist"], "--dataset: invalid choice"),
    (["--surrogate", "gauss"], "--surrogate: invalid choice"),
    (["--adapt", "both"], "--adapt: invalid choice"),
    (["--strategy", "random"], "--strategy: invalid choice"),
    (["--T", "0"], "--T must be >= 1"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--surrogate", "asy", "--h", "0.2"], "--h must be >= 0.5"),
    (["--data", "/nonexistent/data"], "--data /nonexistent/data: no such folder"),
    (["--dataset", "cifar10"], "--dataset cifar10 needs --data DIR"),
    (["--preset", "paper-cifar100"], "--dataset cifar100 needs --data DIR"),
    (["--T", "two"], "argument --T: invalid int value"),
])
def test_bad_input_is_one_line(args, message, tmp_path, capsys):
    code, captured = run([*args, "--out", tmp_path / "x"], capsys)
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("a2sg-train: error:") and message in lines[0]
    assert not (tmp_path / "x").exists()


def test_dataset_files_missing_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["--model", "vgg16", "--dataset", "cifar10", "--data", tmp_path / "empty", "--out", tmp_path / "x"]
    code, captured = run(args, capsys)
    assert code == 2 and len(captured.err.strip().splitlines()) == 1
    assert "cifar-10-batches-py" in captured.err and not (tmp_path / "x").exists()


def test_existing_run_is_refused_and_checkpoint_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert run([*TINY, "--epochs", "1", "--out", out])[0] == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    code, captured = run([*TINY, "--out", out], capsys)
    assert code == 2 and "holds another run" in captured.err
    code, captured = run(["--resume", out, "--T", "6"], capsys)
    assert code == 2 and "the checkpoint is for T=4, not 6" in captured.err
    code, captured = run(["--resume", out, "--model", "vgg16"], capsys)
    assert code == 2 and "model='digits_cnn'" in captured.err
    code, captured = run(["--resume", tmp_path / "empty"], capsys)
    assert code == 2 and "no checkpoint.pt" in captured.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing overwritten

    state = checkpoint(out)
    state["model"].pop(next(iter(state["model"])))
    torch.save(state, out / "checkpoint.pt")
    code, captured = run(["--resume", out], capsys)
    assert code == 2 and len(captured.err.strip().splitlines()) == 1
    assert "the checkpoint's model state does not fit this run" in captured.err and "Missing key" in captured.err
    (out / "checkpoint.pt").write_bytes(before["checkpoint.pt"])
    state = checkpoint(out)  # the controller of another model: layers this one does not have
    for key in ("betas", "armed"):
        state["controller"][key] = {f"other.{name}": value for name, value in state["controller"][key].items()}
    torch.save(state, out / "checkpoint.pt")
    code, captured = run(["--resume", out], capsys)
    assert code == 2 and len(captured.err.strip().splitlines()) == 1
    assert "the checkpoint's controller state does not fit this run" in captured.err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "checkpoint.pt"} == {
        name: data for name, data in before.items() if name != "checkpoint.pt"}

    (out / "checkpoint.pt").write_bytes(before["checkpoint.pt"][: len(before["checkpoint.pt"]) // 2])
    code, captured = run(["--resume", out], capsys)
    assert code == 2 and "checkpoint.pt is unreadable" in captured.err
    assert (out / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]

    assert run([*TINY, "--epochs", "1", "--out", out, "--force"])[0] == 0  # --force starts afresh


@pytest.mark.slow
def test_torchrun_two_processes_and_resume_across_ddp(tmp_path):
    """Two DDP processes train an epoch; that checkpoint resumes in one plain process, and the plain
    run's checkpoint resumes under torchrun again."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def torchrun(*args):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 "2", "-m", "a2sg_triton.cli.train", *map(str, args)],
                                capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]

    torchrun(*TINY[2:], "--epochs", "3", "--stop-after", "1", "--out", out)
    state = checkpoint(out)
    assert state["epoch"] == 0 and state["metrics"][0]["search_seconds"] > 0
    assert_unwrapped_names(state, 1)
    assert run(["--resume", out, "--stop-after", "1"])[0] == 0
    torchrun("--resume", out)
    assert_unwrapped_names(checkpoint(out), 3)


def test_digits_deep_preset_is_box_with_st_asg():
    """The deep study's best configuration (docs/results/digits-deep-ablation.md), flags still override it."""
    from a2sg_triton.cli.config import resolve_config

    config, _, _ = resolve_config(["--preset", "digits-deep"])
    assert (config["model"], config["surrogate"], config["adapt"], config["beta_range"]) == (
        "digits_vgg", "box", "spatiotemporal", (0.05, 1.0))
    assert resolve_config(["--preset", "digits-deep", "--surrogate", "asy"])[0]["surrogate"] == "asy"


# -- the neuron and RMP-loss flags ---------------------------------------------------------------


def test_neuron_and_rmp_flags_parse_and_default_off():
    from a2sg_triton.cli.config import resolve_config

    config, flags, _ = resolve_config([])
    assert (config["neuron"], config["rmp_loss"]) == ("lif", 0.0) and not flags
    config, flags, _ = resolve_config(["--neuron", "plif", "--rmp-loss", "0.25"])
    assert (config["neuron"], config["rmp_loss"]) == ("plif", 0.25) == (flags["neuron"], flags["rmp_loss"])


@pytest.mark.parametrize("args, message", [
    (["--neuron", "izhikevich"], "argument --neuron: invalid choice: 'izhikevich'"),
    (["--levels", "0"], "--levels must be >= 1, got 0"),
    (["--neuron", "ilif", "--rmp-loss", "0.1"], "--rmp-loss regularises the membranes of binary-spike neurons"),
    (["--model", "sdt3", "--rmp-loss", "0.1"], "--rmp-loss regularises the membranes of binary-spike neurons"),
    (["--rmp-loss", "-0.1"], "--rmp-loss must be a finite number >= 0, got -0.1"),
    (["--rmp-loss", "nan"], "--rmp-loss must be a finite number >= 0, got nan"),
    (["--rmp-loss", "inf"], "--rmp-loss must be a finite number >= 0, got inf"),
    (["--neuron", "plif", "--tau", "1"], "--tau must be > 1 with --neuron plif"),
])
def test_bad_neuron_and_rmp_flags_are_one_line(args, message, tmp_path, capsys):
    code, captured = run([*args, "--out", tmp_path / "x"], capsys)
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "x").exists()


def test_table_7_and_8_presets(tmp_path):
    """paper-cifar10-plif is paper-cifar10 with PLIF neurons; paper-cifar100-rmp is paper-cifar100 with
    the RMP-loss term (docs/training.md)."""
    from a2sg_triton.cli.config import resolve_config

    def preset(name):
        return resolve_config(["--preset", name, "--data", str(tmp_path)])[0]

    plif, rmp = preset("paper-cifar10-plif"), preset("paper-cifar100-rmp")
    assert (plif["model"], plif["dataset"], plif["neuron"], plif["rmp_loss"]) == ("vgg16", "cifar10", "plif", 0.0)
    assert (rmp["model"], rmp["dataset"], rmp["neuron"], rmp["rmp_loss"]) == ("vgg16", "cifar100", "lif", 0.1)
    assert plif == dict(preset("paper-cifar10"), neuron="plif")
    assert rmp == dict(preset("paper-cifar100"), rmp_loss=0.1)


def test_plif_run_with_rmp_loss(tmp_path, capsys):
    """--neuron plif --rmp-loss: every PLIF layer is counted, searched and logged, the RMP term is logged and
    changes the training; --rmp-loss 0 is the run without the flag, bit for bit."""
    runs = {}
    for name, extra in (("plain", []), ("zero", ["--rmp-loss", "0"]), ("rmp", ["--rmp-loss", "0.5"])):
        assert run([*TINY, "--epochs", "1", "--neuron", "plif", "--out", tmp_path / name, *extra])[0] == 0
        runs[name] = checkpoint(tmp_path / name)
    captured = capsys.readouterr()
    assert "digits_cnn on digits, plif, asy + spatiotemporal, T=4, RMP-loss lambda 0.5" in captured.out
    row = runs["rmp"]["metrics"][0]
    assert set(row["beta"]) == set(row["spikes_per_sample"]) == {"features.0.1", "features.2.1"}
    assert row["search"]["searches"] == 8 and any(b != 0.5 for betas in row["beta"].values() for b in betas)
    assert row["train_rmp_loss"] > 0 and "train_rmp_loss" not in runs["plain"]["metrics"][0]
    assert runs["rmp"]["config"]["neuron"] == "plif" and runs["rmp"]["config"]["rmp_loss"] == 0.5
    assert {k for k in runs["rmp"]["model"] if k.endswith(".w")} == {"features.0.1.w", "features.2.1.w"}
    for key, value in runs["plain"]["model"].items():
        assert torch.equal(value, runs["zero"]["model"][key]), key
    assert not all(torch.equal(value, runs["rmp"]["model"][key]) for key, value in runs["plain"]["model"].items())


def test_sdt3_brings_its_neuron_unless_told_otherwise(tmp_path):
    """--model sdt3 over the digits preset: E-SpikeFormer's I-LIF, T x D = 1 x 4, decay 1/4, box; flags win;
    paper-imagenet-sdt3 is Table 3's setting."""
    from a2sg_triton.cli.config import resolve_config

    config = resolve_config(["--model", "sdt3"])[0]
    assert (config["neuron"], config["levels"], config["T"], config["tau"], config["surrogate"]) == (
        "ilif", 4, 1, 4.0, "box")
    config = resolve_config(["--model", "sdt3", "--neuron", "lif", "--T", "2", "--levels", "3"])[0]
    assert (config["neuron"], config["levels"], config["T"], config["surrogate"]) == ("lif", 3, 2, "box")
    assert resolve_config(["--model", "digits_vgg"])[0]["neuron"] == "lif"
    imagenet = resolve_config(["--preset", "paper-imagenet-sdt3", "--data", str(tmp_path)])[0]
    assert (imagenet["model"], imagenet["dataset"], imagenet["neuron"], imagenet["levels"], imagenet["T"],
            imagenet["batch_size"], imagenet["lr"], imagenet["lr_start"], imagenet["warmup_epochs"]) == (
        "sdt3-10m", "imagefolder", "ilif", 4, 1, 360, 6e-4, 1e-6, 5)


def test_ilif_run_logs_every_level(tmp_path, capsys):
    """--neuron ilif: every I-LIF layer is searched per (t, level); metrics.jsonl holds [T, D] widths,
    beta.png a line per (t, level); a resume that changes --levels is refused."""
    out = tmp_path / "run"
    assert run([*TINY, "--epochs", "1", "--neuron", "ilif", "--levels", "2", "--stop-after", "1", "--out", out])[0] == 0
    state = checkpoint(out)
    row = state["metrics"][0]
    assert set(row["beta"]) == {"features.0.1", "features.2.1"}
    assert all(len(betas) == 4 and all(len(b) == 2 for b in betas) for betas in row["beta"].values())
    assert row["search"]["searches"] == 2 * 4 * 2 and row["search"]["widths"] == 16
    assert (out / "beta.png").exists() and "digits_cnn on digits, ilif" in capsys.readouterr().out
    code, captured = run(["--resume", out, "--levels", "3"], capsys)
    assert code == 2 and "the checkpoint is for levels=2, not 3" in captured.err


def test_beta_series_labels_timesteps_and_levels():
    from a2sg_triton.cli.report import beta_series

    assert list(beta_series([0.1, 0.2])) == [("t0", 0.1), ("t1", 0.2)]
    assert list(beta_series([[0.1, 0.2], [0.3, 0.4]])) == [("t0/level1", 0.1), ("t0/level2", 0.2),
                                                           ("t1/level1", 0.3), ("t1/level2", 0.4)]


def test_checkpoint_from_before_the_neuron_flags_resumes(tmp_path):
    out = tmp_path / "run"
    assert run([*TINY, "--stop-after", "1", "--out", out])[0] == 0
    state = checkpoint(out)
    for key in ("neuron", "rmp_loss", "levels"):
        del state["config"][key]
    torch.save(state, out / "checkpoint.pt")
    assert run(["--resume", out, "--neuron", "lif"])[0] == 0
    state = checkpoint(out)
    assert state["epoch"] == 1 and (state["config"]["neuron"], state["config"]["rmp_loss"]) == ("lif", 0.0)


class _RunsCode:
    """Pickles to a call of print: loading it with a full pickle would run that call."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (print, (f"ran code from the checkpoint {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    """Run folders are shared: --resume and a2sg-analyze load checkpoints with weights_only, so a
    pickle that names a callable is refused in one line and never runs."""
    from a2sg_triton.cli.analyze import main as analyze

    out = tmp_path / "run"
    assert run([*TINY, "--epochs", "1", "--out", out])[0] == 0
    capsys.readouterr()
    state = checkpoint(out)
    state["metrics"][0]["note"] = _RunsCode("MARKER")
    torch.save(state, out / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, captured = run(["--resume", out], capsys)
    assert code == 2 and len(captured.err.strip().splitlines()) == 1, captured.err
    assert "holds objects other than tensors and plain data" in captured.err and "MARKER" not in captured.out
    assert analyze([str(out)]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and "holds objects other than tensors" in captured.err
    assert "MARKER" not in captured.out + captured.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written
