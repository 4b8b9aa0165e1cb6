"""`python -m geozarr_local.broker`: the local broker."""

from geozarr_local.broker.commands import main

raise SystemExit(main())
