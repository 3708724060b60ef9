"""Who may do what: certificates (TLS), broker credentials and roles, release signing keys.

Imports only `broker` (to write the accounts file), `defaults` and `errors`.
"""
