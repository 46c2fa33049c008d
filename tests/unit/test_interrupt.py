"""Ctrl-C and SIGTERM while training: the first asks for a stop after the step, a second stops at once."""

import os
import signal

import pytest

from loracraft.training.interrupt import RunStopped, stop_on_signals


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_asks_to_stop_and_a_second_ctrl_c_stops_at_once(sig, capfd):
    before = signal.getsignal(sig)
    with stop_on_signals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signal_name == sig.name
        assert "stopping after this step to save a state and a LoRA file" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
    assert signal.getsignal(sig) == before


def test_a_stopped_run_exits_with_the_shells_status_for_the_signal():
    assert RunStopped("saved", "SIGINT").exit_code == 130
    assert RunStopped("saved", "SIGTERM").exit_code == 143
