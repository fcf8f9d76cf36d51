"""``python -m hpo.report``: regenerate every summary and chart of a storage (``hpo.report.summary.main``)."""

import sys

from hpo.report.summary import main

sys.exit(main())
