import sys

from beemeshd.cli import main

sys.exit(main())
