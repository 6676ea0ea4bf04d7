"""The real operator in a thread of its own, with its own event loop, as if in its own process."""

from __future__ import annotations

import asyncio
import threading

from gpufabric.controller.run import Operator


class OperatorThread:
    """One operator instance in a thread of its own with its own event loop, as in its own process.

    Several operators cannot share a loop: on shutdown kopf cancels every task created in its loop after it
    started — the other operators' tasks too."""

    def __init__(self, operator: Operator) -> None:
        self.operator = operator
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None  # what ended it, when not a stop or a kill
        self.thread = threading.Thread(target=self._main, name=f"operator-{id(operator)}", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.operator.run(self.stop))
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:  # a killed operator ends here
            pass
        except Exception as error:
            self.error = error
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            # The reconcile passes ran in the loop's default executor: join its threads, so nothing the
            # operator started outlives it (loop.close() alone leaves them to finish on their own).
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    async def finish(self, *, kill: bool) -> None:
        def end() -> None:
            if kill and self.task is not None:
                self.task.cancel()  # no cleanup: as close to a crash as a task gets
            else:
                self.stop.set()

        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(end)
        await asyncio.to_thread(self.thread.join, 20)
        self.operator.api_client.close()  # type: ignore[no-untyped-call]
