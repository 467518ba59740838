import sys

from mtp_tools.synthetic.cli import main

sys.exit(main())
