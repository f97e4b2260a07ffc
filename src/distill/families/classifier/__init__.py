"""Classifier family: teacher net(s) -> student net. Importing registers config, methods and runner."""
from distill.families.classifier import config, dkd, fitnet, kd, runner, scratch  # noqa: F401
# the method zoo (one file per method)
from distill.families.classifier import (  # noqa: F401,E402
    at, cc, crd, dist, ensemble, label_free, ls_kd, nst, ofa, online_bdkd, pkt, random_teacher, review_kd, rkd,
    self_distill, sp, vid,
)
