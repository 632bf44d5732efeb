"""Programs the virtual device starts as ``simple_app``: the reference app (``reference_app``: simple_app's REPL
on the host CPU), its engines (``engine`` picks one: the native kernel ``qkernel`` — built once per machine by
``native_build`` — or the numpy engine ``npllama``) and how it opens model dirs inside the device (``device_view``).

They run in the device's sandbox (pipeline/virtual/confine.py), started by ``pipeline/virtual/app_launch.py``
(by module name, never imported by the daemon).  The host-side clients of an app live in ``pipeline/apps``."""
