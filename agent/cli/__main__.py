"""``python -m agent.cli``: the ``qtha`` command."""

import sys

from agent.cli.app import main

sys.exit(main())
