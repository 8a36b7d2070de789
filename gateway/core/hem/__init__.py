"""The HEM dialect's core: key model and metadata, roles and scopes, the login
handshake and bearer tokens, derive recipes and key use.

Only ``service.HemService`` is meant for the HTTP layer; the modules are
named after what they hold.
"""
