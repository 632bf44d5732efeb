"""Stand-in for the reference app in tests: a line REPL with simple_app's banner/prompt shape.

Commands: ``!exit``; ``!info`` prints JSON (argv, cwd, selected env); ``!environ`` the whole env as JSON;
``!sleep`` hangs; ``!pid`` prints host pid;
``!err`` writes to stderr; anything else is echoed back word by word (flushed per word) then ``(N tok/s)``.
"""

import json
import os
import sys
import time

out = sys.stdout
out.write("Hello, how can I help you today?\n>>> ")
out.flush()
for line in sys.stdin:
    line = line.rstrip("\n")
    if line == "!exit":
        break
    if line == "!info":
        keys = [k for k in os.environ if k.startswith(("ODEVAL_", "LD_", "MYVAR"))]
        root = os.readlink(f"/proc/self/fd/{os.environ['ODEVAL_ROOT_FD']}") if "ODEVAL_ROOT_FD" in os.environ else None
        out.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "root": root,
                              "env": {k: os.environ[k] for k in keys}}))
    elif line == "!environ":
        out.write(json.dumps(dict(os.environ)))
    elif line == "!sleep":
        time.sleep(3600)
    elif line == "!pid":
        out.write(str(os.getpid()))
    elif line == "!err":
        sys.stderr.write("to stderr\n")
        sys.stderr.flush()
    else:
        for word in line.split():
            out.write(word + " ")
            out.flush()
        out.write(f"</s>({len(line.split())}.000000 tok/s)")
    out.write("\n>>> ")
    out.flush()
sys.exit(int(os.environ.get("REPL_EXIT_CODE", "0")))
