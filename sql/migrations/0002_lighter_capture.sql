-- Lighter capture triggers (issue 7, capture overhead): the two trigger functions lose their
-- `SET search_path` clause. A function with a SET clause is called through PostgreSQL's security-definer
-- wrapper, which saves, parses, applies and restores the setting on every call and so recomputes the
-- namespace search path twice per captured row: about 5 µs of the ~50 µs a captured note state event costs
-- (measured on the backend; bench/results/notes.md). Nothing is lost by it: the functions are SECURITY
-- INVOKER (they run with the inserting session's own rights) and name every relation and function they use
-- with its schema, and pg_catalog is searched first unless a session lists it explicitly later.
ALTER FUNCTION appointment_relay.capture_appointment() RESET search_path;
ALTER FUNCTION appointment_relay.capture_note_state() RESET search_path;
