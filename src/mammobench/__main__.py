"""``python -m mammobench``: the same command line as ``mammobench``."""

from mammobench.cli import main

if __name__ == "__main__":
    main()
