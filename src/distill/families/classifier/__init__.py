"""Classifier family: teacher net(s) -> student net. Importing registers config, methods and runner."""
from distill.families.classifier import config, fitnet, runner  # noqa: F401
# the logit methods the classifier and encoder families share live in the core (`distill.methods`)
from distill.methods import dist, dkd, kd, ls_kd, scratch  # noqa: F401,E402
# the method zoo (one file per method)
from distill.families.classifier import (  # noqa: F401,E402
    at, cc, crd, ensemble, label_free, nst, ofa, online_bdkd, pkt, random_teacher, review_kd, rkd,
    self_distill, sp, vid,
)
