"""SQL inspection for the Postgres front end: pure code, no I/O, no clock.

One statement's way through, each step in its own module:

    lex        split text into statements and tokens exactly as the server's scanner does
    parse      what sqlglot tells about a query or DML (tables, calls, hidden writes), on a literal-free rendering
    classify   what one statement is (kind, command, the least scope that may run it); facts: its plain-data result
    settings   SET / RESET / set_config: which settings a scope may change
    calls      which functions a statement calls, as the server will resolve them
    functions  the function and settings allowlists (plain data)
    catalog    a target's catalogue snapshot (pgcatalog15: PostgreSQL 15's built-in names when there is none)
    inspector  the front end's entry: Inspector.check -> decide(statement, policy), with caches

Loading a target's catalogue is I/O and lives outside: gateway/pg/catalogload.py.
"""
