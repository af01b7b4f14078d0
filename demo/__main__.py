import sys

from demo.pipeline import main

sys.exit(main())
