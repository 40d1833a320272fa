"""The go-live check (issue 20): the acceptance scenarios as a black-box suite.

It talks to the service only through the signed CRM contract (``docs/openapi.yaml``, signatures v2
reimplemented in ``contract.py``) and to Microsoft only through public Graph v1.0 and the identity
platform (MSAL's device-code flow, ``outlook.py``). Nothing here imports ``shared/``, ``local/`` or
``tests/support``: the same code runs against a real tenant (``make test-live``) and against the local
stack in ``make test`` (``test_live_local.py``, the harness, is the only file that knows the stack).
"""
