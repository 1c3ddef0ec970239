"""The command-line tools: a2sg-train (train.py, with config.py, checkpoint.py and report.py),
a2sg-ablate (ablate.py) and a2sg-analyze (analyze.py)."""
