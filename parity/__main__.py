"""``python -m parity``: see parity._cli."""

from parity._cli import main

raise SystemExit(main())
