"""``python -m training`` is the ``medviewer-train`` console script (also under ``torchrun``)."""

from training.cli import main

raise SystemExit(main())
