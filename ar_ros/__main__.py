"""Command line: ``python -m ar_ros <command>`` (also installed as ``ar-refine``)."""
from .cli import main

if __name__ == "__main__":
    main()
