"""The MNIST experiments of Kingma & Ba (2015): data, Flax models, vmapped grid training, plots.

Run ``python -m experiments --help`` for the list of experiments.
"""
