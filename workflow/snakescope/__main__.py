"""``python -m snakescope``: the command line (:mod:`.cli`)."""

from snakescope.cli import main

main()
