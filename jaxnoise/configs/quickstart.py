"""Quickstart: offline, on scikit-learn's embedded digits (1,797 real 8x8 images), in minutes.

python main.py --config configs/quickstart.py                       # M-DYR-H, 50% noise
python main.py --config configs/quickstart.py --config.method=CE    # the baseline
"""

from jaxnoise.configs import default


def digits(c):
    """The quickstart's data, model and schedule length (shared by every method's quickstart)."""
    c.data.source = "digits"
    c.data.name = "digits"
    c.data.crop_padding = 1
    c.data.flip = False  # digits are not mirror-symmetric
    c.data.normalization = "dataset"  # 1-channel digits: their own mean / std
    c.noise = 0.5
    c.model = "small_cnn"
    c.width = 32
    c.eval_batch_size = 500
    c.lr = 0.05
    c.epochs = 60
    c.lr_milestones = (40,)
    c.log_every_steps = 5
    return c


def get_config():
    """A small CNN on digits with 50% symmetric noise and a short mixup schedule."""
    c = digits(default.get_config())
    c.bootstrap.batch_size = 64
    c.bootstrap.start_epoch = 16
    c.bootstrap.dynamic_start_epoch = 16
    c.bootstrap.soft_to_hard_start_epoch = 19
    c.bootstrap.temperature_epochs = 20
    return c
