"""``python -m sessions_app.local_model --port 8001``: the local model without Django."""

from __future__ import annotations

import sys

from sessions_app.local_model.serve import main

if __name__ == "__main__":
    sys.exit(main())
