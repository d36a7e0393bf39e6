"""The `sam-serve` command line (`sam_cli.main:main`) and the local redis-server launcher the tests and
benchmarks share.
"""
