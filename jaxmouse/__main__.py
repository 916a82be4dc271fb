from jaxmouse.cli import main

raise SystemExit(main())
