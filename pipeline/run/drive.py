"""Drive the prompts into a run directory and say honestly how it ended: ``complete`` only when every prompt was
asked; ``interrupted`` when the device went away or the user stopped it (Ctrl-C, SIGTERM: the rows on disk are
kept and resumable); ``failed`` for every prompt failing or any unexpected error.  Telemetry samples for the whole
run are kept whatever the ending."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.interrupts import Interrupted, signal_name, signum_of
from pipeline.run.record import RunDir
from pipeline.run.runner import DeviceLost, RunItem, RunOptions, run_prompts


def drive(record: RunDir, items: list[RunItem], start_app: Callable[[], Any], opts: RunOptions, *,
          count_tokens: Callable[[str], int], count_prompt: Callable[[str], int], skip: set,
          extra: Callable[[dict], dict], sampler: Any, progress: bool) -> tuple[str, str, Any]:
    """(status, reason, tally) of running ``items`` (minus ``skip``) with ``extra(row)`` merged into each row."""
    status, reason = "failed", "the run stage stopped before its first prompt"
    sampler.start()
    with record.rows() as write_row:
        try:
            run_prompts(items, start_app, opts, count_tokens=count_tokens, count_prompt=count_prompt, skip=skip,
                        on_row=lambda row: write_row(row | extra(row)), progress=progress)
            status, reason = write_row.tally.verdict()
        except DeviceLost as e:
            status, reason = "interrupted", str(e)
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (pipeline/interrupts.py): recorded, then said once
            status, reason = "interrupted", f"interrupted by {signal_name(signum_of(e))}"
            raise Interrupted(signum_of(e), f"{reason} after {record.on_disk().rows} row(s) on disk "
                                            f"({record.rows_path})") from None
        except BaseException as e:  # a bug or an unexpected error: never recorded as complete
            status, reason = "failed", f"{type(e).__name__}: {e}"
            raise
        finally:
            record.add_telemetry(sampler.stop())
            record.finish(status, reason)
    return status, reason, write_row.tally
