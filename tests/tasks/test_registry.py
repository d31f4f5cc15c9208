"""The task kinds are listed in three places that must agree: the config's task.kind choices, the
registry of kinds (training, models, tasks) and the table of their command-line modules."""
import typing

import pytest

from ditlab.config import TaskConfig
from ditlab.tasks.commands import TASK_CLIS
from ditlab.tasks.registry import KINDS


def test_config_registry_and_cli_table_list_the_same_kinds():
    choices = set(typing.get_args(typing.get_type_hints(TaskConfig)["kind"]))
    assert choices == set(KINDS) == set(TASK_CLIS)
    for name, kind in KINDS.items():
        assert kind.name == name
        cli = TASK_CLIS[name]
        assert callable(cli.add_cli) and callable(cli.sample_conditions), name


# ---- kind-specific options (TaskKind.reads): set on a kind that does not read them, an error ----------------
def test_every_listed_option_is_a_config_key():
    from ditlab.config import Config
    from ditlab.tasks.registry import kind_option_readers

    readers = kind_option_readers()
    assert {"task.cond_injection", "task.branch_blocks", "model.contexts", "task.cond_dropout"} <= set(readers)
    for key in readers:
        node = Config()
        for part in key.split("."):
            node = getattr(node, part)  # AttributeError: a misspelt key in some kind's reads


@pytest.mark.parametrize("overrides, message", [
    (["task.kind=image", "task.cond_injection=cross"], "task.cond_injection='cross' applies to task.kind superres; "
                                                       "this run is task.kind=image"),
    (["task.kind=lift", "task.cond_blocks=middle"], "task.cond_blocks='middle' applies to task.kind superres"),
    (["task.kind=image", "task.branch_blocks=2"], "task.branch_blocks=2 applies to task.kind superres"),
    (["task.kind=icl", "model.contexts=[{name: text, dim: 4}]"], "model.contexts=.* applies to task.kind image or "
                                                                  "scene; this run is task.kind=icl"),
    (["task.kind=lift", "task.cond_dropout=0.1"], "task.cond_dropout=0.1 applies to task.kind image or superres or "
                                                  "scene"),
])
def test_an_option_the_kind_does_not_read_is_an_error(overrides, message):
    from ditlab.config import load_config
    from ditlab.tasks.registry import check_kind_options

    with pytest.raises(ValueError, match=message):
        check_kind_options(load_config(None, overrides))


@pytest.mark.parametrize("preset, overrides", [
    ("configs/cifar10_lift.yaml", ["task.kind=image", "data.image_size=16"]),  # docs/lift.md: the cascade's low run
    ("configs/cifar10_sr.yaml", ["task.cond_injection=branch", "task.branch_blocks=2"]),
    ("configs/scene_small.yaml", ["model.contexts=[{name: target}]", "scene.describe_target=true"]),
])
def test_options_the_kind_reads_and_kind_named_sections_pass(preset, overrides):
    from ditlab.config import load_config
    from ditlab.tasks.registry import check_kind_options

    check_kind_options(load_config(preset, overrides))


def test_the_trainer_refuses_before_reading_data(tmp_path):
    from ditlab.config import load_config
    from ditlab.train.trainer import Trainer

    cfg = load_config(None, ["task.kind=image", "task.cond_injection=adaln", "data.path=/nonexistent/data",
                             f"train.run_dir={tmp_path / 'r'}", "train.device=cpu"])
    with pytest.raises(ValueError, match="task.cond_injection='adaln' applies to task.kind superres"):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "r").exists()


def test_image_data_options_on_a_kind_that_draws_its_own_data_are_an_error():
    from ditlab.config import load_config
    from ditlab.tasks.registry import check_kind_options

    for kind in ("icl", "scene"):
        with pytest.raises(ValueError, match=f"data.path='x.zip' applies to task.kind image or superres or lift; "
                                             f"this run is task.kind={kind}"):
            check_kind_options(load_config(None, [f"task.kind={kind}", "data.path=x.zip"]))
    check_kind_options(load_config(None, ["task.kind=lift", "data.path=x.zip", "data.hflip=false"]))


def test_image_cond_dropout_without_a_context_set_is_an_error_and_the_sr_preset_gives_a_stage_one_run():
    from ditlab.config import load_config
    from ditlab.tasks.registry import check_kind_options

    with pytest.raises(ValueError, match="task.cond_dropout=0.1 drops an image run's context sets .* has none"):
        check_kind_options(load_config(None, ["task.kind=image", "task.cond_dropout=0.1"]))
    check_kind_options(load_config(None, ["task.kind=image", "task.cond_dropout=0.1", "data.context_path=c.npz"]))
    # docs/superres.md's stage-1 image run from the superres preset
    check_kind_options(load_config("configs/cifar10_sr.yaml", ["task.kind=image", "task.cond_dropout=0",
                                                               "task.cond_noise_max=0", "task.cond_noise_sample=0"]))


# ---- options a kind reads only with another option on: set without it, an error before any data -------------
@pytest.mark.parametrize("overrides, message, applies", [
    (["task.kind=image", "model.cross_attn_dropout=0.1"],
     r"model.cross_attn_dropout=0.1 is the dropout of the unnamed context set \(data.context_path\); this run has none",
     ["data.context_path=c.npz"]),
    (["task.kind=image", "model.cross_attn_dropout=0.1", "data.contexts=[text=t.npz]",
      "model.contexts=[{name: text, dim: 4}]"],  # a named set has its own cross_attn_dropout
     "model.cross_attn_dropout=0.1 is the dropout of the unnamed context set", ["data.context_path=c.npz"]),
    (["task.kind=superres", "model.cross_attn_dropout=0.1"],
     r"model.cross_attn_dropout=0.1 applies to a superres run with task.cond_injection=cross \(.*\); "
     "task.cond_injection=tokens has no cross-attention",
     ["task.cond_injection=cross"]),
    (["task.kind=lift", "model.cross_attn_dropout=0.1"],
     "model.cross_attn_dropout=0.1 applies to task.kind image or superres or scene; this run is task.kind=lift", None),
    (["task.kind=icl", "model.cross_attn_dropout=0.1"],
     "model.cross_attn_dropout=0.1 applies to task.kind image or superres or scene; this run is task.kind=icl", None),
    (["task.kind=superres", "task.dummy_prob=0.3"],
     "task.dummy_prob=0.3 applies to task.cond_mode=dummy .* only, got task.cond_mode=real", ["task.cond_mode=dummy"]),
    (["task.kind=superres", "task.dummy_prob=0.3", "task.dummy_kind=zeros"],
     "task.dummy_prob=0.3, task.dummy_kind=zeros apply to task.cond_mode=dummy", ["task.cond_mode=dummy"]),
    (["task.kind=lift", "lift.mix_lo_noise=0.3"],
     "lift.mix_lo_noise=0.3 applies to lift.train_mode=mixture only, got lift.train_mode=independent",
     ["lift.train_mode=mixture"]),
    (["task.kind=lift", "lift.train_mode=clean_lo", "lift.beta=0"],
     r"lift.beta=0.0 weighs the low-resolution loss, which lift.train_mode=clean_lo does not have",
     ["lift.train_mode=independent"]),
    (["task.kind=icl", "icl.curriculum_every=5"],
     r"icl.curriculum_every=5 sets the curriculum's growth, and the curriculum is off .*leave it at the default",
     ["icl.points_start=2"]),
    (["task.kind=icl", "icl.d_inc=2", "icl.points_inc=4"],
     "icl.d_inc=2, icl.points_inc=4 set the curriculum's growth, and the curriculum is off", ["icl.d_start=1"]),
])
def test_an_option_whose_feature_is_off_is_an_error(overrides, message, applies):
    from ditlab.config import load_config
    from ditlab.tasks.registry import check_kind_options

    with pytest.raises(ValueError, match=message):
        check_kind_options(load_config(None, overrides))
    if applies is not None:  # with the feature on, the same value is read: no error
        check_kind_options(load_config(None, overrides + applies))


def test_options_whose_feature_is_off_pass_at_their_defaults():
    from ditlab.config import load_config
    from ditlab.tasks.registry import check_kind_options

    check_kind_options(load_config(None, ["task.kind=scene", "model.cross_attn_dropout=0.1"]))  # the scene's set
    for kind in ("image", "superres", "lift", "icl"):
        check_kind_options(load_config(None, [f"task.kind={kind}", "model.cross_attn_dropout=0", "task.dummy_prob=0.15",
                                              "task.dummy_kind=noise", "lift.mix_lo_noise=0.15", "lift.beta=1"]))
    check_kind_options(load_config(None, ["task.kind=lift", "lift.train_mode=clean_lo", "lift.beta=1"]))
    check_kind_options(load_config(None, ["task.kind=image", "lift.train_mode=clean_lo", "lift.beta=0"]))  # lift: unread
    check_kind_options(load_config(None, ["task.kind=icl", "icl.d_inc=1", "icl.points_inc=2", "icl.curriculum_every=2000"]))
