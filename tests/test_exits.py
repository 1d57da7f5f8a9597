"""Exit codes of every command (an uncaught exception exits 70 with its traceback), the start-up signal recorder that
the trainer's ``Preemption`` adopts, the study runner's reading of its runs' exit codes and its rendezvous ports.
In-process; the real processes are in tests/test_startup.py."""

import os
import signal
import socket

import pytest
import torch

from varnet_ds import exits
from varnet_ds.exits import EXIT_INTERNAL, EXIT_REQUEUE, early_signal, entry_point, startup_signals


def test_uncaught_exception_exits_70_with_traceback(capsys):
    @entry_point
    def main(argv=None):
        raise KeyError("boom")

    assert main([]) == EXIT_INTERNAL == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'boom'" in err
    assert "internal error (exit code 70)" in err


def test_system_exit_passes_and_nested_entry_points_report_once(capsys):
    @entry_point
    def usage(argv=None):
        raise SystemExit(2)  # argparse's bad usage stays 2

    with pytest.raises(SystemExit) as exit_:
        usage()
    assert exit_.value.code == 2

    @entry_point
    def inner(argv=None):
        raise ValueError("deep")

    @entry_point
    def outer(argv=None):
        with pytest.raises(ValueError):  # the inner entry point lets it through to the outermost
            inner()
        return inner()

    assert outer() == EXIT_INTERNAL
    assert capsys.readouterr().err.count("internal error") == 1


def test_a_real_command_that_crashes_exits_70(monkeypatch, tmp_path, capsys):
    """The data check (in-process, its folder walk broken) and the same through ``varnet-ds check``."""
    from varnet_ds import cli
    from varnet_ds.data import check

    def broken(*args, **kwargs):
        raise RuntimeError("unexpected failure inside the check")

    monkeypatch.setattr(check, "check_folder", broken)
    assert check.main([str(tmp_path)]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: unexpected failure inside the check" in err
    assert cli.main(["check", str(tmp_path)]) == EXIT_INTERNAL
    assert capsys.readouterr().err.count("internal error") == 1


def test_train_crash_exits_70_and_restores_signal_handlers(monkeypatch, capsys):
    import varnet_ds.config
    from varnet_ds import train

    def broken(*args, **kwargs):
        raise AttributeError("a bug in the config loader")

    monkeypatch.setattr(varnet_ds.config, "load_config", broken)
    before = signal.getsignal(signal.SIGTERM)
    assert train.main(["--config", "demo"]) == EXIT_INTERNAL
    assert "AttributeError: a bug in the config loader" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the start-up recorder is gone again


def test_preemption_adopts_a_signal_seen_before_it_existed():
    from varnet_ds.trainer.state import Preemption

    before = {s: signal.getsignal(s) for s in exits.PREEMPT_SIGNALS}
    with startup_signals():
        assert early_signal() is None
        os.kill(os.getpid(), signal.SIGUSR1)  # while torch imports / the engine is built
        assert early_signal() == signal.SIGUSR1
        adopted = Preemption(torch.device("cpu"))
        assert adopted.seen == signal.SIGUSR1  # adopted when the trainer is built
        adopted.install()
        assert adopted.local_flag == signal.SIGUSR1 and adopted.agree() and adopted.signal == signal.SIGUSR1
    with startup_signals():
        late = Preemption(torch.device("cpu"))  # the trainer exists, its handler not yet
        os.kill(os.getpid(), signal.SIGTERM)
        assert late.seen is None
        late.install()
        assert late.seen == signal.SIGTERM and late.agree()
    with startup_signals():
        quiet = Preemption(torch.device("cpu"))
        quiet.install()
        assert not quiet.agree() and not quiet.stop
    assert early_signal() is None
    assert {s: signal.getsignal(s) for s in exits.PREEMPT_SIGNALS} == before


@pytest.mark.parametrize("code, forwarded, expected", [
    (EXIT_REQUEUE, False, True), (EXIT_REQUEUE, True, True),
    (-signal.SIGTERM, True, True), (128 + signal.SIGTERM, True, True),  # killed before its handler existed
    (-signal.SIGTERM, False, False), (-signal.SIGKILL, False, False),  # killed by someone else: a failure
    (1, True, False), (2, True, False), (EXIT_INTERNAL, True, False), (0, True, False),
])
def test_runner_counts_a_run_it_stopped_as_preempted(code, forwarded, expected):
    from varnet_ds.studies.launch import preempted

    assert preempted(code, forwarded) is expected


def test_port_pool_never_hands_out_a_port_twice(tmp_path):
    from varnet_ds.rendezvous import port_is_free, rendezvous_ports, suggest_port
    from varnet_ds.studies.ports import PortPool

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        candidates = [taken] + [p for p in rendezvous_ports()[:40] if port_is_free(p)][:6]
        assert len(candidates) == 7, "too few free ports to test with"
        one, two = PortPool(candidates, tmp_path), PortPool(candidates, tmp_path)  # two runners on one machine
        first = [one.acquire(), one.acquire(), two.acquire(), one.acquire(), two.acquire()]
        assert len(set(first)) == 5 and taken not in first  # a port another program listens on is skipped
        one.release(first[0])
        again = two.acquire()
        assert again == first[0]  # released by one runner: the other may take it now
        assert one.acquire() not in first  # ...but not the first runner, whose run and the other's hold the rest
        with pytest.raises(RuntimeError, match="no free rendezvous port"):
            PortPool([taken], tmp_path).acquire()
        assert suggest_port((taken,)) != taken and port_is_free(suggest_port())
        assert not port_is_free(taken)
    one.close()
    two.close()
    assert PortPool(candidates[1:], tmp_path).acquire() in candidates[1:]  # all released


def test_rendezvous_settings_and_watchdog_leave_the_process_as_they_found_it(monkeypatch):
    from varnet_ds.rendezvous import RENDEZVOUS_ENV, RendezvousError, env_positive, rendezvous_watchdog

    monkeypatch.setenv(RENDEZVOUS_ENV, "soon")
    with pytest.raises(RendezvousError, match="VARNET_DS_RENDEZVOUS_S='soon': must be a positive number"):
        env_positive(RENDEZVOUS_ENV, 300.0)
    monkeypatch.setenv(RENDEZVOUS_ENV, "0")
    with pytest.raises(RendezvousError):
        env_positive(RENDEZVOUS_ENV, 300.0)
    monkeypatch.setenv(RENDEZVOUS_ENV, "2.5")
    assert env_positive(RENDEZVOUS_ENV, 300.0) == 2.5
    monkeypatch.delenv(RENDEZVOUS_ENV)
    assert env_positive(RENDEZVOUS_ENV, 300.0) == 300.0
    with rendezvous_watchdog(30.0, lambda: "never printed"):  # a rendezvous that succeeds in time
        pass
    assert signal.set_wakeup_fd(-1) == -1  # the wakeup descriptor was restored
