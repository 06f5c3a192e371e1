import sys

from lie_cam.cli import main

sys.exit(main())
