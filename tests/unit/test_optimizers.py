"""Optimizers: kohya's names build kohya's classes with kohya's arguments, and every problem with them is
one line before any training starts."""

import sys
import warnings

import pytest
import torch

from loracraft.config.load import build_config
from loracraft.config.optimizer_options import parse_key_values
from loracraft.config.schema import TrainConfig
from loracraft.errors import UserError
from loracraft.training.optimizer import (
    build_optimizer,
    check_optimizer,
    choose_optimizer,
    describe_optimizer,
)
from loracraft.training.optimizer.build import optimizer_notes
from loracraft.training.optimizer.registry import KINDS

CPU = torch.device("cpu")

# kohya's ss_optimizer for each name: the class get_optimizer builds (module.Name) and the arguments it
# fills in; the optional package that provides it.
KOHYA_CLASSES = {
    "AdamW": ("torch.optim.adamw.AdamW", None),
    "AdamW8bit": ("bitsandbytes.optim.adamw.AdamW8bit", "bitsandbytes"),
    "PagedAdamW": ("bitsandbytes.optim.adamw.PagedAdamW", "bitsandbytes"),
    "PagedAdamW8bit": ("bitsandbytes.optim.adamw.PagedAdamW8bit", "bitsandbytes"),
    "PagedAdamW32bit": ("bitsandbytes.optim.adamw.PagedAdamW32bit", "bitsandbytes"),
    "Lion": ("lion_pytorch.lion_pytorch.Lion", "lion_pytorch"),
    "Lion8bit": ("bitsandbytes.optim.lion.Lion8bit", "bitsandbytes"),
    "PagedLion8bit": ("bitsandbytes.optim.lion.PagedLion8bit", "bitsandbytes"),
    "SGDNesterov": ("torch.optim.sgd.SGD(momentum=0.9)", None),
    "SGDNesterov8bit": ("bitsandbytes.optim.sgd.SGD8bit(momentum=0.9)", "bitsandbytes"),
    "DAdaptation": ("dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint", "dadaptation"),
    "DAdaptAdamPreprint": ("dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint", "dadaptation"),
    "DAdaptAdaGrad": ("dadaptation.dadapt_adagrad.DAdaptAdaGrad", "dadaptation"),
    "DAdaptAdam": ("dadaptation.dadapt_adam.DAdaptAdam", "dadaptation"),
    "DAdaptAdan": ("dadaptation.dadapt_adan.DAdaptAdan", "dadaptation"),
    "DAdaptAdanIP": ("dadaptation.experimental.dadapt_adan_ip.DAdaptAdanIP", "dadaptation"),
    "DAdaptLion": ("dadaptation.dadapt_lion.DAdaptLion", "dadaptation"),
    "DAdaptSGD": ("dadaptation.dadapt_sgd.DAdaptSGD", "dadaptation"),
    "Prodigy": ("prodigyopt.prodigy.Prodigy", "prodigyopt"),
    "AdaFactor": ("transformers.optimization.Adafactor(relative_step=True)", None),
    "AdamWScheduleFree": ("schedulefree.adamw_schedulefree.AdamWScheduleFree", "schedulefree"),
    "SGDScheduleFree": ("schedulefree.sgd_schedulefree.SGDScheduleFree", "schedulefree"),
    "RAdamScheduleFree": ("schedulefree.radam_schedulefree.RAdamScheduleFree", "schedulefree"),
}


def needs(package: str) -> None:
    """Skip unless `package` is installed and, for bitsandbytes, its 8-bit optimizers run on this CPU
    (older bitsandbytes has no CPU kernels; loracraft refuses its optimizers there in one line)."""
    pytest.importorskip(package)
    if package == "bitsandbytes":
        try:
            check_optimizer(TrainConfig(optimizer_type="AdamW8bit"), CPU, echo=lambda _: None)
        except UserError as refusal:
            pytest.skip(str(refusal))


def config_for(name: str, **options) -> TrainConfig:
    adaptive = name.startswith("DAdapt") or name == "Prodigy"
    return TrainConfig(optimizer_type=name, learning_rate=1.0 if adaptive else 1e-4, **options)


def one_step(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.step()


def test_every_kohya_name_is_in_the_registry():
    assert set(KINDS) == set(KOHYA_CLASSES)


@pytest.mark.parametrize("name", sorted(KOHYA_CLASSES))
def test_kohya_name_builds_kohyas_class_and_trains(name):
    expected, package = KOHYA_CLASSES[name]
    if package:
        needs(package)
    config = config_for(name)
    assert describe_optimizer(config) == expected
    check_optimizer(config, CPU, echo=lambda _: None)
    params = [torch.nn.Parameter(torch.randn(64, 64)), torch.nn.Parameter(torch.randn(64))]
    optimizer = build_optimizer(config, [{"params": params, "lr": config.effective_unet_lr, "name": "unet"}])
    before = [p.detach().clone() for p in params]
    for _ in range(6):  # RAdamScheduleFree holds still for its first steps (RAdam's rectification)
        one_step(optimizer, params)
    assert all(not torch.equal(p, b) for p, b in zip(params, before, strict=True))


@pytest.mark.parametrize("spelling", ["adamw8bit", "ADAMW8BIT", "AdamW8bit"])
def test_names_match_in_any_case_like_kohya(spelling):
    assert TrainConfig(optimizer_type=spelling).optimizer_type == "AdamW8bit"


def test_empty_name_is_adamw_like_kohya():
    assert build_config({"optimizer_type": ""}, {}).optimizer_name == "AdamW"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("RAdam", "torch.optim.radam.RAdam"), ("torch.optim.Adagrad", "torch.optim.adagrad.Adagrad")],
)
def test_other_classes_by_name_like_kohya(name, expected):
    assert describe_optimizer(TrainConfig(optimizer_type=name)) == expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"use_8bit_adam": True}, "AdamW8bit"), ({"use_lion_optimizer": True}, "Lion"), ({}, "AdamW")],
)
def test_legacy_flags_choose_their_optimizer(flags, expected):
    config = TrainConfig(**flags)
    assert config.optimizer_name == expected
    assert describe_optimizer(config) == KOHYA_CLASSES[expected][0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"use_8bit_adam": True, "use_lion_optimizer": True}, "--use_8bit_adam and --use_lion_optimizer"),
        (
            {"use_8bit_adam": True, "optimizer_type": "Lion"},
            "--use_8bit_adam means --optimizer_type AdamW8bit",
        ),
        ({"optimizer_type": "Prodigyy"}, "unknown optimizer 'Prodigyy' (did you mean Prodigy?)"),
        ({"optimizer_type": "not a class"}, "unknown optimizer 'not a class'"),
        ({"optimizer_args": ["weight_decay"]}, "optimizer_args 'weight_decay' is not key=value"),
    ],
)
def test_bad_optimizer_settings_are_one_line(flags, message):
    with pytest.raises(UserError) as caught:
        build_config({}, flags)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("item", "key", "value"),
    [
        ("weight_decay=0.01", "weight_decay", 0.01),
        ("betas=0.9,0.999", "betas", (0.9, 0.999)),
        ("betas=[0.9,0.99]", "betas", [0.9, 0.99]),  # kohya keeps a list a list (ss_optimizer shows it)
        ("decouple=True", "decouple", True),
        ("d_coef=2", "d_coef", 2),
        ("beta3=None", "beta3", None),
        ("decay_type=cosine", "decay_type", "cosine"),  # not a literal: kept as text
        (" eps = 1e-6 ", "eps", 1e-6),
    ],
)
def test_optimizer_args_are_read_as_kohya_reads_them(item, key, value):
    parsed = parse_key_values([item], "optimizer_args")
    assert parsed == {key: value} and type(parsed[key]) is type(value)


def test_optimizer_args_reach_the_optimizer_and_the_metadata():
    pytest.importorskip("prodigyopt")
    config = TrainConfig(
        optimizer_type="Prodigy", learning_rate=1.0, optimizer_args=["d_coef=2", "decouple=True"]
    )
    optimizer = build_optimizer(config, [{"params": [torch.nn.Parameter(torch.zeros(3))], "lr": 1.0}])
    assert optimizer.param_groups[0]["d_coef"] == 2 and optimizer.param_groups[0]["decouple"] is True
    assert describe_optimizer(config) == "prodigyopt.prodigy.Prodigy(d_coef=2,decouple=True)"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"optimizer_args": ["momentum=0.9"]},
         "--optimizer_args: AdamW has no argument 'momentum'; it takes amsgrad, betas, capturable, "),
        ({"optimizer_type": "SGDNesterov", "optimizer_args": ["nesterov=False"]},
         "SGDNesterov sets nesterov=True itself; leave it out"),
        ({"optimizer_args": ["lr=0.1"]}, "--optimizer_args lr: loracraft passes it"),
        ({"optimizer_args": ["betas=(2.0, 0.9)"]},
         "--optimizer_type AdamW refuses this run's arguments: Invalid beta parameter at index 0: 2.0"),
        ({"optimizer_type": "torch.optim.NoSuchOptim"}, "the module torch.optim"),
        ({"optimizer_type": "no_such_package.Optim"}, "needs the module 'no_such_package'"),
    ],
)  # fmt: skip
def test_optimizer_problems_stop_the_run_in_one_line(options, message):
    with pytest.raises(UserError) as caught:
        check_optimizer(TrainConfig(**options), CPU, echo=lambda _: None)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "module", "command"),
    [
        ("Prodigy", "prodigyopt", "pip install prodigyopt"),
        ("Lion", "lion_pytorch", "pip install lion-pytorch"),
        ("AdamW8bit", "bitsandbytes", "pip install bitsandbytes"),
        ("DAdaptAdam", "dadaptation", "pip install dadaptation"),
        ("SGDScheduleFree", "schedulefree", "pip install schedulefree"),
        ("prodigyplus.ProdigyPlusScheduleFree", "prodigyplus", "pip install prodigy-plus-schedule-free"),
        ("pytorch_optimizer.CAME", "pytorch_optimizer", "pip install pytorch-optimizer"),
    ],
)
def test_a_missing_package_names_its_install_command(monkeypatch, name, module, command):
    for loaded in [key for key in sys.modules if key == module or key.startswith(f"{module}.")] + [module]:
        monkeypatch.setitem(sys.modules, loaded, None)  # import fails as if it were not installed
    with pytest.raises(UserError) as caught:
        check_optimizer(TrainConfig(optimizer_type=name), CPU, echo=lambda _: None)
    assert command in str(caught.value) and "\n" not in str(caught.value)


def test_an_8bit_optimizer_this_machine_cannot_run_is_one_line(monkeypatch):
    bnb = pytest.importorskip("bitsandbytes")

    def no_kernels(self, closure=None):
        raise RuntimeError("CUDA Setup failed despite GPU being available.\nmore details")

    monkeypatch.setattr(bnb.optim.AdamW8bit, "step", no_kernels)
    with pytest.raises(UserError) as caught:
        check_optimizer(TrainConfig(optimizer_type="AdamW8bit"), CPU, echo=lambda _: None)
    text = str(caught.value)
    assert text.startswith("--optimizer_type AdamW8bit cannot run on this machine (cpu): CUDA Setup failed")
    assert "\n" not in text


def test_paged_optimizer_on_the_cpu_says_so_once():
    needs("bitsandbytes")
    notes = []
    config = TrainConfig(optimizer_type="PagedAdamW8bit")
    check_optimizer(config, CPU, notes.append)
    assert notes and all("\n" not in note for note in notes)
    params = [torch.nn.Parameter(torch.randn(8192))]
    optimizer = build_optimizer(config, [{"params": params, "lr": 1e-4}])
    with warnings.catch_warnings(record=True) as caught:
        one_step(optimizer, params)
    assert not [
        w for w in caught if str(w.message).strip() in {n.split("bitsandbytes: ", 1)[1] for n in notes}
    ]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"optimizer_type": "Prodigy", "learning_rate": 1.0}, []),
        ({"optimizer_type": "Prodigy", "learning_rate": 1e-4}, ["expects a learning rate around 1.0"]),
        ({"optimizer_type": "DAdaptAdaGrad", "learning_rate": 1.0, "text_encoder_lr": 0.5},
         ["only the first learning rate takes effect"]),
        ({"optimizer_type": "DAdaptAdaGrad", "learning_rate": 1.0, "network_train_unet_only": True}, []),
        ({"optimizer_type": "SGDNesterov"}, ["momentum=0.9, kohya's value"]),
        ({"optimizer_type": "SGDNesterov", "optimizer_args": ["momentum=0.8"]}, []),
        ({"optimizer_type": "AdaFactor"}, ["relative_step=True (its default) sets its own step sizes"]),
        ({"optimizer_type": "AdaFactor", "optimizer_args": ["relative_step=False"]}, []),
        ({"optimizer_type": "AdamW", "learning_rate": 1e-4}, []),
    ],
)  # fmt: skip
def test_kohyas_warnings_are_notes(options, expected):
    config = TrainConfig(**options)
    if config.optimizer_name.startswith(("DAdapt", "Prodigy")):
        pytest.importorskip(KOHYA_CLASSES[config.optimizer_name][1])
    notes = optimizer_notes(config, choose_optimizer(config))
    assert len(notes) == len(expected) and all(e in n for e, n in zip(expected, notes, strict=True))


@pytest.mark.parametrize("name", ["Prodigy", "DAdaptAdam", "DAdaptLion", "DAdaptSGD", "DAdaptation"])
def test_adaptive_optimizers_that_refuse_two_learning_rates_stop_early(name):
    pytest.importorskip(KOHYA_CLASSES[name][1])
    config = TrainConfig(optimizer_type=name, learning_rate=1.0, text_encoder_lr=0.5)
    with pytest.raises(UserError, match=f"--optimizer_type {name} takes one learning rate for every part"):
        check_optimizer(config, CPU, echo=lambda _: None)
    # The class itself only refuses at its first step, with a RuntimeError (what kohya users see).
    groups = [
        {"params": [torch.nn.Parameter(torch.randn(4))], "lr": 1.0},
        {"params": [torch.nn.Parameter(torch.randn(4))], "lr": 0.5},
    ]
    optimizer = build_optimizer(config, groups)
    with pytest.raises(RuntimeError, match="different lr values"):
        one_step(optimizer, [p for group in groups for p in group["params"]])


def test_sdxls_second_text_encoder_rate_counts_as_another_learning_rate():
    pytest.importorskip(KOHYA_CLASSES["Prodigy"][1])
    config = TrainConfig(optimizer_type="Prodigy", learning_rate=1.0, text_encoder_lr=[1.0, 0.5])
    with pytest.raises(UserError, match="--optimizer_type Prodigy takes one learning rate for every part"):
        check_optimizer(config, CPU, echo=lambda _: None)
    same = TrainConfig(optimizer_type="Prodigy", learning_rate=1.0, text_encoder_lr=[1.0, 1.0])
    check_optimizer(same, CPU, echo=lambda _: None)


def test_adafactor_relative_step_builds_without_learning_rates():
    config = TrainConfig(optimizer_type="AdaFactor", learning_rate=1e-3, unet_lr=1e-3)
    groups = [{"params": [torch.nn.Parameter(torch.randn(4))], "lr": 1e-3, "name": "unet"}]
    optimizer = build_optimizer(config, groups)
    assert optimizer.defaults["lr"] is None and optimizer.defaults["relative_step"] is True
    assert optimizer.param_groups[0]["lr"] is None and groups[0]["lr"] == 1e-3  # the caller's groups kept


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "transformers.optimization.Adafactor(relative_step=True)"),
        (["relative_step=False"], "transformers.optimization.Adafactor(relative_step=False)"),
        (["relative_step=False", "warmup_init=True"],
         "transformers.optimization.Adafactor(relative_step=True,warmup_init=True)"),
        (["scale_parameter=False"], "transformers.optimization.Adafactor(scale_parameter=False,relative_step=True)"),
    ],
)  # fmt: skip
def test_adafactor_arguments_as_kohya_fills_them(args, expected):
    config = TrainConfig(optimizer_type="AdaFactor", optimizer_args=args)
    assert describe_optimizer(config) == expected
    assert config.adafactor_relative_step == ("relative_step=True" in expected)


def test_adafactor_with_its_own_rate_uses_the_learning_rate():
    config = TrainConfig(
        optimizer_type="AdaFactor", learning_rate=1e-3, optimizer_args=["relative_step=False"]
    )
    optimizer = build_optimizer(config, [{"params": [torch.nn.Parameter(torch.randn(4))], "lr": 2e-3}])
    assert optimizer.param_groups[0]["lr"] == 2e-3


def test_adafactor_schedule_needs_adafactor():
    with pytest.raises(UserError, match="--lr_scheduler adafactor follows AdaFactor's own step sizes"):
        build_config({}, {"lr_scheduler": "adafactor"})
    with pytest.raises(UserError, match="--lr_scheduler adafactor"):
        build_config({}, {"lr_scheduler": "adafactor", "optimizer_type": "AdaFactor",
                          "optimizer_args": ["relative_step=False"]})  # fmt: skip


def test_full_fp16_adamw_uses_the_fused_kernel_that_keeps_fp16_weights_finite():
    # kohya's trap: plain AdamW computes in fp16, where its eps is 0, and a LoRA down weight's first
    # gradient is exactly zero (its up weight starts at zero): 0/0 at the first step.
    def first_step(optimizer_class_kwargs: dict) -> torch.Tensor:
        weight = torch.nn.Parameter(torch.randn(4, 4).half())
        weight.grad = torch.zeros_like(weight)
        torch.optim.AdamW([weight], lr=1e-3, **optimizer_class_kwargs).step()
        return weight

    assert not torch.isfinite(first_step({})).all()
    config = TrainConfig(mixed_precision="fp16", full_fp16=True)
    choice = choose_optimizer(config)
    assert choice.kwargs == {"fused": True}
    assert torch.isfinite(first_step(choice.kwargs)).all()
    assert any("fused=True" in note for note in optimizer_notes(config, choice))
    # An explicit choice is kept, and without full_fp16 nothing is added.
    explicit = TrainConfig(mixed_precision="fp16", full_fp16=True, optimizer_args=["fused=False"])
    assert choose_optimizer(explicit).kwargs == {"fused": False}
    assert choose_optimizer(TrainConfig(mixed_precision="fp16")).kwargs == {}


def test_the_argument_hint_lists_what_the_class_takes_and_what_kohya_adds():
    from loracraft.training.optimizer.arguments import argument_hint

    hint = argument_hint("SGDNesterov")
    assert hint.startswith("SGDNesterov (torch.optim.sgd.SGD); takes momentum=0 dampening=0 weight_decay=0")
    assert "nesterov=" not in hint.split(";")[1]  # kohya passes it: not the user's to give
    assert "kohya always passes nesterov=True; kohya adds momentum=0.9 if not given." in hint
    assert "params" not in hint and " lr=" not in hint
    assert "kohya adds relative_step=True if not given" in argument_hint("AdaFactor")


def test_the_argument_hint_of_a_missing_package_is_its_install_line(monkeypatch):
    from loracraft.training.optimizer.arguments import argument_hint

    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import fails as if not installed
    assert argument_hint("Prodigy") == (
        "--optimizer_type Prodigy needs the module 'prodigyopt': pip install prodigyopt "
        '(or pip install "loracraft[optimizers]" for every optimizer)'
    )
