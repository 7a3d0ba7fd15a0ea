import sys

from mhw.cli import main

sys.exit(main())
