"""`python -m gcd_trl.value_sft`: the old spelling of `gcd-trl value-sft` (gcd_trl.trainers.value_sft)."""

import sys

from gcd_trl.trainers.value_sft import main

if __name__ == "__main__":
    sys.exit(main())
