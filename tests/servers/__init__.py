"""Real servers for integration tests: each module starts one on 127.0.0.1 with temporary
data, yields its address, and stops it by PID. Registered as pytest plugins in conftest.py."""
