import sys

from mtp_core.cli import main

sys.exit(main())
