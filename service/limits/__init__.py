"""Limits: what bounds the process as a whole, whatever the requests are.

Cut out because these hold across doors, requests and models: the body byte budget and the decoded
pixel budget with the RSS bound they imply (``budget``), allocator tuning (``memory``), the CPUs this
process may use (``cpus``) and task-free timeouts for the hot path (``timeouts``). Nothing here
imports the rest of the service except its error type.
"""
