import keras
import numpy as np

from lungct.config import ModelConfig
from lungct.explain import grad_cam
from lungct.model import average_ensemble, build_model, ensemble_members


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


def test_ensemble_logits_are_the_members_mean():
    members = [build_model(ModelConfig(width=16, stages=2), 32) for _ in range(3)]
    batch = np.random.default_rng(0).random((5, 32, 32, 1), dtype=np.float32)
    expected = np.mean([m.predict(batch, verbose=0) for m in members], axis=0)
    ensemble = average_ensemble(members)
    assert ensemble_members(ensemble) == members
    np.testing.assert_allclose(ensemble.predict(batch, verbose=0), expected, rtol=1e-5, atol=1e-6)
    single = build_model(ModelConfig(width=16, stages=2), 32)
    assert average_ensemble([single]) is single and ensemble_members(single) == [single]


def test_ensemble_of_identical_members_explains_like_one_member():
    config = ModelConfig(width=16, stages=2)
    single = build_model(config, 32)
    twins = [build_model(config, 32) for _ in range(2)]
    for twin in twins:
        twin.set_weights(single.get_weights())
    tensor = np.random.default_rng(1).random((32, 32, 1), dtype=np.float32)
    single_logits, single_cam = grad_cam(single, tensor)
    ensemble_logits, ensemble_cam = grad_cam(average_ensemble(twins), tensor)
    np.testing.assert_allclose(ensemble_logits, single_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ensemble_cam, single_cam, rtol=1e-4, atol=1e-5)
    assert ensemble_cam.shape == (32, 32)


def test_stochastic_depth_drops_whole_branches_in_training_only(tmp_path):
    from lungct.model import StochasticDepth, load_model

    layer = StochasticDepth(0.5, seed=0)
    ones = np.ones((400, 3, 3, 2), np.float32)
    dropped = np.asarray(layer(ones, training=True))
    per_example = dropped.reshape(400, -1)
    assert set(np.unique(per_example)) == {0.0, 2.0}, "branches are dropped or scaled by 1/(1 - rate), whole"
    assert (per_example == per_example[:, :1]).all()
    assert 0.4 < (per_example[:, 0] == 0).mean() < 0.6
    np.testing.assert_array_equal(np.asarray(layer(ones, training=False)), ones)

    config = ModelConfig(width=16, stages=3, stochastic_depth=0.3)
    model = build_model(config, 32)
    rates = [layer.rate for layer in model.layers if isinstance(layer, StochasticDepth)]
    np.testing.assert_allclose(rates, [0.1, 0.2, 0.3])  # deeper blocks dropped more often
    assert not any(isinstance(layer, StochasticDepth) for layer in build_model(ModelConfig(width=16), 32).layers)
    model.save(tmp_path / "m.keras")
    batch = np.random.default_rng(2).random((3, 32, 32, 1), dtype=np.float32)
    np.testing.assert_array_equal(load_model(tmp_path / "m.keras").predict(batch, verbose=0), model.predict(batch, verbose=0))
