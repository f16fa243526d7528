from lift3d.cli import main

raise SystemExit(main())
