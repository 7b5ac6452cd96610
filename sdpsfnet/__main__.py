"""``python -m sdpsfnet ...`` (also what ``torchrun -m sdpsfnet train ...`` runs)."""
import sys

from .cli import main

sys.exit(main())
