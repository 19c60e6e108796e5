"""``python -m jaxnoise.cli VERB ARGS``: the ``jaxnoise`` command."""

import sys

from jaxnoise.cli import main

if __name__ == "__main__":
    sys.exit(main())
