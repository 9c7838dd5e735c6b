"""``python -m voicemesh.calendar``: run the calendar service until SIGTERM."""

from __future__ import annotations

import gc

from voicemesh.calendar.app import create_app
from voicemesh.calendar.settings import CalendarSettings
from voicemesh.common import run, setup_process


async def freeze_startup_heap() -> None:
    """Leave what startup built out of every later garbage collection.

    Modules, schemas, the engine and the broker live as long as the process, yet each full
    (generation 2) collection walked all ~130,000 of them: a 65-70 ms pause that every tool
    call in flight waited out, the whole of the p99 at 20 callers. Frozen, they are skipped.
    Only for the process entry point: a frozen heap is never collected, which a test process
    starting many services must not do.
    """
    gc.collect()
    gc.freeze()


def main() -> None:
    settings = CalendarSettings()
    setup_process("calendar", settings)
    service = create_app(settings)
    service.faststream.after_startup(freeze_startup_heap)
    run(service)


if __name__ == "__main__":
    main()
