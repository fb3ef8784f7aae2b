"""``python -m mammobench.cli``: the command line (as SLURM and torchrun lines in the README call it)."""

from mammobench.cli import main

main()
