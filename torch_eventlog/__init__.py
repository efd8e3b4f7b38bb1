"""The distribution's shared leaf: what every package of torch-eventlog may import.

`eventlog`, `snapshots` and `replay` may all import this package; it imports none of
them (nor anything but the standard library), so imports still flow one way:
``replay -> snapshots -> torch_eventlog``, ``replay -> eventlog -> torch_eventlog``.
Only what must be *one object* across packages lives here (see `errors`).
"""
