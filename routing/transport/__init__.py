"""The transport: one delivery's HTTP exchange, plain values in and a frozen result out, with no ORM.

The only package that imports requests.
"""
