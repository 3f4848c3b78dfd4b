from clipkit.cli import main

raise SystemExit(main())
