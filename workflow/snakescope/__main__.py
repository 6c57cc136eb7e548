"""``python -m snakescope <stage> ...``: what the workflow's rules run. In a local run the job is handed to the
stage host with the few imports of :mod:`.hostclient`; without a host the stage runs here (:mod:`.cli`)."""

import sys

from snakescope.hostclient import run_hosted

status = run_hosted(sys.argv[1:])
if status is None:
    from snakescope.cli import main

    main()
else:
    sys.exit(status)
