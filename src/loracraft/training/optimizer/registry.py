"""kohya's optimizer names and the classes they build (library/train_util.py get_optimizer).

Each name maps to the class kohya constructs, the keyword arguments kohya always passes or fills in,
and the package to install. A name kohya does not know is looked up as kohya does: a bare name in
torch.optim, a dotted one as `package.module.Class`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from loracraft.errors import UserError

# The pip distribution of each optional optimizer module (top-level import name -> pip name).
PIP_NAMES = {
    "bitsandbytes": "bitsandbytes",
    "lion_pytorch": "lion-pytorch",
    "dadaptation": "dadaptation",
    "prodigyopt": "prodigyopt",
    "schedulefree": "schedulefree",
    "prodigyplus": "prodigy-plus-schedule-free",
    "pytorch_optimizer": "pytorch-optimizer",
}
# Installed with loracraft[optimizers]; the others named above are what kohya's requirements add.
EXTRA = ("bitsandbytes", "lion_pytorch", "dadaptation", "prodigyopt", "schedulefree", "prodigyplus")


@dataclass(frozen=True)
class OptimizerKind:
    """How kohya builds one optimizer name."""

    target: str
    """`module.Class` to import."""
    fixed: Mapping[str, object] = field(default_factory=dict)
    """Arguments kohya always passes (not optimizer_args, which may not repeat them)."""
    filled: Mapping[str, object] = field(default_factory=dict)
    """Arguments kohya adds when optimizer_args leaves them out."""
    adaptive: bool = False
    """D-Adaptation / Prodigy: the step is d * lr, with d estimated; lr is meant to be about 1."""
    one_lr: bool = False
    """The class refuses parameter groups with different learning rates at its first step."""

    @property
    def module(self) -> str:
        return self.target.rpartition(".")[0]

    @property
    def uses_bitsandbytes(self) -> bool:
        return self.target.startswith("bitsandbytes.")


_NESTEROV = {"fixed": {"nesterov": True}, "filled": {"momentum": 0.9}}
_ADAPTIVE = {"adaptive": True}
_ADAPTIVE_ONE_LR = {"adaptive": True, "one_lr": True}

KINDS: dict[str, OptimizerKind] = {
    "AdamW": OptimizerKind("torch.optim.AdamW"),
    "AdamW8bit": OptimizerKind("bitsandbytes.optim.AdamW8bit"),
    "PagedAdamW": OptimizerKind("bitsandbytes.optim.PagedAdamW"),
    "PagedAdamW8bit": OptimizerKind("bitsandbytes.optim.PagedAdamW8bit"),
    "PagedAdamW32bit": OptimizerKind("bitsandbytes.optim.PagedAdamW32bit"),
    "Lion": OptimizerKind("lion_pytorch.Lion"),
    "Lion8bit": OptimizerKind("bitsandbytes.optim.Lion8bit"),
    "PagedLion8bit": OptimizerKind("bitsandbytes.optim.PagedLion8bit"),
    "SGDNesterov": OptimizerKind("torch.optim.SGD", **_NESTEROV),
    "SGDNesterov8bit": OptimizerKind("bitsandbytes.optim.SGD8bit", **_NESTEROV),
    "DAdaptation": OptimizerKind("dadaptation.experimental.DAdaptAdamPreprint", **_ADAPTIVE_ONE_LR),
    "DAdaptAdamPreprint": OptimizerKind("dadaptation.experimental.DAdaptAdamPreprint", **_ADAPTIVE_ONE_LR),
    "DAdaptAdaGrad": OptimizerKind("dadaptation.DAdaptAdaGrad", **_ADAPTIVE),
    "DAdaptAdam": OptimizerKind("dadaptation.DAdaptAdam", **_ADAPTIVE_ONE_LR),
    "DAdaptAdan": OptimizerKind("dadaptation.DAdaptAdan", **_ADAPTIVE),
    "DAdaptAdanIP": OptimizerKind("dadaptation.experimental.DAdaptAdanIP", **_ADAPTIVE),
    "DAdaptLion": OptimizerKind("dadaptation.DAdaptLion", **_ADAPTIVE_ONE_LR),
    "DAdaptSGD": OptimizerKind("dadaptation.DAdaptSGD", **_ADAPTIVE_ONE_LR),
    "Prodigy": OptimizerKind("prodigyopt.Prodigy", **_ADAPTIVE_ONE_LR),
    "AdaFactor": OptimizerKind("transformers.optimization.Adafactor"),
    "AdamWScheduleFree": OptimizerKind("schedulefree.AdamWScheduleFree"),
    "SGDScheduleFree": OptimizerKind("schedulefree.SGDScheduleFree"),
    "RAdamScheduleFree": OptimizerKind("schedulefree.RAdamScheduleFree"),
}


def kind_of(optimizer_name: str) -> OptimizerKind:
    """The kind for a canonical optimizer name (config.optimizer_name): kohya's, torch.optim's or dotted."""
    if optimizer_name in KINDS:
        return KINDS[optimizer_name]
    if "." in optimizer_name:
        return OptimizerKind(optimizer_name)
    return OptimizerKind(f"torch.optim.{optimizer_name}")


def install_hint(module: str, upgrade: bool = False) -> str:
    """The exact command that installs (or upgrades) `module`'s package."""
    top = module.partition(".")[0]
    pip_name = PIP_NAMES.get(top)
    if pip_name is None:
        return f"{'update' if upgrade else 'install'} the package that provides the module {top!r}"
    if upgrade:
        return f"pip install -U {pip_name}"
    if top in EXTRA:
        return f'pip install {pip_name} (or pip install "loracraft[optimizers]" for every optimizer)'
    return f"pip install {pip_name}"


def load_class(optimizer_name: str, flag_name: str = "--optimizer_type") -> type:
    """Import the class behind `optimizer_name`; a missing package or class is one UserError line."""
    kind = kind_of(optimizer_name)
    return import_target(kind.target, optimizer_name, flag_name)


def import_target(target: str, given: str, flag_name: str) -> type:
    """`package.module.Class` imported, with one-line errors naming `flag_name` and the fix."""
    module_name, _, class_name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or module_name
        raise UserError(
            f"{flag_name} {given} needs the module {missing!r}: {install_hint(missing)}"
        ) from None
    except Exception as err:  # a package that fails to load here (e.g. a GPU library without its driver)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"{flag_name} {given} cannot be loaded on this machine: {module_name}: {reason}"
        ) from None
    found = getattr(module, class_name, None)
    if not isinstance(found, type):
        version = getattr(module, "__version__", None)
        installed = f" (installed: {version})" if version else ""
        raise UserError(
            f"{flag_name} {given}: the module {module_name}{installed} has no class {class_name}; "
            f"check the name, or update the package: {install_hint(module_name, upgrade=True)}"
        )
    return found
