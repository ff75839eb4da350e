import sys

from laterbased.cli import main

sys.exit(main())
