"""Where events go, in the order an event moves:

outbox (an event stored with its deliveries) -> wakeup (a broker message per endpoint, or one
fan-out message for a new event's endpoints) -> tasks -> pump, which runs pacing (how many to
claim) -> claim -> send (formats, transport) -> record -> replies (onward messages back to the
outbox, objects returned by type through returned_objects) -> status -> wakeup for retries;
fanout does the same for one event's deliveries to several endpoints at once, leaving what it may
not send to the pumps;
the sweeper (beat) wakes what a lost message left behind, and beat's schedules make the ticks of
pulls (schedules, timed by timing) that the pump sends like any delivery.
Staff actions (retry now, cancel, replay, test send, enable, secrets) are operations.
"""
