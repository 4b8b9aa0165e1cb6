"""`python -m geozarr_pipeline` is the `geozarr-pipeline` command."""

import sys

from geozarr_pipeline.cli import main

sys.exit(main())
