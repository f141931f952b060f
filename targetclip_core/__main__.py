import sys

from targetclip_core.cli.main import main

sys.exit(main())
