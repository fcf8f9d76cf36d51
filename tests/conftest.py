"""Settings every test runs under."""

import os

# --workers auto would start one worker process per core in every test that runs a study: tests run one worker
# each (pytest-xdist already runs one test per core) unless they ask for more with --workers N.
os.environ.setdefault("HPO_WORKERS", "1")
