import sys

from ppdgm.cli import main

sys.exit(main())
