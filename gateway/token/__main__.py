"""``python -m gateway.token``: the fresh-view child process (see freshview.py)."""

import sys

from .freshview import main

sys.exit(main())
