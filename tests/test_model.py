import keras
import numpy as np

from lungct.config import ModelConfig
from lungct.model import build_model


def test_output_shape_and_residual_additions():
    config = ModelConfig(width=8, stages=3, blocks_per_stage=2)
    model = build_model(config, 64)
    assert model.output_shape == (None, 4)
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == config.stages * config.blocks_per_stage
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms
    out = model(np.zeros((2, 64, 64, 1), np.float32), training=False)
    assert out.shape == (2, 4)


def test_width_and_input_size_configurable():
    small, wide = build_model(ModelConfig(width=8), 64), build_model(ModelConfig(width=16), 96)
    assert small.input_shape == (None, 64, 64, 1) and wide.input_shape == (None, 96, 96, 1)
    assert wide.count_params() > small.count_params()
