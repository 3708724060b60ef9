"""The devices' side seen from CPython: the firmware's shared modules, bundles
(build, check), a device's flash (provision), and the simulated fleet (one
MicroPython unix-port process per device behind its own network proxy).

Imports `security` (signing keys), `defaults` and `errors`; never the services.
"""
