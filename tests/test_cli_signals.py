"""SIGTERM (kill, a batch system's time limit) ends a command with one line and exit 143 (issue 27 item 8).

Before: the process died of the signal with no message (exit 143 from the shell, nothing said about the
finished outputs or resuming).
"""

import os
import signal
import subprocess
import sys
import textwrap


def test_sigterm_says_terminated_and_that_a_rerun_resumes(tmp_path):
    # The command's library call is replaced by one that is killed while it runs (after it wrote a
    # first output), so the test is deterministic and fast; the clean-up path is the one Ctrl-C takes.
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        import cryopick.cli.evaluate as command
        from cryopick.cli.main import main

        def killed_while_running(args):
            open({str(tmp_path / "first_output")!r}, "w").close()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the signal interrupts this
            return 0

        command.main = killed_while_running
        sys.exit(main(["evaluate", "--picks", "p", "--truth", "t", "-o", {str(tmp_path / "r")!r}]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "CRYOPICK_DEBUG"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 128 + signal.SIGTERM == 143
    assert run.stderr.splitlines() == [
        "cryopick evaluate: terminated (SIGTERM); finished outputs are kept, rerun to resume"]
    assert (tmp_path / "first_output").exists()


def test_sigterm_handler_is_restored_after_an_in_process_run(tmp_path, capsys):
    from cryopick.cli.main import main

    before = signal.getsignal(signal.SIGTERM)
    assert main(["evaluate", "--truth", str(tmp_path / "t"), "-o", str(tmp_path / "r")]) == 2  # no --picks
    assert signal.getsignal(signal.SIGTERM) is before
