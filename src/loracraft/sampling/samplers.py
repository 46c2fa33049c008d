"""kohya's sampler names -> diffusers schedulers, built as kohya's get_my_scheduler builds them.

Every scheduler starts from kohya's Stable Diffusion beta schedule (1000 steps, scaled_linear from
0.00085 to 0.012), not from the base model's scheduler config, with the class's other defaults; the
`k_` names are the same schedulers as the plain ones. kohya also forces `clip_sample` on where a
scheduler has it, which only DDIM has here, where it is the default already.

On top of kohya: a v-prediction model samples with prediction_type "v_prediction" (kohya does too), and a
run trained with --zero_terminal_snr samples from a schedule rescaled to zero terminal SNR, with
"trailing" timesteps so the first step starts from pure noise, where the scheduler can (DDIM, Euler,
Euler a, DPM-Solver multistep); kohya samples such runs from the plain schedule.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from loracraft.errors import UserError

BETA_START = 0.00085
BETA_END = 0.012
TRAIN_TIMESTEPS = 1000
BETA_SCHEDULE = "scaled_linear"

# kohya's sampler name -> (diffusers class, its extra arguments): train_util.get_my_scheduler.
SAMPLER_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "k_lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "k_euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "k_euler_a": ("EulerAncestralDiscreteScheduler", {}),
    # diffusers refuses its own default final_sigmas_type "zero" with algorithm_type "dpmsolver".
    "dpmsolver": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    ),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    # The value diffusers switches to anyway (with a log line) when final_sigmas_type is "zero".
    "dpmsingle": ("DPMSolverSinglestepScheduler", {"lower_order_final": True}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "k_dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "k_dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
}
# diffusers' LMS scheduler integrates its coefficients with scipy, which diffusers does not require.
NEEDS_SCIPY = ("LMSDiscreteScheduler",)
# PNDM's Runge-Kutta warm-up (kohya keeps it: skip_prk_steps=False) cannot lay out fewer steps.
MIN_STEPS = {"pndm": 4}


def check_sampler(name: str, steps: int, where: str) -> None:
    """A sampler this installation cannot build, or not for `steps` steps, is one line at the start, not
    an error at the first sample; `where` names the flag or prompt that chose it."""
    if steps < MIN_STEPS.get(name, 1):
        raise UserError(
            f"{where}: the {name} sampler needs at least {MIN_STEPS[name]} steps, not {steps}: raise the "
            "prompt's steps (--s) or choose another sampler"
        )
    class_name = SAMPLER_CLASSES[name][0]
    if class_name in NEEDS_SCIPY and importlib.util.find_spec("scipy") is None:
        raise UserError(
            f"{where}: the {name} sampler (diffusers' {class_name}) needs scipy: pip install scipy, or choose "
            "another sampler (euler, euler_a, ddim, dpmsolver++ ...)"
        )


def make_sampler(name: str, *, v_prediction: bool, zero_terminal_snr: bool) -> SchedulerMixin:
    """A new scheduler for kohya's sampler `name` (one per image: multistep schedulers keep state)."""
    class_name, extra = SAMPLER_CLASSES[name]
    scheduler_class = getattr(diffusers, class_name)
    arguments = {
        "num_train_timesteps": TRAIN_TIMESTEPS,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
        "beta_schedule": BETA_SCHEDULE,
        **extra,
    }
    if v_prediction:
        arguments["prediction_type"] = "v_prediction"
    if zero_terminal_snr and rescales_to_zero_snr(name):
        arguments |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    known = inspect.signature(scheduler_class.__init__).parameters
    return scheduler_class(**{key: value for key, value in arguments.items() if key in known})


def rescales_to_zero_snr(name: str) -> bool:
    """Whether diffusers' scheduler for `name` can sample from a zero-terminal-SNR schedule."""
    scheduler_class = getattr(diffusers, SAMPLER_CLASSES[name][0])
    return "rescale_betas_zero_snr" in inspect.signature(scheduler_class.__init__).parameters
