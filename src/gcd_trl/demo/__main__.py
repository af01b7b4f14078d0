import sys

from gcd_trl.demo.pipeline import main

sys.exit(main())
