import os
import sys

# `python -m preftune` puts the working directory first on sys.path, ahead of installed packages, so a
# stray tensorboard.py (or datasets.py, ...) there would be imported in their place. preftune itself is
# imported by now; the working directory is dropped (as `python -P` would). A local reward function is
# named by its path instead: reward=./my_rewards.py:fn.
if sys.path and sys.path[0] in ("", os.getcwd()):
    sys.path.pop(0)

from preftune.cli import main  # noqa: E402

sys.exit(main())
