"""``python -m wsbus ...`` is the ``wsbus`` command line (also under ``torchrun -m wsbus train ...``).

Taught in ``book/06_joint_training.md``.
"""
import sys

from wsbus.cli import main

if __name__ == "__main__":
    sys.exit(main())
