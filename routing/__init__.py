"""Where events go, in the order an event moves:

outbox (an event stored with its deliveries) -> wakeup (a broker message per endpoint) -> tasks ->
pump, which runs claim -> send (formats, transport) -> record -> replies (onward messages back to
the outbox, objects returned by type through returned_objects) -> status -> wakeup for retries;
the sweeper (beat) wakes what a lost message left behind, and beat's schedules make the ticks of
pulls (schedules, timed by timing) that the pump sends like any delivery.
Staff actions (retry now, cancel, replay, test send, enable, secrets) are operations.
"""
