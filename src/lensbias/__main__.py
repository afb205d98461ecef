"""``python -m lensbias`` runs the command line."""

import sys

from lensbias.cli import main

sys.exit(main())
