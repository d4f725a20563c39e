-- The relay's schema: the outbox the capture triggers fill, per-endpoint delivery state and watermarks.
-- Run by `appointment-relay migrate` inside one transaction; the schema and schema_migrations exist already.
-- Canvas's own tables are not changed: only the two AFTER INSERT triggers are created on them.

CREATE TABLE appointment_relay.installation (
  id text PRIMARY KEY,
  only_one boolean NOT NULL DEFAULT true UNIQUE CHECK (only_one)
);
-- Part of every webhook-id: distinguishes events of two Canvas databases that reuse outbox ids.
INSERT INTO appointment_relay.installation (id)
VALUES (substr(replace(gen_random_uuid()::text, '-', ''), 1, 12));

CREATE TABLE appointment_relay.outbox (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  captured_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  source_table text NOT NULL,
  operation text NOT NULL,
  row_id integer NOT NULL,
  state text,
  appointment_id integer,
  appointment_external_id text,
  rescheduled_from_id integer,
  start_time timestamptz,
  duration_minutes integer,
  entered_in_error boolean,
  patient_id integer,
  patient_key text,
  ordering_key text
);
CREATE INDEX outbox_captured_at ON appointment_relay.outbox (captured_at);

CREATE TABLE appointment_relay.delivery (
  event_id bigint NOT NULL REFERENCES appointment_relay.outbox (id) ON DELETE CASCADE,
  endpoint text NOT NULL,
  state text NOT NULL CHECK (state IN ('retrying', 'delivered', 'dead', 'replay')),
  attempts integer NOT NULL DEFAULT 0,
  first_attempt_at timestamptz,
  last_attempt_at timestamptz,
  next_attempt_at timestamptz,
  delivered_at timestamptz,
  last_error text,
  dead_reason text,
  PRIMARY KEY (event_id, endpoint)
);
CREATE INDEX delivery_dead ON appointment_relay.delivery (endpoint, event_id) WHERE state = 'dead';
CREATE INDEX delivery_replay ON appointment_relay.delivery (endpoint, event_id) WHERE state = 'replay';

CREATE TABLE appointment_relay.endpoint_cursor (
  endpoint text PRIMARY KEY,
  done_through bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- A new appointment row: its own facts. txid_current() first: the transaction id is assigned before the
-- outbox id is allocated, which the reader's snapshot horizon relies on (see store.cpp).
CREATE FUNCTION appointment_relay.capture_appointment() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  event_id bigint;
BEGIN
  PERFORM pg_catalog.txid_current();
  INSERT INTO appointment_relay.outbox (source_table, operation, row_id, appointment_id, appointment_external_id,
                                        rescheduled_from_id, start_time, duration_minutes, entered_in_error,
                                        patient_id, patient_key, ordering_key)
  SELECT TG_TABLE_NAME, TG_OP, NEW.id, NEW.id, NEW.externally_exposable_id::text,
         NEW.appointment_rescheduled_from_id, NEW.start_time, NEW.duration_minutes,
         NEW.entered_in_error_id IS NOT NULL, NEW.patient_id,
         (SELECT p.key::text FROM public.api_patient p WHERE p.id = NEW.patient_id),
         NEW.externally_exposable_id::text
  RETURNING id INTO event_id;
  PERFORM pg_catalog.pg_notify('appointment_relay', event_id::text);
  RETURN NULL;
END
$$;

-- A note state event that can become a notification: the facts of the note's current appointment now (the
-- last of its reschedule chain: the row no other row was rescheduled from), or none.
CREATE FUNCTION appointment_relay.capture_note_state() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  event_id bigint;
BEGIN
  PERFORM pg_catalog.txid_current();
  INSERT INTO appointment_relay.outbox (source_table, operation, row_id, state, appointment_id,
                                        appointment_external_id, rescheduled_from_id, start_time,
                                        duration_minutes, entered_in_error, patient_id, patient_key,
                                        ordering_key)
  SELECT TG_TABLE_NAME, TG_OP, NEW.id, rtrim(NEW.state::text), a.id, a.externally_exposable_id::text,
         a.appointment_rescheduled_from_id, a.start_time, a.duration_minutes,
         CASE WHEN a.id IS NULL THEN NULL ELSE a.entered_in_error_id IS NOT NULL END, a.patient_id,
         (SELECT p.key::text FROM public.api_patient p WHERE p.id = a.patient_id),
         a.externally_exposable_id::text
  FROM (SELECT 1) AS one
  LEFT JOIN LATERAL (
    SELECT c.id, c.externally_exposable_id, c.appointment_rescheduled_from_id, c.start_time, c.duration_minutes,
           c.entered_in_error_id, c.patient_id
    FROM public.api_appointment c
    WHERE c.note_id = NEW.note_id
      AND NOT EXISTS (SELECT 1 FROM public.api_appointment r WHERE r.appointment_rescheduled_from_id = c.id)
    ORDER BY c.id DESC
    LIMIT 1
  ) AS a ON true
  RETURNING id INTO event_id;
  PERFORM pg_catalog.pg_notify('appointment_relay', event_id::text);
  RETURN NULL;
END
$$;

CREATE TRIGGER appointment_relay_capture
AFTER INSERT ON public.api_appointment
FOR EACH ROW EXECUTE FUNCTION appointment_relay.capture_appointment();

CREATE TRIGGER appointment_relay_capture
AFTER INSERT ON public.api_notestatechangeevent
FOR EACH ROW WHEN (NEW.state IN ('CLD', 'NSW', 'RVT', 'CVD'))
EXECUTE FUNCTION appointment_relay.capture_note_state();
