import sys

from cryopick.cli.main import main

sys.exit(main())
