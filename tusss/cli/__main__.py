"""``python -m tusss.cli`` runs the ``tusss`` command."""

import sys

from tusss.cli import main

sys.exit(main())
