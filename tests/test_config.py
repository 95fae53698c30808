import pytest

from lavin_jax import config as config_lib
from lavin_jax import train
from lavin_jax import validation
from conftest import ROOT, small_config


@pytest.mark.parametrize("name", ["tiny", "tiny_latent", "s", "l", "xl", "stvae_tiny", "stvae", "gentron_tiny", "gentron_t2v_tiny",
                                  "diffit_digits", "diffit_cifar10", "diffit"])
def test_shipped_configs_validate(name):
    config = config_lib.load(str(ROOT / "configs" / f"{name}.py"))
    validation.validate(config, num_devices=None)


def test_tiny_config_runs_on_one_or_eight_devices():
    config = config_lib.load(str(ROOT / "configs" / "tiny.py"))
    assert validation.validate(config, num_devices=1) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert validation.validate(config, num_devices=8) == {"data": 8, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize(
    "overrides,devices,message",
    [
        ({"global_batch_size": 6}, 8, "config.global_batch_size=6 is not divisible by the data-parallel size"),
        ({"mesh.data": 3}, 8, "config.mesh: data*fsdp*tensor=3 does not match the 8 devices"),
        ({"mesh.fsdp": 3}, 8, "config.mesh: the fixed axes' product 3 does not divide the 8 devices"),
        ({"data.image_size": 20, "vae.name": "stvae", "model.in_channels": 16}, 8, "config.data.image_size=20 is not divisible by config.vae.downsample=8"),
        ({"flow.shift": 0.0}, 8, "config.flow.shift=0.0 must be positive"),
        ({"flow.time_grid": "cosine"}, 8, "config.flow.time_grid='cosine' must be"),
        ({"sample.num_examples": 0}, 8, "config.sample.num_examples=0 must be at least 1"),
        ({"keep_checkpoints": 0}, 8, "config.keep_checkpoints=0 must be positive"),
        ({"mesh.data": -1, "mesh.fsdp": -1}, 8, "only one axis may be -1"),
        ({"model.num_heads": 4, "model.num_kv_heads": 3}, 8, "config.model.num_heads=4 is not divisible by config.model.num_kv_heads=3"),
        ({"model.hidden": 40, "model.num_heads": 4, "model.num_kv_heads": 1}, 8, "head_dim=hidden/num_heads=10 must be divisible by 6"),
        ({"model.hidden": 49}, 8, "config.model.hidden=49 is not divisible by config.model.num_heads=2"),
        ({"mesh.tensor": 2, "mesh.data": 4}, 8, "config.model.num_kv_heads=1 is not divisible by config.mesh.tensor=2"),
        ({"model.in_channels": 16}, 8, "config.model.in_channels=16 but config.vae.name='none'"),
        ({"data.image_size": 18}, 8, "config.data.image_size=18 gives model inputs of side 18, not divisible by config.model.patch_size=4"),
        ({"model.num_kv_heads": 0}, 8, "config.model.num_kv_heads=0 must be positive"),
        ({"model.remat": "some"}, 8, "config.model.remat='some' must be one of"),
        ({"model.name": "unet"}, 8, "config.model.name='unet' is unknown"),
        ({"optim.schedule": "linear"}, 8, "config.optim.schedule='linear'"),
        ({"data.cond_drop_prob": 1.0}, 8, "config.data.cond_drop_prob=1.0 must be in [0, 1)"),
    ],
)
def test_invalid_configs_name_the_field(overrides, devices, message):
    with pytest.raises(ValueError) as error:
        validation.validate(small_config(**overrides), num_devices=devices)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "key,message",
    [
        ("model.hiden", r"config.model.hiden is not a field; did you mean config.model.hidden\?"),
        ("modle.hidden", r"config.modle is not a field; did you mean config.model\?"),
        ("mesh.zzz", r"config.mesh.zzz is not a field; config.mesh has cpu_devices, data, fsdp, rules, tensor."),
        ("seed.x", r"config.seed.x: config.seed is a value, not a section of fields."),
    ],
)
def test_unknown_override_field_is_named_with_the_closest(key, message):
    with pytest.raises(ValueError, match=message):
        small_config(**{key: 3})


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Config file '.*nowhere.py' does not exist."):
        config_lib.load(str(tmp_path / "nowhere.py"))


def test_shipped_configs_cannot_grow_new_fields():
    config = small_config()
    with pytest.raises(AttributeError):
        config.model.hiden = 3


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"global_batch_size": 6}, "config.global_batch_size=6"),
        ({"data.tasks": ("colorization", "sharpen")}, "config.data.tasks"),
        ({"data.source": "imagenet"}, "config.data.source='imagenet'"),
        ({"vae.name": "stvae", "vae.checkpoint": "", "model.in_channels": 16, "data.image_size": 64, "data.video_frames": 5},
         "config.vae.name='stvae' needs config.vae.checkpoint"),
        ({"vae.name": "stvae", "vae.checkpoint": "runs/x", "model.in_channels": 16, "data.image_size": 64},
         r"config.data.video_frames=3 must be 1 \+ 4k"),
    ],
)
def test_train_rejects_bad_input_before_touching_the_workdir(tmp_path, overrides, message):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train.train(small_config(**overrides), str(workdir))
    assert not workdir.exists()


def test_every_process_must_own_whole_batch_shards():
    config = small_config(**{"mesh.data": 2, "mesh.fsdp": 1, "mesh.tensor": 4, "model.num_heads": 4, "model.num_kv_heads": 4})
    assert validation.validate(config, num_devices=8, num_processes=2)["tensor"] == 4
    with pytest.raises(ValueError, match=r"data-parallel size data\*fsdp=2 is not divisible by the 4 processes"):
        validation.validate(config, num_devices=8, num_processes=4)


@pytest.mark.parametrize("overrides,message", [
    ({"edm.precond": "karras"}, r"config.edm.precond='karras' must be one of edm, vp, ve"),
    ({"edm.sample_sigma_min": 90.0}, r"config.edm: sample_sigma_min=90.0 must be positive and below sample_sigma_max=80.0"),
    ({"model.learn_sigma": True}, r"config.model.learn_sigma=True"),
    ({"model.window": 3}, r"config.model.window=3 does not tile the 16 x 16 token grid of 16 px"),
    ({"model.groups": 5}, r"config.model.groups=5 must be positive and divide every entry of channels=\(32, 64, 64\)"),
    ({"objective": "flow", "data.image_size": 18}, r"18 px images cannot be halved 2 times"),
])
def test_a_diffit_config_mistake_is_one_sentence_naming_the_field(overrides, message):
    config = config_lib.load(str(ROOT / "configs" / "diffit_digits.py"), overrides)
    with pytest.raises(ValueError, match=message):
        validation.validate(config, num_devices=None)
