"""`python -m naiad` runs the command line."""

from naiad.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
