"""DivideMix (Li, Socher & Hoi, ICLR 2020): two networks, co-divide, MixMatch.

``config`` (the ``config.dividemix`` block: defaults, checks, the paper's lambda_u / tau table),
``pieces`` (the pure formulas: sharpening, co-guessing, co-refinement, the pools), ``step`` (the
jitted warm-up and semi-supervised steps), ``loop`` (the epoch loop on ``jaxnoise.runkit``).
Importing the package imports nothing heavy (the validator uses ``config``).
"""
