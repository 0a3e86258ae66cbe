"""The in-process runner of the hostile suite sees what a process would show: output at the file-descriptor level,
a warning in every run, a traceback, a hang, a runaway allocation, sys.exit's message; and it leaves this
process's cwd and argv as they were."""
import os
import sys

from hostile import harness


def run(tmp_path, body, *args):
    """Write `body` as script.py and run it in process from tmp_path/work: (rc, stderr, stdout)."""
    (tmp_path / "script.py").write_text(body)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    case = harness.Case("c", "script.py", tuple(args))
    return harness.run_in_process(str(tmp_path), case, str(work))


def test_both_levels_of_stderr_and_stdout_are_captured(tmp_path):
    rc, err, out = run(tmp_path, "import os, sys\nprint('to stdout')\nos.write(2, b'from C\\n')\n"
                                 "print('script.py: error: bad', file=sys.stderr)\nsys.exit(2)\n")
    assert rc == 2 and out == "to stdout\n"
    assert sorted(harness.stderr_lines(err)) == ["from C", "script.py: error: bad"]


def test_a_warning_shows_in_every_run(tmp_path):
    body = "import warnings\nwarnings.warn('careful')\n"
    for _ in range(2):
        rc, err, _ = run(tmp_path, body)
        assert rc == 0 and "UserWarning: careful" in err


def test_an_uncaught_exception_is_a_traceback_and_rc_1(tmp_path):
    rc, err, _ = run(tmp_path, "raise ValueError('boom')\n")
    assert rc == 1 and "Traceback" in err and harness.exception_line(err) == "ValueError: boom"


def test_sys_exit_with_a_message(tmp_path):
    rc, err, _ = run(tmp_path, "import sys\nsys.exit('fatal: no')\n")
    assert (rc, harness.stderr_lines(err)) == (1, ["fatal: no"])


def test_a_hang_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "TIMEOUT", 1)
    rc, _, _ = run(tmp_path, "import time\ntime.sleep(30)\n")
    assert rc is None
    case = harness.Case("c", "script.py", ())
    assert harness.judge(case, rc, "", {}, {}, "", "") == ["hang: no exit within 1 s"]


def test_a_runaway_allocation_fails_in_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "MEMORY", 256 << 20)
    rc, err, _ = run(tmp_path, "import numpy as np\nnp.ones(1 << 26)\n")  # 512 MB
    assert rc == 1 and "MemoryError: Unable to allocate 512. MiB" in harness.exception_line(err)
    rc, _, _ = run(tmp_path, "import numpy as np\nnp.ones(1 << 20)\n")  # the limit is lifted after the run
    assert rc == 0


def test_cwd_and_argv_are_the_runs_and_restored(tmp_path):
    cwd, argv = os.getcwd(), list(sys.argv)
    rc, _, out = run(tmp_path, "import os, sys\nprint(os.getcwd(), sys.argv[1:])\n", "--a", "1")
    assert rc == 0 and out.strip() == f"{tmp_path / 'work'} ['--a', '1']"
    assert (os.getcwd(), sys.argv) == (cwd, argv)
