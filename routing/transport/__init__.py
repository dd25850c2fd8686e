"""The transport: one delivery's HTTP exchange, knowing nothing of the ORM (plain values in, a
frozen result out), so it can be tested against a local server with no database.

request (build and sign) -> exchange (send within the deadline, read) -> reply (decode); netguard
(the SSRF guard) and deadline (the watchdog) are mounted on the exchange's session. The only
package that imports requests.
"""
