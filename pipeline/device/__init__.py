"""Device access: the one adb wrapper (adb.py), device selection/connection (connect.py), shell protocol v2
sessions with stdin (shellv2.py).  Submodules are imported explicitly so importing this package stays cheap."""
