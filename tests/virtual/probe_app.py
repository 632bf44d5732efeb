"""A device-side program for the sandbox tests (started through the daemon's ``app_cmd`` hook, so it runs exactly
where the reference app would): it tries plain ``open()``\\ s — no odeval check in between — and prints what the
kernel answered, as JSON, then serves a tiny REPL (``!exit``; ``!alloc N`` allocates N bytes).

argv: paths to read, then ``--write`` and paths to create.
"""

import json
import sys

args = sys.argv[1:]
reads, writes = (args[: args.index("--write")], args[args.index("--write") + 1:]) if "--write" in args else (args, [])
result = {}
for path in reads:
    try:
        with open(path, "rb") as fh:
            result[path] = "read:" + fh.read(64).decode("utf-8", "replace")
    except OSError as e:
        result[path] = f"errno:{e.errno}"
for path in writes:
    try:
        with open(path, "w") as fh:
            fh.write("written by the device side")
        result[path] = "written"
    except OSError as e:
        result[path] = f"errno:{e.errno}"
sys.stdout.write(json.dumps(result) + "\n>>> ")
sys.stdout.flush()
for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "!exit":
        break
    if cmd[0] == "!alloc":
        try:
            block = bytearray(int(cmd[1]))
            sys.stdout.write(f"allocated {len(block)}")
        except MemoryError:
            sys.stdout.write("MemoryError")
    sys.stdout.write("\n>>> ")
    sys.stdout.flush()
