"""`gateway test`: scenario tests an operator runs before launch and in CI.

A scenario file holds conversations (customer turns) and what the gateway must do with them
(`model`); the runner sends them through the real pipeline in process, with a recording
channel in place of the providers (`runner`, `recording`); each turn's outcome is checked
against its expectations (`checks`) and reported as a table, JSON or JUnit XML (`report`).
"""
