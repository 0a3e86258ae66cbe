"""The original example's two ResNets, with the same graphs and parameter names.

Differences that do not change a parameter or a computed value:
- global average pooling instead of resnet23's fixed 4x4 average pooling (identical at 32x32, and it lets the
  same graph take 8x8 digits);
- residual additions are not in-place (the per-sample gradient code reads each layer's input after backward);
- resnet56's features are not cut from the graph (`need_grad = False`) in test mode, so gradients of every layer
  can be taken for TracIn.
Augmentation stays inside the training graph, as in the original (`F.image_augmentation`).
"""
import nnabla as nn
import nnabla.functions as F
import nnabla.parametric_functions as PF


def augment_image(image, test, augment):
    """F.image_augmentation with `augment`'s settings; its `shift` (a fraction of the image side) becomes the
    padding of a random translation, so one recipe fits images of any size."""
    if test or not augment:
        return image
    settings = dict(augment)
    shift = settings.pop("shift", 0)
    if shift:
        settings["pad"] = tuple(max(1, round(side * shift)) for side in image.shape[2:])
    image = F.image_augmentation(image, **settings)
    image.need_grad = False
    return image


def _conv_bn(x, maps, kernel, pad, test, stride=(1, 1)):
    h = PF.convolution(x, maps, kernel=kernel, pad=pad, stride=stride, with_bias=False)
    return PF.batch_normalization(h, batch_stat=not test)


def resnet23(image, test=False, n_classes=10, nmaps=64, augment=None):
    """conv 3x3 + 7 bottleneck units (max-pool after units 2, 4, 6) + average pooling + affine."""

    def res_unit(x, scope, down):
        c = x.shape[1]
        with nn.parameter_scope(scope):
            with nn.parameter_scope("conv1"):
                h = F.relu(_conv_bn(x, c // 2, (1, 1), (0, 0), test))
            with nn.parameter_scope("conv2"):
                h = F.relu(_conv_bn(h, c // 2, (3, 3), (1, 1), test))
            with nn.parameter_scope("conv3"):
                h = _conv_bn(h, c, (1, 1), (0, 0), test)
            h = F.relu(F.add2(h, x))
            if down:
                h = F.max_pooling(h, kernel=(2, 2), stride=(2, 2))
            return h

    with nn.parameter_scope("conv1"):
        image = augment_image(image, test, augment)
        h = F.relu(_conv_bn(image, nmaps, (3, 3), (1, 1), test))
    for i, down in enumerate([False, True, False, True, False, True, False], start=2):
        h = res_unit(h, f"conv{i}", down)
    h = F.global_average_pooling(h)
    return PF.affine(h, n_classes), h


def resnet56(image, test=False, n_classes=10, nmaps=None, augment=None):
    """conv 3x3 (16) + 3 stages x 9 basic units (16, 32, 64 maps) + global average pooling + affine.

    `nmaps` is accepted for a uniform signature; the original's resnet56 has a fixed channel plan."""

    def res_unit(x, scope, c, i):
        subsampling = i == 0 and c > 16
        stride = (2, 2) if subsampling else (1, 1)
        with nn.parameter_scope(scope):
            with nn.parameter_scope("conv1"):
                h = F.relu(_conv_bn(x, c, (3, 3), (1, 1), test, stride=stride))
            with nn.parameter_scope("conv2"):
                h = _conv_bn(h, c, (3, 3), (1, 1), test)
            if subsampling:
                with nn.parameter_scope("conv3"):
                    x = PF.convolution(x, c, kernel=(1, 1), pad=(0, 0), stride=(2, 2), with_bias=False)
            return F.relu(F.add2(h, x))

    with nn.parameter_scope("conv1"):
        image = augment_image(image, test, augment)
        h = F.relu(_conv_bn(image, 16, (3, 3), (1, 1), test))
    for c in (16, 32, 64):
        for i in range(9):
            h = res_unit(h, f"{c}_conv{i + 2}", c, i)
    h = F.global_average_pooling(h)
    return PF.affine(h, n_classes), h
