"""The residual CNN (Keras functional API), trained from scratch."""

from __future__ import annotations

import keras
from keras import layers

from lungct.config import ModelConfig
from lungct.labels import CLASSES


@keras.saving.register_keras_serializable(package="lungct")
class StochasticDepth(layers.Layer):
    """While training, drops a residual branch for whole examples with probability `rate` (survivors are
    scaled by 1 / (1 - rate)); the identity at inference."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = rate, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if not training:
            return x
        keep = 1.0 - self.rate
        shape = (keras.ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        return x * keras.ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator)) / keep

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def load_model(path) -> keras.Model:
    """Load a saved model (this module registers the custom layers it may hold)."""
    return keras.saving.load_model(path, compile=False)


def _conv_bn(x, filters: int, stride: int = 1, name: str = ""):
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    return layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)


def residual_block(x, filters: int, stride: int, name: str, drop_rate: float = 0.0):
    """Two 3x3 conv-BN layers plus a shortcut (1x1 projection when the shape changes); the branch is
    dropped with probability drop_rate while training (stochastic depth)."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(momentum=0.9, name=f"{name}_proj_bn")(shortcut)
    y = layers.ReLU(name=f"{name}_relu1")(_conv_bn(x, filters, stride, f"{name}_a"))
    y = _conv_bn(y, filters, 1, f"{name}_b")
    if drop_rate > 0:
        y = StochasticDepth(drop_rate, name=f"{name}_drop")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def build_model(config: ModelConfig, input_size: int, channels: int = 1) -> keras.Model:
    """Stem (stride-2 conv and max-pool), `stages` stages of residual blocks (width doubling, stride 2), pooling,
    logits; deeper blocks are dropped more often (linearly up to `stochastic_depth`) while training."""
    inputs = keras.Input((input_size, input_size, channels), name="slice")
    x = layers.ReLU(name="stem_relu")(_conv_bn(inputs, config.width, 2, "stem"))
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    blocks = config.stages * config.blocks_per_stage
    for stage in range(config.stages):
        filters = config.width * 2**stage
        for block in range(config.blocks_per_stage):
            stride = 2 if block == 0 and stage > 0 else 1
            depth = stage * config.blocks_per_stage + block + 1
            x = residual_block(x, filters, stride, f"s{stage}b{block}", config.stochastic_depth * depth / blocks)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(config.dropout, name="dropout")(x)
    outputs = layers.Dense(len(CLASSES), name="logits")(x)
    return keras.Model(inputs, outputs, name="lungct_resnet")


def average_ensemble(members: list[keras.Model]) -> keras.Model:
    """One model whose logits are the mean of its members' logits (members renamed member0, member1, ...)."""
    if len(members) == 1:
        return members[0]
    inputs = keras.Input(members[0].input_shape[1:], name="slice")
    logits = []
    for index, member in enumerate(members):
        member.name = f"member{index}"
        logits.append(member(inputs))
    return keras.Model(inputs, layers.Average(name="logits")(logits), name="lungct_ensemble")


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The single models inside an average_ensemble, or [model] for a single model."""
    return [layer for layer in model.layers if isinstance(layer, keras.Model)] or [model]
