"""The services a host process runs (a Ray Serve replica, the CLI, a test): model + cache + output encoding, no
Ray code. `configured` builds the parts from `Settings`; `encoder`, `decoder` and `generator` (segment everything
on a decoder's parts) are the services."""
