"""`python -m labutils COMMAND`: the lab's commands (labutils.cli.main lists them)."""

import sys

from labutils.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
