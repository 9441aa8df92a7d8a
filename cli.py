"""`python cli.py ...` is the same as the `evf` console script."""

from evf.cli import main

if __name__ == "__main__":
    main()
