"""The three commands, run both ways a user runs them: stderr starts with the command's own words.

With torch >= 2.14, importing BoTorch used to print linear_operator's torch.jit.script FutureWarning
before anything of ours; a bad flag must still be one clean error (usage line and/or
"a2sg-<tool>: error:"), exit status 2, no traceback.
"""

import subprocess
import sys

import pytest

# pyproject.toml's [project.scripts]: command -> (module, bad arguments)
COMMANDS = {
    "a2sg-train": ("a2sg_triton.cli.train", ["--model", "nope"]),
    "a2sg-analyze": ("a2sg_triton.cli.analyze", ["RUN", "--skip", "nope"]),
    "a2sg-ablate": ("a2sg_triton.cli.ablate", ["--seeds", "x"]),
}


@pytest.mark.parametrize("form", ["console script", "python -m"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_flag_stderr_starts_with_our_error(command, form, tmp_path):
    module, bad = COMMANDS[command]
    if form == "python -m":
        argv = [sys.executable, "-m", module]
    else:  # what the script pip writes for `command = "module:main"` does
        argv = [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]
    result = subprocess.run([*argv, *bad], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith((f"{command}: error:", f"usage: {command}")), result.stderr[:500]
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
