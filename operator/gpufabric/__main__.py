from gpufabric.cli import main

raise SystemExit(main())
