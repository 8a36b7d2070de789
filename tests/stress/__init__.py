"""The reliability suite (docs/reliability.md): `make stress` runs it at full size
(GATEWAY_STRESS=full), `make test` at a reduced size."""
