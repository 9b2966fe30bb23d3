from __future__ import annotations

from specexec.main import main

raise SystemExit(main())
