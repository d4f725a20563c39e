-- Attempt history (issue 13): every failed attempt of an event to an endpoint, for `appointment-relay events
-- show` and the admin API. Written by the daemon in the statement that records the outcomes (store.cpp
-- record_sql), only for attempts that failed: a first-attempt success, the usual case, writes no row here (its
-- outcome is a range in a batch record, migration 0004), so the drain's WAL per event does not grow. The final
-- outcome of a retried event is its delivery row.
--
-- An attempt row lives exactly as long as the delivery row of its (event, endpoint): every failed attempt
-- leaves one (retrying or dead), and a statement trigger on delivery deletes the attempts of the delivery rows
-- it deletes, whoever deletes them (drop_partition deletes the delivered ones of a partition it drops; a dead
-- letter's row, and so its attempts, stays while the dead letter is kept in outbox_kept). No foreign key:
-- like delivery's since migration 0004.
CREATE TABLE appointment_relay.failed_attempt (
  event_id bigint NOT NULL,
  endpoint text NOT NULL,
  attempt integer NOT NULL,    -- 1 for the first; numbering starts again after a replay
  at timestamptz NOT NULL,     -- when the attempt ended
  http_status integer NOT NULL DEFAULT 0,  -- 0: no response
  error text,                  -- the transport error ("connection reset", "timeout", ...), else NULL
  latency_ms real NOT NULL DEFAULT 0,
  response_body text           -- the first 1 KiB of a non-2xx response's body, made valid UTF-8
);
CREATE INDEX failed_attempt_event ON appointment_relay.failed_attempt (event_id, endpoint);

CREATE FUNCTION appointment_relay.forget_attempts() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  DELETE FROM appointment_relay.failed_attempt a USING gone g
  WHERE a.event_id = g.event_id AND a.endpoint = g.endpoint;
  RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION appointment_relay.forget_attempts() FROM PUBLIC;

-- Once per DELETE statement, with the deleted rows as a table: one join, not a trigger call per row.
CREATE TRIGGER forget_attempts
AFTER DELETE ON appointment_relay.delivery
REFERENCING OLD TABLE AS gone
FOR EACH STATEMENT EXECUTE FUNCTION appointment_relay.forget_attempts();

-- Whoever writes delivery rows (the daemon's role) writes and deletes attempts.
SELECT appointment_relay.grant_like('appointment_relay.delivery', 'appointment_relay.failed_attempt');
