"""Where events go, in the order an event moves:

outbox (an event stored with its deliveries) -> wakeup (a broker message per endpoint) -> tasks ->
pump, which runs claim -> send (formats, transport) -> record -> replies (onward messages back to the
outbox) -> status -> wakeup for retries; the sweeper (beat) wakes what a lost message left behind.
Staff actions (retry now, cancel, replay, test send, enable, secrets) are operations.
"""
