"""What "it learnt" means on the demo's concept probe, for the learning test and the demo test.

Thresholds (bench/RESULTS.md, "Learning test"): the working trainer moves the trigger prompts from 0% to
about 80% magenta, the prompts without the trigger far less; a broken target or a zero learning rate
leaves the trigger prompts at 0%."""

MIN_TRIGGER_GAIN = 0.5
MAX_CONTROL_SHARE_OF_GAIN = 0.5


def learnt(trigger_before: float, trigger_after: float, control_before: float, control_after: float) -> bool:
    trigger_gain = trigger_after - trigger_before
    control_gain = control_after - control_before
    return trigger_gain >= MIN_TRIGGER_GAIN and control_gain <= MAX_CONTROL_SHARE_OF_GAIN * trigger_gain
