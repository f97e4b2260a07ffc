"""Dataset family: condense a training set into a few synthetic images per class, evaluated under
one fixed protocol (`evaluate.py`). Importing registers the methods, the config and the runner."""
from distill.families.dataset import (  # noqa: F401
    config, datadam, datm, dc, dm, dsa, ftd, herding, mtt, random_real, runner, sre2l)
