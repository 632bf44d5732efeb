"""What an app feeds its model for one line typed at its REPL — shared by the host (token counts, the run's
``past_end`` rows) and the guest app (what it really feeds): the prompt templates (``prompt_format``) and
simple_app's prompt buffer, including its read past the prompt (``prompt_buffer``)."""
