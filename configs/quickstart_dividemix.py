"""Quickstart DivideMix: the quickstart's digits and small CNN, a short schedule (~1 min, CPU).

python main.py --config configs/quickstart_dividemix.py                     # 50% noise
python main.py --config configs/quickstart_dividemix.py --config.noise=0.8  # against
python main.py --config configs/quickstart.py --config.noise=0.8            # M-DYR-H
"""

from configs import quickstart


def get_config():
    """DivideMix on digits: epochs 0..20, warm-up 0..4, lambda_u / p_threshold from the paper."""
    c = quickstart.get_config()
    c.method = "DivideMix"
    c.lr = 0.02  # DivideMix's rate, /10 from epoch 15
    c.weight_decay = 5e-4
    c.epochs = 20  # DivideMix runs epochs 0..epochs
    c.lr_milestones = (15,)
    c.dividemix_warm_up = 5
    c.lambda_u_rampup = 5.0  # the official 16 epochs would outlast this schedule
    c.lambda_u = -1.0  # the paper's CIFAR-10 table by noise level (25 at 50% and 80%)
    c.p_threshold = -1.0  # the paper's: 0.6 at 90% noise, else 0.5
    c.dividemix_batch = 32
    return c
