"""The toybox-like interpreter, in-process (no adb): quoting, control flow, builtins, sandbox confinement."""

from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

import pytest

from pipeline.virtual.daemon import Daemon
from pipeline.virtual.shell import MemoryIO, Session, ShellSyntaxError, lex, parse

NASTY = ["; rm -rf /", "$(reboot)", "`reboot`", "it's", 'say "hi"', "back\\slash", "emoji 🦜🚀", "RTL עברית مرحبا",
         "a\nb", "", "  spaces  ", "$HOME", "*", "&& exit 7", "|| true", "> /data/x", "#not a comment", "${X}"]


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    return Daemon(tmp_path / "root", port=0)


def run(daemon: Daemon, script: str, stdin: bytes = b"") -> tuple[int, str, str]:
    io = MemoryIO(stdin)
    sh = Session(daemon, io)
    try:
        code = sh.run_script(script)
    finally:
        sh.close()
    return code, io.out.decode("utf-8", "surrogateescape"), io.err.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize("arg", NASTY)
def test_shlex_quoted_argument_arrives_verbatim(daemon: Daemon, arg: str) -> None:
    code, out, _ = run(daemon, "echo " + shlex.quote(arg))
    assert (code, out) == (0, arg + "\n")
    assert not (daemon.sandbox.root / "data" / "x").exists()


def test_many_quoted_args_keep_boundaries(daemon: Daemon) -> None:
    args = [a for a in NASTY if a]
    # printf-like check: each arg on its own line through a file with > redirection and cat
    script = "; ".join(f"echo {shlex.quote(a)} >> /data/local/tmp/args.txt" for a in args)
    code, _, err = run(daemon, script + "; cat /data/local/tmp/args.txt")
    assert code == 0, err
    assert (daemon.sandbox.root / "data/local/tmp/args.txt").read_text() == "".join(a + "\n" for a in args)


def test_command_substitution_is_refused_not_executed(daemon: Daemon) -> None:
    for script in ("echo $(touch /data/local/tmp/pwned)", "echo `touch /data/local/tmp/pwned`",
                   'echo "$(touch /data/local/tmp/pwned)"'):
        code, out, err = run(daemon, script)
        assert code == 2 and out == "" and "not supported" in err
    assert not (daemon.sandbox.root / "data/local/tmp/pwned").exists()


def test_control_flow_and_exit_codes(daemon: Daemon) -> None:
    assert run(daemon, "true && echo a || echo b")[1] == "a\n"
    assert run(daemon, "false && echo a || echo b")[1] == "b\n"
    assert run(daemon, "false; echo $?")[1] == "1\n"
    assert run(daemon, "exit 3")[0] == 3
    assert run(daemon, "echo x; exit 4; echo never") == (4, "x\n", "")
    code, out, err = run(daemon, "nosuchcmd arg")
    assert (code, out, err) == (127, "", "sh: nosuchcmd: not found\n")
    assert run(daemon, "echo a &&")[0] == 2
    assert run(daemon, "ls | cat")[0] == 2


def test_env_assignments_export_and_vars(daemon: Daemon) -> None:
    assert run(daemon, "A=1; echo $A ${A}x \"$A\" '$A'")[1] == "1 1x 1 $A\n"
    assert run(daemon, "A='x  y'; echo \"$A\"")[1] == "x  y\n"
    assert run(daemon, "export B=2; echo $B")[1] == "2\n"
    code, out, _ = run(daemon, "echo $$ $$")
    pid_a, pid_b = out.split()
    assert pid_a == pid_b and int(pid_a) > 1


def test_lexer_operators_and_quotes() -> None:
    toks = lex("a=1 b 'c d'&&e;f 2>&1 >>g")
    texts = [getattr(t, "text", None) for t in toks]
    assert texts.count("&&") == 1 and ";" in texts and "2>&1" in texts and ">>" in texts
    assert len(parse(toks)) == 2
    with pytest.raises(ShellSyntaxError):
        lex("echo 'unterminated")


def test_file_builtins(daemon: Daemon) -> None:
    script = """
    mkdir -p /data/local/tmp/a/b && cd /data/local/tmp/a && echo hello > b/f.txt && cp b/f.txt g.txt &&
    mv g.txt h.txt && chmod 755 h.txt && stat -c %s h.txt && stat -c %a h.txt && ls && pwd && cat h.txt
    """
    code, out, err = run(daemon, script.replace("\n", " "))
    assert code == 0, err
    assert out == "6\n755\nb\nh.txt\n/data/local/tmp/a\nhello\n"
    code, out, err = run(daemon, "rm /data/local/tmp/a; rm -rf /data/local/tmp/a && ls /data/local/tmp/a")
    assert "Is a directory" in err and "No such file or directory" in err and code == 1
    assert run(daemon, "rm -f /data/local/tmp/nothing")[0] == 0
    assert run(daemon, "rm /data/local/tmp/nothing")[0] == 1


def test_sha256sum_matches_hashlib_and_coreutils_format(daemon: Daemon) -> None:
    data = os.urandom(300_000)
    (daemon.sandbox.root / "data/local/tmp/x.bin").write_bytes(data)
    code, out, err = run(daemon, "cd /data/local/tmp && sha256sum x.bin missing.bin")
    assert code == 1 and "missing.bin: No such file or directory" in err
    assert out == f"{hashlib.sha256(data).hexdigest()}  x.bin\n"


def test_df_reports_capacity(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "r", port=0, options={"capacity_bytes": 8 << 30})
    code, out, _ = run(d, "df -k /data/local/tmp")
    header, row = out.splitlines()
    assert header.split()[:4] == ["Filesystem", "1K-blocks", "Used", "Available"]
    fields = row.split()
    assert int(fields[1]) == 8 << 20 and int(fields[3]) <= 8 << 20 and fields[-1] == "/data"


def test_getprop_uname_and_globs(daemon: Daemon) -> None:
    assert run(daemon, "getprop ro.product.model")[1] == "odeval-virtual\n"
    assert run(daemon, "getprop ro.odeval.virtual")[1] == "1\n"
    assert "[ro.product.cpu.abi]:" in run(daemon, "getprop")[1]
    assert run(daemon, "uname -m")[1].strip() == os.uname().machine
    run(daemon, "cd /data/local/tmp && touch a.bin b.bin c.txt")
    assert run(daemon, "cd /data/local/tmp && echo *.bin '*.bin'")[1] == "a.bin b.bin *.bin\n"
    assert run(daemon, "rm /data/local/tmp/*.bin && ls /data/local/tmp")[1] == "c.txt\n"


def test_sandbox_confinement(daemon: Daemon, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    code, out, err = run(daemon, "cat ../../../../../../" + str(secret))
    assert code == 1 and "host secret" not in out
    os.symlink(str(tmp_path), daemon.sandbox.root / "data/local/tmp/escape")  # an absolute host path as target...
    code, out, err = run(daemon, "cat /data/local/tmp/escape/secret.txt; ls /data/local/tmp/escape")
    # ...resolves inside the device (the kernel's RESOLVE_IN_ROOT), where that path does not exist
    assert "host secret" not in out and err.count("No such file or directory") == 2
    (daemon.sandbox.root / str(tmp_path).lstrip("/")).mkdir(parents=True)
    (daemon.sandbox.root / str(secret).lstrip("/")).write_text("device file")
    assert run(daemon, "cat /data/local/tmp/escape/secret.txt")[1] == "device file"  # ...as a phone would follow it
    os.symlink("../../../../../../../../../" + str(tmp_path), daemon.sandbox.root / "data/local/tmp/up")
    assert run(daemon, "cat /data/local/tmp/up/secret.txt")[1] == "device file"  # `..` stops at the device's /
    code, out, err = run(daemon, "rm -rf /")
    assert code == 1 and (daemon.sandbox.root / "data").exists()


def test_executing_other_files_is_refused(daemon: Daemon) -> None:
    f = daemon.sandbox.root / "data/local/tmp/tool"
    f.write_text("#!/bin/sh\ntouch /tmp/should-not-run\n")
    f.chmod(0o755)
    code, _, err = run(daemon, "/data/local/tmp/tool")
    assert code == 126 and "cannot execute" in err
    assert run(daemon, "./nothing")[0] == 127


def test_cat_reads_stdin_and_redirects(daemon: Daemon) -> None:
    assert run(daemon, "cat", stdin=b"abc\n")[1] == "abc\n"
    code, out, err = run(daemon, "cat /nope 2>/dev/null; echo err >&2 2>/dev/null")
    assert out == "" and code == 0


def test_thermal_files_only_when_simulated(tmp_path: Path) -> None:
    off = Daemon(tmp_path / "r", port=0)
    assert run(off, "cat /sys/class/thermal/thermal_zone0/temp")[0] == 1
    on = Daemon(tmp_path / "r", port=0, options={"simulate_thermal": True})
    code, out, _ = run(on, "cat /sys/class/thermal/thermal_zone0/temp /sys/class/power_supply/battery/voltage_now")
    temp, volt = (int(x) for x in out.split())
    assert code == 0 and 20000 < temp < 60000 and 3_000_000 < volt < 4_500_000
    assert run(off, "cat /sys/class/thermal/thermal_zone0/temp")[0] == 1  # removed again when not simulated
