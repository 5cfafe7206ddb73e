"""``python -m medviewer`` is the ``medviewer`` console script."""

from medviewer.cli import main

raise SystemExit(main())
