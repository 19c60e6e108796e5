"""The bootstrap methods of Arazo et al. (ICML 2019): CE, M, M-DYR-H, M-DYR-S, MD-DYR-SH.

``config`` (the ``config.bootstrap`` block: defaults, checks), ``schedule`` (the phase of an
epoch, the soft-to-hard temperature), ``step`` (the jitted train step), ``loop`` (the epoch loop
on ``jaxnoise.runkit``). Importing the package imports nothing heavy (the validator uses
``config``).
"""
