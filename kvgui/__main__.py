from kvgui.cli import main

raise SystemExit(main())
