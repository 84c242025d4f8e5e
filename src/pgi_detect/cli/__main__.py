"""`python -m pgi_detect.cli ...` is `pgi-detect ...`."""
import sys

from pgi_detect.cli.commands import main

sys.exit(main())
