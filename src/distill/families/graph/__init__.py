"""Graph family: GNN teacher -> MLP student (GLNN, FF-G2M). Importing registers data sets, models,
methods, the config and the runner."""
from distill.data import graphs  # noqa: F401
from distill.families.graph import config, ffg2m, glnn, gnn, runner, scratch  # noqa: F401
