"""src.run.progress and src.run.interrupt in-process: step counts in the log, a stop request raised at the
next step (also a real signal sent to this process), handlers put back, run_task's exit codes."""

import logging
import os
import re
import signal
import sys

import pytest
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.run import interrupt
from src.run.progress import StepProgress, progress
from src.run.task import run_task


@pytest.fixture(autouse=True)
def _no_stop_left_behind():
    handlers = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    interrupt.reset()
    yield
    interrupt.reset()
    for s, h in handlers.items():
        signal.signal(s, h)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def counts(line: str) -> str:
    return re.search(r"\d+/\d+", line).group()


def logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "src.run.progress"]


def test_step_counts_reach_the_log_every_tenth_and_at_the_end(caplog):
    clock = Clock()
    steps = StepProgress("featviz: class maximisation", clock=clock)
    with caplog.at_level(logging.INFO, logger="src.run.progress"):
        for done in range(1, 101):
            clock.now = done * 0.5  # 2 steps/s
            steps(done, 100)
        steps.close()
    lines = logged(caplog)
    assert [counts(line) for line in lines] == ["1/100", *[f"{k}/100" for k in range(10, 101, 10)]]
    assert lines[1] == "featviz: class maximisation: 10/100 (10%) [00:05<00:45, 2 steps/s]"
    assert lines[-1] == "featviz: class maximisation: 100/100 (100%) [00:50<00:00, 2 steps/s]"


def test_a_slow_loop_logs_every_30_seconds_and_where_it_stopped(caplog):
    clock = Clock()
    steps = StepProgress("morph_path: semantic morph", clock=clock)
    with caplog.at_level(logging.INFO, logger="src.run.progress"):
        for done in range(1, 41):
            clock.now = 4.0 * done  # 0.25 steps/s: 10 % of 5000 steps would take 33 min
            steps(done, 5000)
        steps.close()  # converged early, at step 40
    assert [counts(line) for line in logged(caplog)] == ["1/5000", "9/5000", "17/5000", "25/5000", "33/5000", "40/5000"]
    assert logged(caplog)[-1].endswith("(done)")


def test_progress_raises_the_stop_at_the_next_step():
    calls = []
    with pytest.raises(SIGTERMException) as info, progress("x", bar=False) as p:
        for step in range(1, 5):
            p(step, 4)
            calls.append(step)
            if step == 2:
                interrupt.request(signal.SIGTERM)  # what the handler records
    assert calls == [1, 2] and info.value.code == 143
    interrupt.reset()
    with pytest.raises(KeyboardInterrupt), progress("x", bar=False) as p:
        interrupt.request(signal.SIGINT)
        p.phase("path mask")(1, 4)
    with progress("the next explanation", bar=False) as p:  # a stop is raised once (a notebook goes on)
        p(1, 1)
    assert interrupt.received() == signal.SIGINT  # still known, for the exit status


def test_lightning_sigterm_flag_stops_a_render_without_our_handlers():
    class Trainer:
        received_sigterm = False
        progress_bar_callback = None

    trainer = Trainer()
    with pytest.raises(SIGTERMException), progress("morph_path", trainer) as p:
        p.phase("semantic morph")(1, 10)
        trainer.received_sigterm = True
        p.phase("semantic morph")(2, 10)
    assert p.bar is False  # trainer.enable_progress_bar=false: no bar, the log only


@pytest.mark.parametrize(
    "signum,stop",
    [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SIGTERMException), (signal.SIGUSR1, SIGTERMException)],
)
def test_a_real_signal_inside_a_loop_stops_it_at_the_next_step(signum, stop):
    before = signal.getsignal(signum)
    done = []
    with pytest.raises(stop), progress("loop", bar=False) as p:
        for step in range(1, 100):
            if step == 3:
                os.kill(os.getpid(), signum)  # handled here, between two bytecodes
            done.append(step)
            p(step, 99)
    assert done == [1, 2, 3] and interrupt.received() == signum
    assert signal.getsignal(signum) is before  # the region's handler is gone


def test_a_second_signal_stops_at_once_and_outside_loops_sigint_is_ctrl_c_as_ever():
    with pytest.raises(KeyboardInterrupt), progress("loop", bar=False):
        os.kill(os.getpid(), signal.SIGINT)  # deferred
        os.kill(os.getpid(), signal.SIGINT)  # raises here, not at a step
        pytest.fail("the second Ctrl-C did not interrupt")
    interrupt.reset()
    with interrupt.installed():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            pytest.fail("Ctrl-C outside a loop did not interrupt")
        with pytest.raises(SIGTERMException):
            os.kill(os.getpid(), signal.SIGTERM)  # no trainer to defer to: stop now, exit 143
            pytest.fail("SIGTERM outside a loop did not stop")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_install_chains_under_lightnings_sigterm_handler_and_keeps_ignored_signals():
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    class Trainer:
        local_rank = 0

        class strategy:
            launcher = None

        class _accelerator_connector:
            cluster_environment = None

    ignored = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        with interrupt.installed():
            assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN  # nohup & co. stay as they are
            connector = _SignalConnector(Trainer())
            connector.register_signal_handlers()  # what trainer.fit does: wraps ours
            try:
                os.kill(os.getpid(), signal.SIGTERM)  # Lightning's: flag, stop after the batch; ours: record
                assert connector.received_sigterm and interrupt.received() == signal.SIGTERM
                with pytest.raises(SIGTERMException), progress("render", bar=False) as p:
                    p(1, 10)
            finally:
                connector.teardown()
            assert isinstance(signal.getsignal(signal.SIGTERM), interrupt._Handler)
    finally:
        signal.signal(signal.SIGUSR1, ignored)


@pytest.mark.parametrize(
    "raised,code,name", [(KeyboardInterrupt(), 130, "SIGINT"), (SIGTERMException(), 143, "SIGTERM")]
)
def test_run_task_turns_a_stop_into_one_line_and_the_signal_exit_code(raised, code, name, capsys):
    def task():
        raise raised

    with pytest.raises(SystemExit) as info:
        run_task(task)
    assert info.value.code == code
    message = f"latent-lens: stopped by {name} (exit {code}); files written before it are kept\n"
    assert capsys.readouterr().err == message


def test_run_task_reads_the_ctrl_c_behind_lightnings_exit_1(capsys):
    def task():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)  # Lightning's graceful shutdown after Ctrl-C

    with pytest.raises(SystemExit) as info:
        run_task(task)
    assert info.value.code == 130 and "stopped by SIGINT" in capsys.readouterr().err

    def plain_exit():
        raise SystemExit(3)

    interrupt.reset()
    with pytest.raises(SystemExit) as info:
        run_task(plain_exit)
    assert info.value.code == 3  # not a signal: as it was


def test_sigusr1_is_sigterm():
    assert interrupt.exit_code(signal.SIGUSR1) == 143 and interrupt.exit_code(signal.SIGINT) == 130
    assert isinstance(interrupt.stop_exception(signal.SIGUSR1), SIGTERMException)
