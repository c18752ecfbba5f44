from rqcompile.cli import main

raise SystemExit(main())
