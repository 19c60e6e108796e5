"""TinyImageNet, plain mixup: frozen pretrained ResNet-50 (only the head trains), Adam.

The published setting: 224x224 inputs, batch 256, 100 epochs, lr /10 after 30 and 80. Point
``data.root`` at TinyImageNet re-laid out as ROOT/{train,test}/<wnid>/<image> (val as test) and
``weights`` at a local torchvision ResNet-50 .npz (see jaxnoise.models.load_resnet50_weights):

    python main.py --config configs/tinyimagenet_m.py --config.data.root=/data/tiny \
        --config.weights=/data/resnet50.npz --config.noise=0.5
"""

from jaxnoise.configs import default


def get_config():
    """Plain mixup on TinyImageNet with a frozen ResNet-50 backbone."""
    c = default.get_config()
    c.method = "M"
    c.data.source = "folder"
    c.data.root = "/path/to/tiny-imagenet"
    c.data.crop_padding = 8
    c.data.normalization = "dataset"
    c.model = "resnet50"
    c.weights = "/path/to/resnet50.npz"
    c.freeze_backbone = True
    c.optimizer = "adam"
    c.lr = 0.1
    c.bootstrap.batch_size = 256
    c.epochs = 100
    c.lr_milestones = (30, 80)
    c.bootstrap.start_epoch = 36
    c.bootstrap.dynamic_start_epoch = 36
    c.bootstrap.soft_to_hard_start_epoch = 41
    return c
